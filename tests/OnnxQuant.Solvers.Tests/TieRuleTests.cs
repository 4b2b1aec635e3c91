using OnnxQuant.Solvers;

namespace OnnxQuant.Solvers.Tests;

/// <summary>
/// The tolerance-aware tie rule: allocations do not move when the curves move in their last digits, flat stretches
/// spend the budget, and the snapping costs (almost) nothing in predicted distortion. data/detr_small.curves.json
/// holds the exact curves of models/fixtures/detr_small.onnx measured by the README's compile (64 calibration samples).
/// </summary>
public class TieRuleTests
{
    private static readonly double[] Targets = [8, 7, 6, 5, 4.5, 4, 3.5, 3, 2.5];

    private static IReadOnlyList<UnitCurve> DetrCurves() =>
        CurvesFile.Read(Path.Combine(AppContext.BaseDirectory, "data", "detr_small.curves.json"))
            .Where(c => c.Distortion.Any(d => d != 0)).ToList(); // as the compiler does: zero curves are heads

    private static int MinBits(double target) => Math.Max(2, (int)Math.Floor(target) - 2); // the compiler's default

    private static AllocationProblem Problem(IReadOnlyList<UnitCurve> curves, double target, double tolerance) =>
        new(curves, target, MinBits(target), CurvePolicy.MakeMonotone, tolerance);

    /// <summary>Every value times (1 + r), r uniform in [-relative, relative].</summary>
    private static IReadOnlyList<UnitCurve> Perturb(IReadOnlyList<UnitCurve> curves, int seed, double relative)
    {
        var rng = new Random(seed);
        return curves.Select(c => c with { Distortion = c.Distortion.Select(d => d * (1 + relative * (2 * rng.NextDouble() - 1))).ToArray() }).ToList();
    }

    public static TheoryData<string> Solvers => new() { "dp", "lagrangian" };

    private static IBitAllocator Solver(string name) => name == "dp" ? new DpAllocator() : new LagrangianAllocator();

    [Theory]
    [MemberData(nameof(Solvers))]
    public void DetrCurvesPerturbedByOnePartPerMillionGiveTheSameAllocation(string solver)
    {
        var curves = DetrCurves();
        foreach (var target in Targets)
        {
            var reference = Solver(solver).Solve(Problem(curves, target, TieRule.DefaultTolerance)).Bits;
            for (var seed = 0; seed < 10; seed++)
            {
                var perturbed = Solver(solver).Solve(Problem(Perturb(curves, 1000 * seed + (int)(target * 10), 1e-6), target, TieRule.DefaultTolerance));
                Assert.True(reference.SequenceEqual(perturbed.Bits), $"{solver} target {target} seed {seed}: the allocation moved");
            }
        }
    }

    [Fact]
    public void WithoutTheRuleTheDetrAllocationAtEightBitsDependsOnNoise()
    {
        // Two decoder units of this model do not affect the output (curves ~4e-13, pure kernel noise): to the last
        // digit their curves decide 6 or 8 bits at random; on the tie grid they are flat and take the budget's 8 bits.
        var curves = DetrCurves();
        var exact = new DpAllocator().Solve(Problem(curves, 8, 0));
        var tied = new DpAllocator().Solve(Problem(curves, 8, TieRule.DefaultTolerance));
        Assert.Contains(6, exact.Bits);
        Assert.All(tied.Bits, b => Assert.Equal(8, b));
        Assert.Equal(8.0, tied.Rate);
    }

    [Fact]
    public void SnappingCostsTheDetrAllocationsWithinTheirBoundAndUnderOnePartInAThousand()
    {
        // Predicted distortion (curves as given) of the DP on the tie grid vs the exact DP to the last digit. A value
        // moves by at most step sqrt(D) + step^2/4 on the grid, so the tied optimum is above the exact one by at most
        // the moves of both allocations' values; on these curves the largest cost is 2.5e-4 (relative, target 6).
        var curves = DetrCurves();
        foreach (var target in Targets)
        {
            var exact = new DpAllocator().Solve(Problem(curves, target, 0));
            var problem = Problem(curves, target, TieRule.DefaultTolerance);
            var tied = new DpAllocator().Solve(problem);
            var step = problem.TieStep;
            var bound = exact.Units.Concat(tied.Units).Sum(u => step * Math.Sqrt(u.Distortion) + step * step / 4);
            Assert.InRange(tied.PredictedDistortion, exact.PredictedDistortion, exact.PredictedDistortion + bound);
            Assert.InRange(tied.PredictedDistortion, exact.PredictedDistortion, exact.PredictedDistortion * (1 + 1e-3));
        }
    }

