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

/// <summary>Which tensors the distortion is measured on.</summary>
public sealed record FeatureOptions : IStageOptions
{
    /// <summary>Tensors whose distortion the curves measure; empty = the model's float outputs.</summary>
    public IReadOnlyList<string> Features { get; init; } = [];

    public void Validate() { }

    public IEnumerable<OptionEntry> Manifest() => [new("features", string.Join(",", Features))];

    // The metric's denominator is part of what a curve measures: curves cached under the uncentered one differ.
    public IEnumerable<string> CurveKey() => ["features=" + string.Join(",", Features), "metric=centered"];
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
