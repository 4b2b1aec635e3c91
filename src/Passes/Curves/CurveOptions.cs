using OnnxQuant.Frontend;
using OnnxQuant.Passes.Pipeline;
using OnnxQuant.Passes.Quantization;

namespace OnnxQuant.Passes.Curves;

/// <summary>How error curves are obtained.</summary>
public enum CurveMode
{
    /// <summary>Measured in ONNX Runtime: units x bits x samples passes.</summary>
    Exact,
    /// <summary>Layer-output error from input second moments, scaled by a per-unit sensitivity measured once.</summary>
    Fast,
    /// <summary>
    /// Closed-form layer-local error at every width (full input second-moment matrix) times a propagation gain measured
    /// on a few samples with an error bar, on graph cuts (see <see cref="CutCurveMeasurer"/>).
    /// </summary>
    Gain,
}

/// <summary>Which widths the curves cover, how they are measured and where they are cached.</summary>
public sealed record CurveOptions : IStageOptions
{
    /// <summary>Candidate weight bit widths (2..8).</summary>
    public IReadOnlyList<int> CandidateBits { get; init; } = QuantMath.DefaultCandidateBits;

    public CurveMode Mode { get; init; } = CurveMode.Gain;

    /// <summary>An onnxquant.curves/1 file used instead of measuring curves (checked against the units and widths); null = measure.</summary>
    public string? CurvesFile { get; init; }

    /// <summary>How gain curves sample (not a command-line option: the defaults are what the quality tests pin).</summary>
    public GainSettings Gain { get; init; } = GainSettings.Default;

    /// <summary>Where curves are cached; null = no cache.</summary>
    public string? CacheDir { get; init; }

    public void Validate()
    {
        if (CandidateBits.Count == 0 || CandidateBits.Any(b => b is < 2 or > 8) || CandidateBits.Distinct().Count() != CandidateBits.Count)
            throw new CompileException($"--bits {string.Join(",", CandidateBits)}: candidate widths must be distinct and between 2 and 8");
    }

    public IEnumerable<OptionEntry> Manifest()
    {
        yield return new("bits", string.Join(",", CandidateBits));
        yield return new("curves", Mode.ToString().ToLowerInvariant());
        // Only when given, so manifests of measured compiles keep their keys.
        if (CurvesFile is { } path)
        {
            yield return new("curves_file", Path.GetFileName(path));
            yield return new("curves_file_sha256", Hashing.Sha256Hex(File.ReadAllBytes(path)));
        }
    }

    public IEnumerable<string> CurveKey() =>
        ["bits=" + string.Join(",", CandidateBits.OrderBy(b => b)), "curves=" + Mode,
            .. Mode == CurveMode.Fast ? [] : CutCurveMeasurer.KeyParts(Gain)];
}
