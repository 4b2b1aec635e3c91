using System.Globalization;
using OnnxQuant.Passes.Pipeline;

namespace OnnxQuant.Passes.Smoothing;

/// <summary>Whether activation-aware scaling runs.</summary>
public enum SmoothingMode
{
    /// <summary>The model's channels keep their scale.</summary>
    Off,

    /// <summary>Every site the graph allows is scaled where the closed-form error says it helps.</summary>
    Auto,
}

/// <summary>Activation-aware scaling between normalizations and the linear layers they feed.</summary>
public sealed record SmoothingOptions : IStageOptions
{
    public SmoothingMode Mode { get; init; } = SmoothingMode.Auto;

    /// <summary>Calibration samples (the first ones) whose activations choose the scales.</summary>
    public int Samples { get; init; } = 4;

    public void Validate()
    {
        if (Samples < 1)
            throw new CompileException($"--smooth-samples {Samples}: at least 1");
    }

    public IEnumerable<OptionEntry> Manifest() =>
        Mode == SmoothingMode.Off ? [new("smooth", "off")] : [new("smooth", "auto"), new("smooth_samples", Samples.ToString(CultureInfo.InvariantCulture))];

    // No curve key part: the curves are keyed by the canonical model's bytes, which the scaling changes.
}
