using System.Globalization;

namespace OnnxQuant.Passes.Quantization;

/// <summary>
/// Measured numbers that drive decisions (error curves, calibration ranges, the verified distortion) keep 6
/// significant digits: enough for every decision, and it absorbs most of the last-bit differences ONNX Runtime shows
/// between thread counts, so the output bytes do not depend on the machine's cores.
/// <para>
/// The result is defined as the nearest double to the value's 6-significant-digit decimal ("G6", then parsed). Every
/// entry of a layer's input second-moment matrix goes through here (tens of millions on a ResNet-50), so the decimal is
/// found by scaling in binary: |v| 10^k with k = 5 - floor(log10 |v|) is off by at most 2^-53 relative, i.e. by under
/// 1e-9 in its integer part's scale, so rounding it to an integer gives the decimal's digits unless its fraction is
/// within 1e-6 of one half or the scale missed the sixth digit; those rare cases take the formatting path. Dividing
/// the integer (exact) by the exact power of ten is correctly rounded, as parsing is.
/// </para>
/// </summary>
public static class StableRounding
{
    public const int Digits = 6;

    private const double Log10Of2 = 0.30102999566398119521;

    private static readonly double[] Powers = Enumerable.Range(0, 23).Select(k => double.Parse("1e" + k, CultureInfo.InvariantCulture)).ToArray();

    public static double Round(double value)
    {
        if (value == 0 || !double.IsFinite(value))
            return value;
        var magnitude = Math.Abs(value);
        // floor(log10 |v|) is floor(e log10 2) or one more, e the binary exponent: the scale that puts the sixth digit
        // left of the point is found by one comparison instead of a logarithm (tens of millions of calls per model).
        var k = Digits - 1 - (int)Math.Floor(Math.ILogB(magnitude) * Log10Of2);
        if (k is < -21 or > 22)
            return ByFormatting(value);
        var scaled = k >= 0 ? magnitude * Powers[k] : magnitude / Powers[-k];
        if (scaled >= 999_999.5)
        {
            k--;
            scaled = k >= 0 ? magnitude * Powers[k] : magnitude / Powers[-k];
        }
        var whole = Math.Floor(scaled);
        var fraction = scaled - whole;
        // Outside [1e5, 1e6 - 0.5) the logarithm put the sixth digit elsewhere or the rounding carries into a seventh.
        if (Math.Abs(fraction - 0.5) < 1e-6 || scaled < 100_000 || scaled >= 999_999.5)
            return ByFormatting(value);
        var digits = fraction > 0.5 ? whole + 1 : whole;
        var rounded = k >= 0 ? digits / Powers[k] : digits * Powers[-k];
        return value < 0 ? -rounded : rounded;
    }

    /// <summary>The float's 6-digit decimal is the same as its double's (the exact binary value is the same), so this is
    /// the nearest float to the nearest double to it, as parsing the float's "G6" text as a double and narrowing gives.</summary>
    public static float Round(float value) =>
        value == 0 || !float.IsFinite(value) ? value : (float)Round((double)value);

    internal static double ByFormatting(double value) =>
        double.Parse(value.ToString("G6", CultureInfo.InvariantCulture), CultureInfo.InvariantCulture);

    internal static float ByFormatting(float value) =>
        (float)double.Parse(value.ToString("G6", CultureInfo.InvariantCulture), CultureInfo.InvariantCulture);
}
