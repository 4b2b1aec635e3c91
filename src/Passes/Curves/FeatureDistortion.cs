using OnnxQuant.Frontend;
using OnnxQuant.Passes.Calibration;
using OnnxQuant.Runtime;

namespace OnnxQuant.Passes.Curves;

/// <summary>A weight fed to the curve session as a graph input, with its float values.</summary>
public sealed record WeightInput(string Name, long[] Shape, float[] Values);

/// <summary>
/// Measures the distortion of the target features when some weights are replaced, in one ONNX Runtime session whose
/// weights are graph inputs: the float features are computed once and cached, then each configuration is one pass
/// over the samples with the replaced weights fed instead of the float ones (no session per configuration).
/// Distortion = sum over features of ||y_q - y||^2 / ||y||^2, each norm summed over all samples (relative squared
/// error, so features of different scales add up sensibly; 0 means identical).
/// </summary>
public sealed class FeatureDistortion : IDisposable
{
    private readonly InferenceSession _session;
    private readonly List<IReadOnlyList<NamedTensor>> _batches = [];
    private readonly Dictionary<string, NamedTensor> _floatWeights;
    private readonly IReadOnlyList<string> _features;
    private readonly List<float[][]> _reference = [];
    private readonly double[] _referenceEnergy;

    /// <param name="model">The model with every measured weight turned into a graph input of the same name.</param>
    /// <param name="samples">Samples [0, samples) of <paramref name="data"/> are used.</param>
    public FeatureDistortion(byte[] model, CalibrationSet data, int samples, IReadOnlyList<string> features,
        IReadOnlyList<WeightInput> weights, SessionOptions options, int runBatch)
    {
        _session = InferenceSession.Create(model, options);
        _features = features;
        _floatWeights = weights.ToDictionary(w => w.Name, w => new NamedTensor(w.Name, TensorData.FromFloats(w.Values, w.Shape)), StringComparer.Ordinal);
        var step = data.Inputs.All(i => i.BatchIsSymbolic) ? Math.Max(1, runBatch) : 1;
        for (var start = 0; start < samples; start += step)
        {
            var count = Math.Min(step, samples - start);
            _batches.Add(data.Batch(start, count)
                .Select(b => new NamedTensor(b.Name, TensorData.FromBytes(b.DataType, b.Data, b.Shape))).ToList());
        }
        _referenceEnergy = new double[features.Count];
        foreach (var batch in _batches)
        {
            var outputs = Run(batch, null);
            _reference.Add(outputs);
            for (var f = 0; f < outputs.Length; f++)
                _referenceEnergy[f] += System.Numerics.Tensors.TensorPrimitives.Dot(outputs[f], outputs[f]);
        }
        for (var f = 0; f < features.Count; f++)
            if (_referenceEnergy[f] == 0)
                _referenceEnergy[f] = 1; // an all-zero feature: fall back to the absolute squared error
    }

    /// <summary>Number of ONNX Runtime runs one measurement takes.</summary>
    public int RunsPerMeasurement => _batches.Count;

    /// <summary>The float features of every batch (cached), in feature order.</summary>
    public IReadOnlyList<float[][]> Reference => _reference;

    /// <summary>Distortion with <paramref name="replaced"/> weights (name -> values) and the float ones elsewhere.</summary>
    public double Measure(IReadOnlyDictionary<string, float[]> replaced, Action? afterRun = null)
    {
        var error = new double[_features.Count];
        for (var b = 0; b < _batches.Count; b++)
        {
            var outputs = Run(_batches[b], replaced);
            for (var f = 0; f < outputs.Length; f++)
                error[f] += SquaredDistance(outputs[f], _reference[b][f]);
            afterRun?.Invoke();
        }
        double total = 0;
        for (var f = 0; f < error.Length; f++)
            total += error[f] / _referenceEnergy[f];
        return total;
    }

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

    internal static double SquaredDistance(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        if (a.Length != b.Length)
            throw new InvalidOperationException($"feature changed length from {b.Length} to {a.Length} between runs");
        double sum = 0;
        const int chunk = 4096;
        Span<float> diff = stackalloc float[chunk];
        for (var i = 0; i < a.Length; i += chunk)
        {
            var n = Math.Min(chunk, a.Length - i);
            System.Numerics.Tensors.TensorPrimitives.Subtract(a.Slice(i, n), b.Slice(i, n), diff[..n]);
            sum += System.Numerics.Tensors.TensorPrimitives.Dot(diff[..n], diff[..n]);
        }
        return sum;
    }

    public void Dispose() => _session.Dispose();
}
