using OnnxQuant.Frontend;
using OnnxQuant.Passes.Calibration;
using OnnxQuant.Passes.Measurement;
using OnnxQuant.Runtime;

namespace OnnxQuant.Passes.Verify;

/// <summary>
/// Checks a rewritten model in ONNX Runtime: it must load and run, and its features are compared with the float
/// model's on the verification samples with the curves' metric (<see cref="FeatureMetric"/>). The float features are
/// computed once and reused for every model measured.
/// </summary>
public sealed class Verifier
{
    private readonly IReadOnlyList<string> _features;
    private readonly SessionOptions _sessionOptions;
    private readonly FeatureReference _reference;

    public Verifier(Model floatModel, IReadOnlyList<string> features, CalibrationSet data, int start, int count,
        SessionOptions sessionOptions, int runBatch, IReadOnlyList<double>? weights = null)
    {
        _features = features;
        _sessionOptions = Shrinking(sessionOptions);
        using var session = InferenceSession.Create(WithFeatureOutputs(floatModel), _sessionOptions);
        _reference = new FeatureReference(features, data, start, count, runBatch, batch => Run(session, batch), weights);
    }

    /// <summary>A verifier whose float features were computed elsewhere (by calibration's session, see
    /// <see cref="ForCalibration"/>).</summary>
    public Verifier(FeatureReference reference, SessionOptions sessionOptions)
    {
        _features = reference.Features;
        _sessionOptions = Shrinking(sessionOptions);
        _reference = reference;
    }

    /// <summary>
    /// Asks calibration to compute the verification samples' float features with its own session (the float model is
    /// loaded there already; a session of its own cost a second copy of the model at the compile's peak and its
    /// build time); <paramref name="made"/> receives the verifier, or nothing when calibration's graph lacks a feature.
    /// </summary>
    public static FloatRunRequest ForCalibration(IReadOnlyList<string> features, CalibrationSet data, int start, int count,
        SessionOptions sessionOptions, int runBatch, Action<Verifier> made, IReadOnlyList<double>? weights = null) =>
        new(features, run => made(new Verifier(new FeatureReference(features, data, start, count, runBatch,
            batch => run(batch).Select(o => o.Data.ToFloats()).ToArray(), weights), sessionOptions)));

    // Every model measured here holds the float model's activations once more beside the compile's own state: the
    // arena's unused chunks go back after each run, so they do not stack up on the compile's peak.
    private static SessionOptions Shrinking(SessionOptions options) => options with { ReleaseArenaAfterRun = true, ReleaseNativeHeap = true };

    public int Samples => _reference.Samples;

    /// <summary>Measured distortion of <paramref name="quantized"/>'s features against the float model's.</summary>
    public double Measure(Model quantized)
    {
        using var session = InferenceSession.Create(WithFeatureOutputs(quantized), _sessionOptions);
        return _reference.Distortion(_reference.Runs.Select(batch => Run(session, batch)));
    }

    /// <summary>The verification runs' inputs (a held selection's float choice among them).</summary>
    public IReadOnlyList<IReadOnlyList<NamedTensor>> Runs => _reference.Runs;

    /// <summary>
    /// Measured distortion of a model that reads only some of the runs' inputs (the deployed model, which makes the
    /// choices the measured one was fed), and the values of <paramref name="extra"/> it computes on each run.
    /// </summary>
    /// <param name="feed">Replaces a run's inputs (given the run's index); null feeds them as they are.</param>
    /// <returns>The distortion, or null when a feature's size differs from the float model's on some run (a choice
    /// that changes how many detections follow).</returns>
    public (double? Distortion, IReadOnlyList<IReadOnlyList<NamedTensor>> Extra) MeasureWith(Model model, IReadOnlyList<string> extra,
        Func<int, IReadOnlyList<NamedTensor>, IReadOnlyList<NamedTensor>>? feed = null)
    {
        var inputs = model.Graph.Inputs.Where(v => !v.IsInitializer).Select(v => v.Name).ToHashSet(StringComparer.Ordinal);
        var names = _features.Concat(extra).ToList();
        using var session = InferenceSession.Create(WithOutputs(model, names), _sessionOptions);
        var extras = new List<IReadOnlyList<NamedTensor>>();
        var features = new List<float[][]>();
        for (var r = 0; r < _reference.Runs.Count; r++)
        {
            var batch = feed is null ? _reference.Runs[r] : feed(r, _reference.Runs[r]);
            var outputs = session.Run(batch.Where(t => inputs.Contains(t.Name)).ToList(), names);
            features.Add(outputs.Take(_features.Count).Select(o => o.Data.ToFloats()).ToArray());
            extras.Add(outputs.Skip(_features.Count).ToList());
        }
        var comparable = features.Select((run, r) => run.Select((f, i) => f.Length == _reference.Reference[r][i].Length).All(x => x)).All(x => x);
        return (comparable ? _reference.Distortion(features) : null, extras);
    }

    private float[][] Run(InferenceSession session, IReadOnlyList<NamedTensor> batch) =>
        session.Run(batch, _features).Select(o => o.Data.ToFloats()).ToArray();

    /// <summary>The model's bytes with the features as its outputs (intermediate features become outputs).</summary>
    private byte[] WithFeatureOutputs(Model model) => WithOutputs(model, _features);

    /// <summary>The model's bytes with <paramref name="names"/> among its outputs (inner tensors become outputs).</summary>
    private static byte[] WithOutputs(Model model, IReadOnlyList<string> names)
    {
        var graph = model.Graph;
        if (names.All(f => graph.Outputs.Any(o => o.Name == f)))
            return ModelIO.ToBytes(model);
        var clone = model.Clone();
        foreach (var f in names)
        {
            var value = clone.Graph.FindValue(f) ?? throw new InvalidOperationException($"tensor '{f}' not in the model");
            if (!value.IsGraphOutput)
            {
                ElementTypeInference.EnsureTyped(value);
                clone.Graph.AddOutput(value);
            }
        }
        return ModelIO.ToBytes(clone);
    }
}
