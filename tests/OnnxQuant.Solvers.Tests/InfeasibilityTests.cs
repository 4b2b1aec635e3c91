using OnnxQuant.Solvers;

namespace OnnxQuant.Solvers.Tests;

public class InfeasibilityTests
{
    private static readonly int[] Bits = [2, 3, 4, 5, 6, 8];
    private static readonly double[] Falling = [8, 4, 2, 1, 0.5, 0.1];

    public static TheoryData<string> Solvers => new() { "dp", "lagrangian" };

    private static IBitAllocator Make(string solver) => solver == "dp" ? new DpAllocator() : new LagrangianAllocator();

    [Theory]
    [MemberData(nameof(Solvers))]
    public void TargetBelowMinBits(string solver)
    {
        var problem = new AllocationProblem([new UnitCurve("a", 64, Bits, Falling), new UnitCurve("b", 32, Bits, Falling)], 2.5, 3);
        var error = Assert.Throws<SolverException>(() => Make(solver).Solve(problem));
        Assert.Equal(SolverErrorKind.Infeasible, error.Kind);
        Assert.Equal(InfeasibilityReason.TargetBelowMinBits, error.Reason);
        Assert.Contains("target 2.5 bits is below the minimum bit width 3", error.Message);
    }

    [Theory]
    [MemberData(nameof(Solvers))]
    public void PinnedUnitsEatTheBudget(string solver)
    {
        var problem = new AllocationProblem(
            [new UnitCurve("head", 300, Bits, Falling, PinnedBits: 8), new UnitCurve("body", 100, Bits, Falling)], 4, 2);
        var error = Assert.Throws<SolverException>(() => Make(solver).Solve(problem));
        Assert.Equal(InfeasibilityReason.PinnedUnitsExceedBudget, error.Reason);
        Assert.Contains("1 pinned unit(s) (75% of the weights at 8 bits on average) use 2400 of the 1600 weight-bits", error.Message);
    }

    [Theory]
    [MemberData(nameof(Solvers))]
    public void PinnedUnitsLeaveTooLittleForTheFreeOnes(string solver)
    {
        // Pinned alone fit (800 of 1000 weight-bits) but leave 200 for 150 free weights that need at least 3 bits each.
        var problem = new AllocationProblem(
            [new UnitCurve("head", 100, Bits, Falling, PinnedBits: 8), new UnitCurve("body", 150, Bits, Falling)], 4, 3);
        var error = Assert.Throws<SolverException>(() => Make(solver).Solve(problem));
        Assert.Equal(InfeasibilityReason.PinnedUnitsExceedBudget, error.Reason);
        Assert.Contains("leaving 1.3333 bits per free weight where the free units need at least 3", error.Message);
    }

    [Theory]
    [MemberData(nameof(Solvers))]
    public void AllowedWidthsAboveTheTarget(string solver)
    {
        var problem = new AllocationProblem(
            [new UnitCurve("a", 10, Bits, Falling) { AllowedBits = [4, 8] }, new UnitCurve("b", 10, Bits, Falling)], 2.5, 2);
        var error = Assert.Throws<SolverException>(() => Make(solver).Solve(problem));
        Assert.Equal(InfeasibilityReason.TargetBelowMinimumRate, error.Reason);
        Assert.Contains("below the smallest achievable rate 3", error.Message);
    }

    [Fact]
    public void ParetoSweepReportsInfeasibleTargetsPerTarget()
    {
        var problem = new AllocationProblem([new UnitCurve("a", 64, Bits, Falling), new UnitCurve("b", 32, Bits, [9, 3, 1, 0.9, 0.8, 0.7])], 4, 2);
        var front = ParetoSweep.Run(problem, [1.5, 2, 3, 4, 8, -1], new DpAllocator());
        Assert.Equal([1.5, 2, 3, 4, 8, -1], front.Points.Select(p => p.TargetBits));
        Assert.Equal(InfeasibilityReason.TargetBelowMinBits, front.Points[0].Error!.Reason);
        Assert.Equal(SolverErrorKind.InvalidProblem, front.Points[5].Error!.Kind);
        var feasible = front.Feasible.ToList();
        Assert.Equal(4, feasible.Count);
        // More budget never costs distortion.
        for (var i = 1; i < feasible.Count; i++)
            Assert.True(feasible[i].Allocation!.PredictedDistortion <= feasible[i - 1].Allocation!.PredictedDistortion);
        Assert.Equal(8, feasible[^1].Allocation!.Rate);
    }
}
