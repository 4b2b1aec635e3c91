using System.Globalization;
using OnnxQuant.Passes.Pipeline;

namespace OnnxQuant.Passes.Guards;

/// <summary>Accuracy limits checked after the artifacts are written (exit 3 when one fails).</summary>
public sealed record GuardOptions : IStageOptions
{
    /// <summary>Fail when the measured distortion exceeds this.</summary>
    public double? MaxDistortion { get; init; }

    /// <summary>Fail when bbox AP drops by more than this many points (needs the evaluation data and annotations).</summary>
    public double? MaxDrop { get; init; }

    /// <summary>Evaluation inputs (.npz) for AP; with <see cref="EvalAnnotations"/>, AP is measured for every target.</summary>
    public string? EvalData { get; init; }

    /// <summary>COCO annotations JSON matching <see cref="EvalData"/>.</summary>
    public string? EvalAnnotations { get; init; }

    /// <summary>Highest average weight width the repair of a failing guard may reach (float weights count 32 bits);
    /// null = up to float everywhere.</summary>
    public double? MaxRepairRate { get; init; }

    public bool MeasuresAp => EvalData is not null && EvalAnnotations is not null;

    public void Validate()
    {
        if (MaxDrop is not null && !MeasuresAp)
            throw new CompileException("--max-drop needs --eval-data and --eval-annotations");
        if (MaxDrop is { } drop && (!double.IsFinite(drop) || drop < 0))
            throw new CompileException($"--max-drop {drop.ToString(CultureInfo.InvariantCulture)} must be a non-negative number of AP points");
        if (MaxRepairRate is { } r && (!double.IsFinite(r) || r < 2 || r > 32))
            throw new CompileException($"--max-repair-rate {r.ToString(CultureInfo.InvariantCulture)} must be between 2 and 32 bits");
        if (MaxDistortion is { } d && (!double.IsFinite(d) || d < 0))
            throw new CompileException($"--max-distortion {d.ToString(CultureInfo.InvariantCulture)} must be a non-negative number");
    }

    public IEnumerable<OptionEntry> Manifest() =>
    [
        new("max_distortion", MaxDistortion?.ToString(CultureInfo.InvariantCulture) ?? "none"),
        new("max_drop", MaxDrop?.ToString(CultureInfo.InvariantCulture) ?? "none"),
        .. MaxRepairRate is { } r ? [new OptionEntry("max_repair_rate", r.ToString(CultureInfo.InvariantCulture))] : Array.Empty<OptionEntry>(),
    ];
}
