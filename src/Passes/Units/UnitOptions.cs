using System.Globalization;
using OnnxQuant.Passes.Pipeline;

namespace OnnxQuant.Passes.Units;

/// <summary>What one unit of the allocation is.</summary>
public enum Granularity
{
    /// <summary>A whole layer.</summary>
    Layer,
    /// <summary>A group of consecutive output channels of a layer.</summary>
    Group,
}

/// <summary>Which tensors the distortion is measured on, and how much each counts.</summary>
public sealed record FeatureOptions : IStageOptions
{
    /// <summary>Tensors whose distortion the curves measure; empty = the model's float outputs.</summary>
    public IReadOnlyList<string> Features { get; init; } = [];

    /// <summary>Each feature's weight in the metric, in <see cref="Features"/> order; empty = 1 each (the plain
    /// sum). Named by the user (<c>--feature NAME=W</c>) or measured from <see cref="TaskAnnotations"/>.</summary>
    public IReadOnlyList<double> Weights { get; init; } = [];

    /// <summary>COCO annotations of the task images: the detection outputs become the features, weighed by the box AP
    /// that noise in each costs (<see cref="Measurement.TaskWeights"/>); "self" takes the float model's own confident
    /// detections as the annotations.</summary>
    public string? TaskAnnotations { get; init; }

    /// <summary>The images <see cref="TaskAnnotations"/> describes (.npz); null = the calibration data.</summary>
    public string? TaskData { get; init; }

    /// <summary>The weight of feature <paramref name="index"/> (1 when none are set).</summary>
    public double WeightOf(int index) => Weights.Count == 0 ? 1 : Weights[index];

    public bool Weighted => Weights.Any(w => w != 1);

    public void Validate()
    {
        if (Weights.Count > 0 && Weights.Count != Features.Count)
            throw new CompileException($"{Weights.Count} feature weights for {Features.Count} features");
        if (Weights.Count > 0 && Features.Distinct().Count() != Features.Count)
            throw new CompileException($"a weighted feature is named twice: {string.Join(", ", Features.GroupBy(f => f).Where(g => g.Count() > 1).Select(g => g.Key))}");
        foreach (var w in Weights)
            if (!double.IsFinite(w) || w <= 0)
                throw new CompileException($"feature weight {w.ToString(CultureInfo.InvariantCulture)} must be a positive number");
        if (TaskAnnotations is not null && Features.Count > 0 && Weights.Count == 0)
            throw new CompileException("--task-annotations chooses the features (the detection outputs, weighed by what their error costs in AP): leave out --feature, or name weights with --feature NAME=W instead");
        if (TaskData is not null && TaskAnnotations is null)
            throw new CompileException("--task-data needs --task-annotations (the COCO annotations of those images)");
    }

    public IEnumerable<OptionEntry> Manifest() =>
    [
        new("features", string.Join(",", Features.Select((f, i) => Weighted ? $"{f}={Format(WeightOf(i))}" : f))),
        .. TaskAnnotations is { } a ? [new OptionEntry("task_annotations", a), new OptionEntry("task_data", TaskData ?? "calibration")] : Array.Empty<OptionEntry>(),
    ];

    // The metric's denominator is part of what a curve measures: curves cached under the uncentered one differ.
    // Weights are too; unweighted features keep the key they always had.
    public IEnumerable<string> CurveKey() =>
    [
        "features=" + string.Join(",", Features), "metric=centered",
        .. Weighted ? ["weights=" + string.Join(",", Weights.Select(Format))] : Array.Empty<string>(),
    ];

    /// <summary>
    /// Features as the command line names them: <c>NAME</c> or <c>NAME=WEIGHT</c> (a tensor name that itself ends in
    /// "=number" is read as a weight). Weights are kept only when one is named; the others then count 1.
    /// </summary>
    public static FeatureOptions Parse(IReadOnlyList<string> specs, string? taskAnnotations = null, string? taskData = null)
    {
        var names = new List<string>(specs.Count);
        var weights = new List<double>(specs.Count);
        foreach (var spec in specs)
        {
            var split = spec.LastIndexOf('=');
            if (split > 0 && double.TryParse(spec[(split + 1)..], NumberStyles.Float, CultureInfo.InvariantCulture, out var w))
            {
                names.Add(spec[..split]);
                weights.Add(w);
            }
            else
            {
                names.Add(spec);
                weights.Add(1);
            }
        }
        return new FeatureOptions
        {
            Features = names,
            Weights = weights.Any(w => w != 1) ? weights : [],
            TaskAnnotations = taskAnnotations,
            TaskData = taskData,
        };
    }

    /// <summary>A weight as it appears in the manifest and the curve key (round-trips the double).</summary>
    public static string Format(double weight) => weight.ToString("R", CultureInfo.InvariantCulture);
}

/// <summary>Which layers are quantized and how they are cut into allocation units.</summary>
public sealed record UnitOptions : IStageOptions
{
    public Granularity Granularity { get; init; } = Granularity.Layer;

    /// <summary>Output channels per unit with <see cref="Units.Granularity.Group"/>.</summary>
    public int GroupSize { get; init; } = 64;

    /// <summary>Node name patterns (* and ? wildcards) or op types to keep in float.</summary>
    public IReadOnlyList<string> Exclude { get; init; } = [];

    /// <summary>Bits of the layers that do not reach the feature (detection heads), kept outside the budget.</summary>
    public int HeadBits { get; init; } = 8;

    /// <summary>Only layers ONNX Runtime's CPU execution provider has an integer kernel for are units (set for
    /// <c>--deploy speed</c>, which the manifest records): a ConvTranspose stays float there. Not a separate option.</summary>
    public bool IntegerKernelsOnly { get; init; }

    /// <summary>Layer kinds with no integer kernel on the CPU execution provider.</summary>
    public static IReadOnlySet<string> WithoutIntegerKernel { get; } = new HashSet<string>(StringComparer.Ordinal) { "ConvTranspose" };

    public void Validate()
    {
        if (HeadBits is < 2 or > 8)
            throw new CompileException($"--head-bits {HeadBits} is outside 2..8");
        if (GroupSize < 1)
            throw new CompileException($"--group-size {GroupSize}: need at least one channel per group");
    }

    public IEnumerable<OptionEntry> Manifest() =>
    [
        new("granularity", Granularity.ToString().ToLowerInvariant()),
        new("group_size", GroupSize.ToString(CultureInfo.InvariantCulture)),
        new("exclude", string.Join(",", Exclude)),
        new("head_bits", HeadBits.ToString(CultureInfo.InvariantCulture)),
    ];

    public IEnumerable<string> CurveKey() =>
        ["granularity=" + Granularity, "group=" + GroupSize, "exclude=" + string.Join(",", Exclude)];
}
