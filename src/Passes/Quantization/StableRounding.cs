using System.Globalization;

namespace OnnxQuant.Passes.Quantization;

/// <summary>
/// Measured numbers that drive decisions (error curves, calibration ranges, the verified distortion) keep 6
/// significant digits: enough for every decision, and it absorbs most of the last-bit differences ONNX Runtime shows
/// between thread counts, so the output bytes do not depend on the machine's cores.
/// </summary>
public static class StableRounding
{
    public const int Digits = 6;

    public static double Round(double value) =>
        value == 0 || !double.IsFinite(value) ? value : double.Parse(value.ToString("G6", CultureInfo.InvariantCulture), CultureInfo.InvariantCulture);

    public static float Round(float value) =>
        value == 0 || !float.IsFinite(value) ? value : (float)double.Parse(value.ToString("G6", CultureInfo.InvariantCulture), CultureInfo.InvariantCulture);
}
