using OnnxQuant.Solvers;

namespace OnnxQuant.Solvers.Tests;

/// <summary>Properties checked on many small random problems (fixed seeds, so every run sees the same instances).</summary>
public class SolverPropertyTests
{
    private const int Instances = 400;
    private const double Tolerance = 1e-9;

    public static TheoryData<int> Seeds => new() { 11, 22, 33, 44, 55 };

    [Theory]
    [MemberData(nameof(Seeds))]
    public void DpEqualsBruteForce(int seed)
    {
        var rng = new Random(seed);
        var checkedCount = 0;
        for (var i = 0; i < Instances; i++)
        {
            var problem = RandomProblems.Create(rng);
            var brute = RandomProblems.BruteForce(problem);
            if (brute is null)
            {
                var error = Assert.Throws<SolverException>(() => new DpAllocator().Solve(problem));
                Assert.Equal(SolverErrorKind.Infeasible, error.Kind);
                continue;
            }
            var dp = new DpAllocator().Solve(problem);
            Assert.True(Math.Abs(dp.PredictedDistortion - brute.Value.Distortion) <= Tolerance * Math.Max(1, brute.Value.Distortion),
                $"seed {seed} instance {i}: dp {dp.PredictedDistortion} vs brute force {brute.Value.Distortion}");
            AssertMeetsConstraints(problem, dp);
            var stats = Assert.IsType<DpStats>(dp.Stats);
            Assert.True(stats.IsExact);
            Assert.Equal(0, stats.OptimalityGapBound);
            checkedCount++;
        }
        Assert.True(checkedCount > Instances / 2, $"only {checkedCount} feasible instances");
    }

    [Theory]
    [MemberData(nameof(Seeds))]
    public void LagrangianNeverBeatsDpAndLiesOnTheHull(int seed)
    {
        var rng = new Random(seed);
        for (var i = 0; i < Instances; i++)
        {
            var problem = RandomProblems.Create(rng);
            if (problem.CheckFeasibility() is not null)
            {
                var error = Assert.Throws<SolverException>(() => new LagrangianAllocator().Solve(problem));
                Assert.Equal(SolverErrorKind.Infeasible, error.Kind);
                continue;
            }
            var dp = new DpAllocator().Solve(problem);
            var lg = new LagrangianAllocator().Solve(problem);
            AssertMeetsConstraints(problem, lg);
            Assert.True(lg.PredictedDistortion >= dp.PredictedDistortion - Tolerance * Math.Max(1, dp.PredictedDistortion),
                $"seed {seed} instance {i}: lagrangian {lg.PredictedDistortion} below dp {dp.PredictedDistortion}");
            var stats = Assert.IsType<LagrangianStats>(lg.Stats);
            Assert.True(stats.Lambda > 0);
            if (!stats.WindowMissed)
                Assert.True(lg.Rate >= problem.TargetBits - 0.02 - 1e-12 || lg.Rate == problem.MaximumRate || IsUnconstrainedOptimum(problem, lg),
                    $"seed {seed} instance {i}: rate {lg.Rate} outside the window without a warning");
            else
                Assert.Contains(lg.Warnings, w => w.Kind == SolverWarningKind.LagrangianWindowMissed);

            // Every free unit sits on a vertex of its own lower convex hull (cost n b, distortion).
            for (var u = 0; u < problem.Units.Count; u++)
            {
                var unit = problem.Units[u];
                if (unit.PinnedBits is not null)
                    continue;
                var candidates = RandomProblems.Candidates(unit, problem.MinBits).ToArray();
                var costs = candidates.Select(b => unit.Size * (long)b).ToArray();
                var distortions = candidates.Select(b => RandomProblems.DistortionAt(unit, b)).ToArray();
                var hull = FreeUnits.LowerHull(costs, distortions).Select(h => candidates[h]);
                Assert.Contains(lg.Units[u].Bits, hull);
            }
        }
    }

    [Theory]
    [MemberData(nameof(Seeds))]
    public void BucketedDpMeetsTheBudgetAndItsGapBound(int seed)
    {
        var rng = new Random(seed);
        for (var i = 0; i < Instances / 2; i++)
        {
            var problem = RandomProblems.Create(rng);
            var brute = RandomProblems.BruteForce(problem);
            if (brute is null)
                continue;
            var dp = new DpAllocator(new DpOptions(MaxCells: 4)).Solve(problem);
            AssertMeetsConstraints(problem, dp);
            var stats = Assert.IsType<DpStats>(dp.Stats);
            Assert.True(stats.Cells <= 4);
            Assert.True(dp.PredictedDistortion - brute.Value.Distortion <= stats.OptimalityGapBound + Tolerance * Math.Max(1, brute.Value.Distortion),
                $"seed {seed} instance {i}: gap {dp.PredictedDistortion - brute.Value.Distortion} above bound {stats.OptimalityGapBound}");
            var lagrangian = new LagrangianAllocator().Solve(problem);
            Assert.True(dp.PredictedDistortion <= lagrangian.PredictedDistortion + Tolerance * Math.Max(1, dp.PredictedDistortion),
                $"seed {seed} instance {i}: bucketed dp {dp.PredictedDistortion} worse than lagrangian {lagrangian.PredictedDistortion}");
        }
    }

    [Fact]
    public void SolversAreDeterministic()
    {
        var problem = RandomProblems.Create(new Random(7), maxUnits: 6);
        foreach (IBitAllocator solver in new IBitAllocator[] { new DpAllocator(), new LagrangianAllocator() })
        {
            var first = solver.Solve(problem);
            var second = solver.Solve(problem);
            Assert.Equal(first.Bits, second.Bits);
            Assert.Equal(first.Stats with { Elapsed = TimeSpan.Zero }, second.Stats with { Elapsed = TimeSpan.Zero });
        }
    }

    private static bool IsUnconstrainedOptimum(AllocationProblem problem, Allocation allocation)
    {
        // Below the window is fine when no unit can lower its distortion with more bits.
        for (var u = 0; u < problem.Units.Count; u++)
        {
            var unit = problem.Units[u];
            if (unit.PinnedBits is not null)
                continue;
            var best = RandomProblems.Candidates(unit, problem.MinBits).Min(b => RandomProblems.DistortionAt(unit, b));
            if (allocation.Units[u].Distortion > best)
                return false;
        }
        return true;
    }

    private static void AssertMeetsConstraints(AllocationProblem problem, Allocation allocation)
    {
        Assert.True(allocation.CostBits <= problem.BudgetBits, $"cost {allocation.CostBits} over budget {problem.BudgetBits}");
        Assert.True(allocation.Rate <= problem.TargetBits + 1e-12);
        long cost = 0;
        double distortion = 0;
        for (var u = 0; u < problem.Units.Count; u++)
        {
            var unit = problem.Units[u];
            var bits = allocation.Bits[u];
            Assert.Equal(unit.Name, allocation.Units[u].Name);
            Assert.Equal(bits, allocation.BitsOf(unit.Name));
            if (unit.PinnedBits is { } pinned)
                Assert.Equal(pinned, bits);
            else
                Assert.True(bits >= problem.MinBits);
            Assert.Contains(bits, RandomProblems.Candidates(unit, problem.MinBits));
            cost += unit.Size * bits;
            distortion += RandomProblems.DistortionAt(unit, bits);
        }
        Assert.Equal(cost, allocation.CostBits);
        Assert.Equal((double)cost / problem.TotalSize, allocation.Rate, 12);
        Assert.Equal(distortion, allocation.PredictedDistortion, 9);
    }
}
