using OnnxQuant.Passes.Allocate;
using OnnxQuant.Passes.Calibration;
using OnnxQuant.Passes.Curves;
using OnnxQuant.Passes.Guards;
using OnnxQuant.Passes.Load;
using OnnxQuant.Passes.Pipeline;
using OnnxQuant.Passes.Rewrite;
using OnnxQuant.Passes.Units;
using OnnxQuant.Passes.Verify;

namespace OnnxQuant.Passes.Compile;

/// <summary>
/// Everything that decides what <c>compile</c> produces: one options record per stage, each owning its validation,
/// its manifest entries and its part of the curve cache key.
/// </summary>
public sealed record CompileOptions
{
    public DataOptions Data { get; init; } = new();
    public FeatureOptions Features { get; init; } = new();
    public UnitOptions Units { get; init; } = new();
    public Smoothing.SmoothingOptions Smoothing { get; init; } = new();
    public CalibrationOptions Calibration { get; init; } = new();
    public CurveOptions Curves { get; init; } = new();
    public AllocationOptions Allocation { get; init; } = new();
    public RewriteOptions Rewrite { get; init; } = new();
    public GuardOptions Guards { get; init; } = new();
    public BaselineOptions Baseline { get; init; } = new();
    public ExecutionOptions Execution { get; init; } = new();

    /// <summary>Every stage's options, in pipeline order.</summary>
    public IEnumerable<IStageOptions> Stages => [Data, Features, Units, Smoothing, Calibration, Curves, Allocation, Rewrite, Baseline, Guards, Execution];

    public void Validate()
    {
        foreach (var stage in Stages)
            stage.Validate();
        Allocation.ValidateFeasible(Curves.CandidateBits);
        if (Curves.Mode == CurveMode.Fast && Rewrite.Compensation != Quantization.Compensation.None)
            throw new CompileException("--curves fast prices weights rounded to nearest: use --compensation none with it, or --curves gain or exact");
        Rewrite.ValidateWith(Calibration.ActBits, Calibration.Act16Tensors);
    }

    /// <summary>
    /// The manifest's options. The keys of <c>onnxquant.manifest/1</c> keep their first order, so manifests of the same
    /// compile stay byte-identical across versions; keys added later follow in stage order.
    /// </summary>
    public IReadOnlyList<OptionEntry> Manifest()
    {
        var entries = Stages.SelectMany(s => s.Manifest()).ToList();
        var rank = ManifestOrder.Select((k, i) => (k, i)).ToDictionary(p => p.k, p => p.i, StringComparer.Ordinal);
        return entries.Select((e, i) => (e, i))
            .OrderBy(p => rank.TryGetValue(p.e.Key, out var r) ? r : ManifestOrder.Length + p.i)
            .Select(p => p.e).ToList();
    }

    /// <summary>The options that change a measured curve, in stage order.</summary>
    public IEnumerable<string> CurveKey() => Stages.SelectMany(s => s.CurveKey());

    private static readonly string[] ManifestOrder =
    [
        "target_bits", "calib_samples", "verify_samples", "verify_data", "features", "bits", "min_bits", "solver", "epsilon",
        "act_bits", "act_calibration", "granularity", "group_size", "exclude", "head_bits", "format", "block_size", "curves",
        "max_distortion",
    ];
}
