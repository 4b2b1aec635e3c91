using OnnxQuant.Solvers;
using Xunit;

namespace OnnxQuant.Solvers.Tests;

/// <summary>Units applying one weight are allocated as one: curves summed, one size, one width.</summary>
public class TiedCurvesTests
{
    private static readonly UnitCurve[] Head =
    [
        new("head.p3", 1000, [2, 4, 8], [0.4, 0.04, 0.001]),
        new("trunk", 4000, [2, 4, 8], [0.9, 0.05, 0.002]),
        new("head.p4", 1000, [2, 4, 8], [0.2, 0.02, 0.0005]) { TiedTo = "head.p3" },
        new("head.p5", 1000, [2, 4, 8], [0.1, 0.01, 0.0002]) { TiedTo = "head.p3" },
    ];

    [Fact]
    public void TiedUnitsBecomeTheirRepresentativeWithSummedCurves()
    {
        var (units, tiedTo) = TiedCurves.Merge(Head, x => x);

        Assert.Equal(["head.p3", "trunk"], units.Select(u => u.Name));
        var head = units[0];
        Assert.Equal(1000, head.Size);
        Assert.Equal(0.7, head.Distortion[0], 12);
        Assert.Equal(0.07, head.Distortion[1], 12);
        Assert.Equal(0.0017, head.Distortion[2], 12);
        Assert.Equal("head.p3", tiedTo["head.p4"]);
        Assert.Equal("head.p3", tiedTo["head.p5"]);
        Assert.Same(Head[1], units[1]);
    }

    [Fact]
    public void AllocationOfMergedUnitsCountsTheWeightOnce()
    {
        // One stored head weight and the trunk: 5,000 weights, so 4 bits on average is 20,000 bits, which 4 bits each
        // spends exactly (the rate counts the head once, not three times).
        var (units, _) = TiedCurves.Merge(Head, x => x);
        var allocation = new DpAllocator().Solve(new AllocationProblem(units, 4, 2));
        Assert.Equal(4.0, allocation.Rate, 9);
        Assert.All(allocation.Units, u => Assert.Equal(4, u.Bits));
    }

    [Fact]
    public void BadTiesAreRefusedWithTheUnitNamed()
    {
        var missing = new[] { Head[0], Head[2] with { TiedTo = "head.p9" } };
        Assert.Contains("'head.p9', which is not in the curves", Assert.Throws<SolverException>(() => TiedCurves.Merge(missing, x => x)).Message);
        var chained = new[] { Head[0], Head[2], Head[3] with { TiedTo = "head.p4" } };
        Assert.Contains("tied to 'head.p3' itself", Assert.Throws<SolverException>(() => TiedCurves.Merge(chained, x => x)).Message);
        var widths = new[] { Head[0], new UnitCurve("head.p4", 1000, [2, 8], [0.2, 0.0005]) { TiedTo = "head.p3" } };
        Assert.Contains("different widths", Assert.Throws<SolverException>(() => TiedCurves.Merge(widths, x => x)).Message);
    }

    [Fact]
    public void CurvesFileKeepsTiesAndWritesNothingWithout()
    {
        var json = CurvesFile.ToJson(Head);
        Assert.Contains("\"tied_to\": \"head.p3\"", json);
        var back = CurvesFile.Parse(System.Text.Encoding.UTF8.GetBytes(json));
        Assert.Equal([null, null, "head.p3", "head.p3"], back.Select(u => u.TiedTo));
        Assert.Equal(json, CurvesFile.ToJson(back));
        Assert.DoesNotContain("tied_to", CurvesFile.ToJson([Head[0], Head[1]]));
    }
}
