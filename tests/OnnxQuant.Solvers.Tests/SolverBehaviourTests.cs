using OnnxQuant.Solvers;

namespace OnnxQuant.Solvers.Tests;

/// <summary>Hand-checked cases for each solver's documented behaviour.</summary>
public class SolverBehaviourTests
{
    [Fact]
    public void LagrangianReportsWhenTheHullJumpsOverTheWindow()
    {
        // Budget 3 * 200 = 600 weight-bits, 400 used at 2 bits. Raising "a" to 5 bits costs 300 (slope 10/300),
        // raising "b" to 3 bits costs 100 (slope 2/100): the hull adds "a" first, which does not fit, so every
        // feasible multiplier leaves both at 2 bits (rate 2, outside [2.98, 3]). The DP takes "b" to 3 bits.
        var units = new[]
        {
            new UnitCurve("a", 100, [2, 5], [10, 0]),
            new UnitCurve("b", 100, [2, 3], [10, 8]),
        };
        var problem = new AllocationProblem(units, 3, 2);
        var lg = new LagrangianAllocator().Solve(problem);
        var stats = Assert.IsType<LagrangianStats>(lg.Stats);
        Assert.True(stats.WindowMissed);
        Assert.Equal(2, lg.Rate);
        Assert.Equal(20, lg.PredictedDistortion);
        var warning = Assert.Single(lg.Warnings);
        Assert.Equal(SolverWarningKind.LagrangianWindowMissed, warning.Kind);
        Assert.Contains("steps from above the budget to 2", warning.Message);

        var dp = new DpAllocator().Solve(problem);
        Assert.Equal([2, 3], dp.Bits);
        Assert.Equal(18, dp.PredictedDistortion);
    }

    [Fact]
    public void LagrangianStopsInsideTheWindowAndReportsItsSearch()
    {
        // Eight equal units with the same curve: every hull step moves the rate by 1/8 of a bit.
        var units = Enumerable.Range(0, 8).Select(i => new UnitCurve($"u{i}", 1000 + i, [2, 3, 4], [4 + i * 0.01, 2, 1])).ToArray();
        var problem = new AllocationProblem(units, 2.9, 2);
        var lg = new LagrangianAllocator(epsilon: 0.2).Solve(problem);
        var stats = Assert.IsType<LagrangianStats>(lg.Stats);
        Assert.False(stats.WindowMissed);
        Assert.InRange(lg.Rate, 2.7, 2.9);
        Assert.True(stats.Iterations > 0);
        Assert.Empty(lg.Warnings);
    }

    [Fact]
    public void LagrangianOvershootModeMayExceedTheTargetByEpsilon()
    {
        var units = new[] { new UnitCurve("a", 100, [2, 3], [10, 0]), new UnitCurve("b", 1, [2], [0]) };
        // 3 bits for "a" gives rate 2.990: above target 2.98 but within 0.02.
        var problem = new AllocationProblem(units, 2.98, 2);
        var strict = new LagrangianAllocator().Solve(problem);
        Assert.Equal(2, strict.BitsOf("a"));
        var overshoot = new LagrangianAllocator(new LagrangianOptions(AllowOvershoot: true)).Solve(problem);
        Assert.Equal(3, overshoot.BitsOf("a"));
        Assert.InRange(overshoot.Rate, 2.98, 3.0);
    }

    [Fact]
    public void TiesGoToFewerBits()
    {
        var units = new[] { new UnitCurve("flat", 10, [2, 3, 4], [1, 1, 1]), new UnitCurve("tail", 10, [2, 4], [2, 2]) };
        var problem = new AllocationProblem(units, 4, 2);
        Assert.Equal([2, 2], new DpAllocator().Solve(problem).Bits);
        Assert.Equal([2, 2], new LagrangianAllocator().Solve(problem).Bits);
    }

    [Fact]
    public void CostUnitIsTheGcdOfSizesSoLayerSizesGiveAShortAxis()
    {
        // ViT-B-like sizes: multiples of 768 * 768; the budget axis is counted in those, not in weights.
        long[] sizes = [589824, 1769472, 2359296, 2359296, 589824];
        var units = sizes.Select((n, i) => new UnitCurve($"l{i}", n, [2, 3, 4, 5, 6, 8], [32, 8, 2, 0.5, 0.12, 0.01])).ToArray();
        var allocation = new DpAllocator().Solve(new AllocationProblem(units, 4, 2));
        var stats = Assert.IsType<DpStats>(allocation.Stats);
        Assert.True(stats.IsExact);
        Assert.Equal(589824, stats.CostUnit);
        Assert.True(stats.Cells <= 1 + 2 * sizes.Sum() / 589824);
        Assert.True(allocation.Rate <= 4);
    }

    [Fact]
    public void TenThousandUnitsOnTenThousandCellsStayUnderTwoHundredMegabytes()
    {
        var rng = new Random(3);
        var units = Enumerable.Range(0, 10_000).Select(i =>
        {
            long size = 768L * rng.Next(64, 3073);
            var s = rng.NextDouble() * size;
            return new UnitCurve($"g{i}", size, [2, 3, 4, 5, 6, 8], new[] { 2, 3, 4, 5, 6, 8 }.Select(b => s * Math.Pow(4, -b)).ToArray());
        }).ToArray();
        var problem = new AllocationProblem(units, 4, 2);
        var allocation = new DpAllocator(new DpOptions(MaxCells: 10_000, MaxTableBytes: 200_000_000)).Solve(problem);
        var stats = Assert.IsType<DpStats>(allocation.Stats);
        Assert.InRange(stats.Cells, 9_000, 10_000);
        Assert.Equal(10_000L * stats.Cells, stats.TableBytes);
        Assert.True(stats.TableBytes < 200_000_000);
        Assert.False(stats.IsExact);
        Assert.True(allocation.CostBits <= problem.BudgetBits);
        // The bound is rigorous: at least the distance to the relaxation, which the Lagrangian cannot beat either.
        var lg = new LagrangianAllocator().Solve(problem);
        Assert.True(allocation.PredictedDistortion <= lg.PredictedDistortion);
        Assert.True(stats.OptimalityGapBound <= 1e-3 * allocation.PredictedDistortion, $"gap bound {stats.OptimalityGapBound}");
    }

    [Fact]
    public void TableBoundShrinksTheAxis()
    {
        var units = Enumerable.Range(0, 50).Select(i => new UnitCurve($"u{i}", 97 + i, [2, 4, 8], [9, 3, 1])).ToArray();
        var problem = new AllocationProblem(units, 5, 2);
        var allocation = new DpAllocator(new DpOptions(MaxTableBytes: 50 * 64)).Solve(problem);
        var stats = Assert.IsType<DpStats>(allocation.Stats);
        Assert.True(stats.Cells <= 64);
        Assert.True(stats.TableBytes <= 50 * 64);
        Assert.True(allocation.CostBits <= problem.BudgetBits);
        Assert.True(stats.OptimalityGapBound >= 0);
    }

    [Fact]
    public void AllPinnedProblemSolvesTrivially()
    {
        var units = new[] { new UnitCurve("a", 10, [8], [0.5], PinnedBits: 8), new UnitCurve("b", 10, [], [], PinnedBits: 4) };
        var problem = new AllocationProblem(units, 6, 2);
        foreach (IBitAllocator solver in new IBitAllocator[] { new DpAllocator(), new LagrangianAllocator() })
        {
            var allocation = solver.Solve(problem);
            Assert.Equal([8, 4], allocation.Bits);
            Assert.Equal(6, allocation.Rate);
            Assert.Equal(0.5, allocation.PredictedDistortion);
        }
    }
}
