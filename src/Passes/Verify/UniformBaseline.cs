using OnnxQuant.Passes.Pipeline;

namespace OnnxQuant.Passes.Verify;

/// <summary>Whether every compile also measures uniform widths at the size of each target.</summary>
public sealed record BaselineOptions : IStageOptions
{
    /// <summary>Rewrite and verify every free unit at the candidate width nearest each target (one more verification per distinct width).</summary>
    public bool Uniform { get; init; } = true;

    public void Validate()
    {
    }

    // Left out of the manifest on purpose: the baseline is a figure in the report and never changes a model.
    public IEnumerable<OptionEntry> Manifest() => [];
}

/// <summary>
/// The uniform baseline of one target: every free unit at the same width (heads and float layers as in the mixed
/// model), its predicted distortion (sum of the curves at that width) and its measured distortion on the verification
/// samples. <see cref="Skipped"/> says why it was not measured; then the figures are NaN.
/// </summary>
public sealed record UniformBaseline(int Bits, double Rate, double Predicted, double Measured, bool SameAsMixed, string? Skipped)
{
    public static UniformBaseline NotMeasured(string reason) => new(0, double.NaN, double.NaN, double.NaN, false, reason);

    /// <summary>
    /// The candidate width nearest the target (a tie goes to the narrower width, so the baseline never gets more bits
    /// than the mixed budget it is compared with).
    /// </summary>
    public static int WidthFor(double target, IReadOnlyList<int> candidateBits) =>
        candidateBits.Order().MinBy(b => (Math.Abs(b - target), b));
}
