using OnnxQuant.Passes.Calibration;
using OnnxQuant.Passes.Measurement;
using OnnxQuant.Runtime;

namespace OnnxQuant.Passes.Curves;

/// <summary>A weight fed to the curve session as a graph input, with its float values.</summary>
public sealed record WeightInput(string Name, long[] Shape, float[] Values);

/// <summary>
/// Measures the distortion of the target features when some weights are replaced, in one ONNX Runtime session whose
/// weights are graph inputs: the float features are computed once and cached, then each configuration is one pass
/// over the samples with the replaced weights fed instead of the float ones (no session per configuration). The
/// metric is <see cref="FeatureMetric"/>.
/// </summary>
public sealed class FeatureDistortion : IDisposable
{
    private readonly InferenceSession _session;
    private readonly Dictionary<string, NamedTensor> _floatWeights;
    private readonly IReadOnlyList<string> _features;
    private readonly FeatureReference _reference;

    /// <param name="model">The model with every measured weight turned into a graph input of the same name.</param>
    /// <param name="samples">Samples [0, samples) of <paramref name="data"/> are used.</param>
    public FeatureDistortion(byte[] model, CalibrationSet data, int samples, IReadOnlyList<string> features,
        IReadOnlyList<WeightInput> weights, SessionOptions options, int runBatch, IReadOnlyList<double>? featureWeights = null)
    {
        _session = InferenceSession.Create(model, options);
        _features = features;
        _floatWeights = weights.ToDictionary(w => w.Name, w => new NamedTensor(w.Name, TensorData.FromFloats(w.Values, w.Shape)), StringComparer.Ordinal);
        _reference = new FeatureReference(features, data, 0, samples, runBatch, batch => Run(batch, null), featureWeights);
    }

    /// <summary>Number of ONNX Runtime runs one measurement takes.</summary>
    public int RunsPerMeasurement => _reference.Runs.Count;

    /// <summary>The float features of every batch (cached), in feature order.</summary>
    public IReadOnlyList<float[][]> Reference => _reference.Reference;

    /// <summary>Distortion with <paramref name="replaced"/> weights (name -> values) and the float ones elsewhere.</summary>
    public double Measure(IReadOnlyDictionary<string, float[]> replaced, Action? afterRun = null) =>
        _reference.Distortion(_reference.Runs.Select(batch =>
        {
            var outputs = Run(batch, replaced);
            afterRun?.Invoke();
            return outputs;
        }));

    private float[][] Run(IReadOnlyList<NamedTensor> batch, IReadOnlyDictionary<string, float[]>? replaced)
    {
        var inputs = new List<NamedTensor>(batch.Count + _floatWeights.Count);
        inputs.AddRange(batch);
        foreach (var (name, tensor) in _floatWeights)
            inputs.Add(replaced is not null && replaced.TryGetValue(name, out var values)
                ? new NamedTensor(name, TensorData.FromFloats(values, tensor.Data.Shape))
                : tensor);
        var outputs = _session.Run(inputs, _features);
        return outputs.Select(o => o.Data.ToFloats()).ToArray();
    }

    public void Dispose() => _session.Dispose();
}
