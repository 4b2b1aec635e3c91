using System.Globalization;
using OnnxQuant.Passes.Pipeline;

namespace OnnxQuant.Passes.Calibration;

/// <summary>How activations entering quantized layers are quantized and their ranges calibrated.</summary>
public sealed record CalibrationOptions : IStageOptions
{
    /// <summary>Bits of the activations entering quantized layers (0 = weight-only).</summary>
    public int ActBits { get; init; } = 8;

    public CalibrationMethod ActCalibration { get; init; } = CalibrationMethod.MinMax;

    public void Validate()
    {
        if (ActBits is not (0 or 8 or 16))
            throw new CompileException($"--act-bits {ActBits}: activations are quantized at 8 or 16 bits (0 = weights only)");
    }

    public IEnumerable<OptionEntry> Manifest() =>
    [
        new("act_bits", ActBits.ToString(CultureInfo.InvariantCulture)),
        new("act_calibration", ActCalibration.ToString().ToLowerInvariant()),
    ];
}
