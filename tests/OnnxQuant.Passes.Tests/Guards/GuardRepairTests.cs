using OnnxQuant.Passes.Guards;

namespace OnnxQuant.Passes.Tests.Guards;

public class GuardRepairTests
{
    private static readonly int[] Bits = [2, 4, 8];

    /// <summary>Measured = predicted (sum of the curves at the widths), as if additivity held exactly.</summary>
    private static GuardMeasurement Additive(IReadOnlyList<RepairUnit> units, IReadOnlyDictionary<string, int> bits) =>
        new(units.Sum(u => bits[u.Name] == GuardRepair.FloatBits ? 0 : u.Distortion[Array.IndexOf(Bits, bits[u.Name])]), null);

    [Fact]
    public void RaisesTheUnitWithTheLargestGainPerBitFirst()
    {
        // a: 0.4 per 200 bits; b: 0.3 per 20 bits (best per bit); c: 0.05 per 20 bits.
        RepairUnit[] units =
        [
            new("a", "A", 100, Bits, [0.5, 0.1, 0.01]),
            new("b", "B", 10, Bits, [0.4, 0.1, 0.01]),
            new("c", "C", 10, Bits, [0.1, 0.05, 0.01]),
        ];
        var initial = units.ToDictionary(u => u.Name, _ => 2);
        var options = new GuardOptions { MaxDistortion = 0.8 }; // 1.0 at 2 bits; the round aims at 0.9 x 0.8: one step of b
        var outcome = GuardRepair.Run(options, units, initial, Additive(units, initial), bits => Additive(units, bits));
        Assert.True(outcome.Report.Met);
        Assert.Equal(1, outcome.Report.Rounds);
        Assert.Equal([new OnnxQuant.Passes.Artifact.RaisedUnit("b", 2, 4)], outcome.Report.Raised);
        Assert.Equal((100 * 2 + 10 * 4 + 10 * 2) / 120.0, outcome.Report.FinalRate, 12);
    }

    [Fact]
    public void RestoresFloatWhenTheWidestWidthIsNotEnoughAndStopsAtTheRateCap()
    {
        RepairUnit[] units = [new("a", "A", 10, Bits, [0.5, 0.2, 0.1]), new("b", "B", 10, Bits, [0.5, 0.2, 0.1])];
        var initial = units.ToDictionary(u => u.Name, _ => 8);
        var first = Additive(units, initial);
        var outcome = GuardRepair.Run(new GuardOptions { MaxDistortion = 0.15 }, units, initial, first, bits => Additive(units, bits));
        Assert.True(outcome.Report.Met);
        Assert.Contains(outcome.Report.Raised, r => r.ToBits == GuardRepair.FloatBits);

        var capped = GuardRepair.Run(new GuardOptions { MaxDistortion = 0.15, MaxRepairRate = 8 }, units, initial, first, bits => Additive(units, bits));
        Assert.False(capped.Report.Met);
        Assert.Empty(capped.Report.Raised);
        Assert.Equal(0, capped.Report.Rounds);
    }
}
