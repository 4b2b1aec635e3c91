using OnnxQuant.Solvers;

namespace OnnxQuant.Solvers.Tests;

public class ProblemValidationTests
{
    private static UnitCurve Curve(string name, long size, params double[] distortion) =>
        new(name, size, new[] { 2, 3, 4, 5, 6, 8 }[..distortion.Length], distortion);

    [Theory]
    [InlineData(double.NaN, "must be finite")]
    [InlineData(double.PositiveInfinity, "must be finite")]
    [InlineData(-0.5, "must be non-negative")]
    public void BadDistortionIsAnErrorNamingTheUnitAndWidth(double bad, string expected)
    {
        var units = new[] { Curve("a", 10, 3, 2, 1), Curve("blocks.1.mlp", 10, 3, bad, 1) };
        var error = Assert.Throws<SolverException>(() => new AllocationProblem(units, 3, 2));
        Assert.Equal(SolverErrorKind.InvalidCurve, error.Kind);
        Assert.Contains("'blocks.1.mlp'", error.Message);
        Assert.Contains("at 3 bits", error.Message);
        Assert.Contains(expected, error.Message);
    }

    [Fact]
    public void StructuralErrorsSayWhatIsWrong()
    {
        Assert.Contains("no units", Assert.Throws<SolverException>(() => new AllocationProblem([], 3, 2)).Message);
        Assert.Contains("3 bit widths but 2 distortion values",
            Assert.Throws<SolverException>(() => new AllocationProblem([new UnitCurve("a", 4, [2, 3, 4], [1, 0.5])], 3, 2)).Message);
        Assert.Contains("appears more than once",
            Assert.Throws<SolverException>(() => new AllocationProblem([Curve("a", 4, 1, 0.5), Curve("a", 4, 1, 0.5)], 3, 2)).Message);
        Assert.Contains("twice",
            Assert.Throws<SolverException>(() => new AllocationProblem([new UnitCurve("a", 4, [4, 4], [1, 0.5])], 3, 2)).Message);
        Assert.Contains("size 0",
            Assert.Throws<SolverException>(() => new AllocationProblem([Curve("a", 0, 1, 0.5)], 3, 2)).Message);
        Assert.Contains("positive finite",
            Assert.Throws<SolverException>(() => new AllocationProblem([Curve("a", 4, 1, 0.5)], double.NaN, 2)).Message);
        Assert.Contains("no candidate width at or above the minimum bits 5",
            Assert.Throws<SolverException>(() => new AllocationProblem([Curve("a", 4, 1, 0.5, 0.2)], 6, 5)).Message);
        Assert.Contains("allows 7 bits",
            Assert.Throws<SolverException>(() => new AllocationProblem([Curve("a", 4, 1, 0.5) with { AllowedBits = [7] }], 3, 2)).Message);
    }

    [Fact]
    public void RisingCurveIsReportedByNameAndUsedAsGiven()
    {
        var units = new[] { Curve("flat", 10, 3, 2, 1), Curve("bumpy", 10, 3, 1, 2, 0.5) };
        var problem = new AllocationProblem(units, 3, 2);
        var warning = Assert.Single(problem.Warnings);
        Assert.Equal(SolverWarningKind.CurveRises, warning.Kind);
        Assert.Equal("bumpy", warning.Unit);
        Assert.Contains("3->4", warning.Message);
        // As given, 4 bits of "bumpy" costs more and is worse than 3 bits.
        var allocation = new DpAllocator().Solve(problem.WithTarget(3.5));
        Assert.Contains(allocation.Warnings, w => w.Unit == "bumpy");
    }

    [Fact]
    public void RisingCurveCanBeMadeMonotone()
    {
        var units = new[] { Curve("bumpy", 10, 3, 1, 2, 0.5) };
        var problem = new AllocationProblem(units, 4, 2, CurvePolicy.MakeMonotone);
        Assert.Equal(SolverWarningKind.CurveMadeMonotone, Assert.Single(problem.Warnings).Kind);
        var allocation = new DpAllocator().Solve(problem);
        // 4 bits now costs distortion 1 (the running minimum), tying 3 bits; the tie goes to fewer bits.
        Assert.Equal(3, allocation.BitsOf("bumpy"));
        Assert.Equal(1, allocation.PredictedDistortion);
    }

    [Fact]
    public void PinnedUnitCountsInRateAndDistortionAndIgnoresMinBits()
    {
        var units = new UnitCurve[]
        {
            new("head", 100, [2, 8], [5, 0.25], PinnedBits: 8),
            new("stem", 100, [], [], PinnedBits: 8),
            Curve("body", 200, 4, 2, 1, 0.5),
        };
        var problem = new AllocationProblem(units, 6.5, 3);
        Assert.Contains(problem.Warnings, w => w.Kind == SolverWarningKind.PinnedWithoutDistortion && w.Unit == "stem");
        var allocation = new DpAllocator().Solve(problem);
        Assert.Equal(8, allocation.BitsOf("head"));
        Assert.Equal(8, allocation.BitsOf("stem"));
        // Budget 6.5 * 400 = 2600; pinned use 1600, body may take 1000 / 200 = 5 bits.
        Assert.Equal(5, allocation.BitsOf("body"));
        Assert.Equal(6.5, allocation.Rate);
        Assert.Equal(0.25 + 0.5, allocation.PredictedDistortion);
    }

    [Fact]
    public void BudgetIsComputedWithoutBinaryRoundingLoss()
    {
        // 4.35 * 100 is 434.99999999999994 in binary floating point; the budget must still be 435 weight-bits.
        var problem = new AllocationProblem([new UnitCurve("a", 35, [4, 5], [1, 0]), new UnitCurve("b", 65, [4], [0])], 4.35, 2);
        Assert.Equal(435, problem.BudgetBits);
        Assert.Equal(5, new DpAllocator().Solve(problem).BitsOf("a"));
    }
}