    [Fact]
    public void FlatStretchesSpendTheBudgetWithTheRuleAndSaveItWithout()
    {
        var units = new[] { new UnitCurve("flat", 10, [2, 3, 4], [1, 1, 1]), new UnitCurve("tail", 10, [2, 4], [2, 2]) };
        Assert.Equal([2, 2], new DpAllocator().Solve(new AllocationProblem(units, 4, 2)).Bits);
        var problem = new AllocationProblem(units, 4, 2, tieTolerance: 1e-4);
        Assert.Equal([4, 4], new DpAllocator().Solve(problem).Bits);
        Assert.Equal([4, 4], new LagrangianAllocator().Solve(problem).Bits);
        // With less budget the tie still goes to more weight-bits: "flat" and "tail" are the same size, so the DP
        // keeps the first unit it meets at the higher width; either way 30 of the 30 weight-bits are used.
        var tight = new DpAllocator().Solve(problem.WithTarget(3));
        Assert.Equal(60, tight.CostBits);
    }

    [Fact]
    public void DifferencesBelowTheStepDoNotDecideButLargerOnesDo()
    {
        // Two units, budget for one upgrade; "b" gains 1e-9 more (below the step), then 1e-3 more (far above).
        UnitCurve[] Units(double extra) =>
        [
            new UnitCurve("a", 100, [2, 4], [1.0, 0.5]),
            new UnitCurve("b", 100, [2, 4], [1.0, 0.5 - extra]),
        ];
        var near = Enumerable.Range(0, 5).Select(i => new DpAllocator().Solve(new AllocationProblem(Units(i * 1e-9), 3, 2, tieTolerance: 1e-4)).Bits).ToList();
        Assert.All(near, bits => Assert.Equal(near[0], bits));
        Assert.Equal([2, 4], new DpAllocator().Solve(new AllocationProblem(Units(1e-3), 3, 2, tieTolerance: 1e-4)).Bits);
    }

    [Fact]
    public void StepIsTheToleranceTimesTheLargestRmsErrorAndFollowsWithTargets()
    {
        var units = new[] { new UnitCurve("a", 10, [2, 4], [4.0, 1.0]), new UnitCurve("b", 10, [2, 4], [0.25, 0.01]) };
        var problem = new AllocationProblem(units, 3, 2, tieTolerance: 1e-3);
        Assert.Equal(2e-3, problem.TieStep, 15);
        Assert.Equal(problem.TieStep, problem.WithTarget(4).TieStep);
        var allocation = new DpAllocator().Solve(problem);
        Assert.Equal(1e-3, allocation.Stats.TieTolerance);
        Assert.Equal(2e-3, allocation.Stats.TieStep, 15);
        Assert.Equal(0, new DpAllocator().Solve(new AllocationProblem(units, 3, 2)).Stats.TieStep);
        Assert.Equal(4.0, TieRule.Snap(4.0, 2e-3), 12);
        Assert.Equal(0, TieRule.Snap(1e-7, 2e-3));
    }

    [Theory]
    [InlineData(-1e-4)]
    [InlineData(0.5)]
    [InlineData(double.NaN)]
    public void ToleranceOutsideItsRangeIsRejected(double tolerance)
    {
        var error = Assert.Throws<SolverException>(() => new AllocationProblem([new UnitCurve("a", 1, [2], [1])], 2, 2, tieTolerance: tolerance));
        Assert.Equal(SolverErrorKind.InvalidProblem, error.Kind);
        Assert.Contains("tie tolerance", error.Message);
    }

    [Fact]
    public void OnRandomProblemsTheRuleStaysWithinItsBoundAndMeetsTheConstraints()
    {
        var rng = new Random(77);
        for (var i = 0; i < 300; i++)
        {
            var problem = RandomProblems.Create(rng);
            if (problem.CheckFeasibility() is not null)
                continue;
            var tied = new AllocationProblem(problem.Units, problem.TargetBits, problem.MinBits, problem.CurvePolicy, 1e-3);
            var exact = new DpAllocator().Solve(problem);
            var dp = new DpAllocator().Solve(tied);
            Assert.True(dp.CostBits <= tied.BudgetBits);
            Assert.All(dp.Units.Zip(tied.Units), p => Assert.True(p.Second.PinnedBits is { } pin ? p.First.Bits == pin : p.First.Bits >= tied.MinBits));
            // Snapping moves each value by at most step sqrt(D) + step^2 / 4, so the optimum by at most twice the sum.
            var step = tied.TieStep;
            var bound = 2 * tied.Units.Sum(u => u.Distortion.Count == 0 ? 0 : u.Distortion.Max(d => step * Math.Sqrt(d) + step * step / 4));
            Assert.True(dp.PredictedDistortion <= exact.PredictedDistortion + bound + 1e-12,
                $"instance {i}: {dp.PredictedDistortion} vs exact {exact.PredictedDistortion} + bound {bound}");
            var lg = new LagrangianAllocator().Solve(tied);
            Assert.True(lg.CostBits <= tied.BudgetBits);
        }
    }
}
