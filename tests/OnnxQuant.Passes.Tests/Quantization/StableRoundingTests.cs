using OnnxQuant.Passes.Quantization;

namespace OnnxQuant.Passes.Tests.Quantization;

/// <summary>The scaled rounding must give the very doubles the "G6" text gives (artifacts and curves depend on them).</summary>
public class StableRoundingTests
{
    private static void Same(double value)
    {
        var expected = StableRounding.ByFormatting(value);
        var actual = StableRounding.Round(value);
        Assert.True(BitConverter.DoubleToInt64Bits(expected) == BitConverter.DoubleToInt64Bits(actual),
            $"{value:R}: formatting gives {expected:R}, scaling {actual:R}");
    }

    [Fact]
    public void LogUniformValuesOverThe300DecadesRoundAsTheirText()
    {
        var random = new Random(11);
        for (var i = 0; i < 1_000_000; i++)
        {
            var v = Math.Pow(10, random.NextDouble() * 600 - 300) * (random.Next(2) == 0 ? 1 : -1);
            Same(v);
        }
    }

    [Fact]
    public void TiesPowersOfTenAndTheirNeighboursRoundAsTheirText()
    {
        var random = new Random(12);
        for (var e = -40; e <= 40; e++)
        {
            var p = Math.Pow(10, e);
            foreach (var v in new[] { p, Math.BitIncrement(p), Math.BitDecrement(p), 9.999995 * p, 9.999994999 * p, 9.9999950001 * p, 0.99999949 * p })
            {
                Same(v);
                Same(-v);
            }
            for (var i = 0; i < 2_000; i++)
            {
                // Six digits and a half: exactly at, just above and just below the rounding point.
                var tie = (random.Next(100_000, 1_000_000) + 0.5) * Math.Pow(10, e - 5);
                Same(tie);
                Same(Math.BitIncrement(tie));
                Same(Math.BitDecrement(tie));
                Same(-tie);
                // Values already at six digits stay where their text puts them.
                Same(random.Next(100_000, 1_000_000) * Math.Pow(10, e - 5));
            }
        }
        foreach (var v in new[] { double.Epsilon, double.MaxValue, -double.MaxValue, 1e-308, 2.2250738585072014E-308, 1e308, 0.5, 1.0, 123456.5 })
            Same(v);
        Assert.Equal(0.0, StableRounding.Round(0.0));
        Assert.True(double.IsNaN(StableRounding.Round(double.NaN)));
        Assert.Equal(double.PositiveInfinity, StableRounding.Round(double.PositiveInfinity));
    }

    [Fact]
    public void FloatsRoundAsTheirText()
    {
        var random = new Random(13);
        for (var i = 0; i < 500_000; i++)
        {
            var v = (float)(Math.Pow(10, random.NextDouble() * 76 - 38) * (random.Next(2) == 0 ? 1 : -1));
            Assert.Equal(BitConverter.SingleToInt32Bits(StableRounding.ByFormatting(v)), BitConverter.SingleToInt32Bits(StableRounding.Round(v)));
        }
    }

    [Fact]
    public void SecondMomentsRoundedAsTheyAreWrittenEqualTheirText()
    {
        var random = new Random(14);
        const int n = 61;
        var rows = Enumerable.Range(0, 33).Select(_ => Enumerable.Range(0, n).Select(_ => (float)(random.NextDouble() * 1e3 - 500)).ToArray()).ToList();
        var (raw, _) = DenseSpd.Moments(rows, n, threads: 2);
        var (rounded, _) = DenseSpd.Moments(rows, n, threads: 2, StableRounding.Round);
        Assert.Equal(raw.Select(StableRounding.ByFormatting).ToArray(), rounded);
    }
}
