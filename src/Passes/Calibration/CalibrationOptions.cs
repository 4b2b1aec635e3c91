using System.Globalization;
using OnnxQuant.Passes.Pipeline;

namespace OnnxQuant.Passes.Calibration;

/// <summary>How activations entering quantized layers are quantized and their ranges calibrated.</summary>
public sealed record CalibrationOptions : IStageOptions
{
    /// <summary>Bits of the activations entering quantized layers (0 = weight-only).</summary>
    public int ActBits { get; init; } = 8;

    public CalibrationMethod ActCalibration { get; init; } = CalibrationMethod.MinMax;

    /// <summary>
    /// The activation tensors with the largest priced error (<see cref="Curves.ActivationPricing"/>) quantized at 16 bits
    /// instead of 8: how many (0 = none). For targets that run some tensors at 16 bits (A16W8 layers).
    /// </summary>
    public int Act16Tensors { get; init; }

    public void Validate()
    {
        if (ActBits is not (0 or 8 or 16))
            throw new CompileException($"--act-bits {ActBits}: activations are quantized at 8 or 16 bits (0 = weights only)");
        if (Act16Tensors < 0)
            throw new CompileException($"--act16-tensors {Act16Tensors}: a number of tensors (0 or more)");
        if (Act16Tensors > 0 && ActBits != 8)
            throw new CompileException($"--act16-tensors raises 8-bit activations to 16 bits; with --act-bits {ActBits} there are none to raise (use --act-bits 8)");
    }

    // The 16-bit tensors only when used, so manifests of compiles without them keep their bytes.
    public IEnumerable<OptionEntry> Manifest() =>
    [
        new("act_bits", ActBits.ToString(CultureInfo.InvariantCulture)),
        new("act_calibration", ActCalibration.ToString().ToLowerInvariant()),
        .. Act16Tensors == 0 ? Array.Empty<OptionEntry>() : [new("act16_tensors", Act16Tensors.ToString(CultureInfo.InvariantCulture))],
    ];
}
