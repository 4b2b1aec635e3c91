using OnnxQuant.Frontend;
using OnnxQuant.Passes.Calibration;
using OnnxQuant.Runtime;

namespace OnnxQuant.Passes.Verify;

/// <summary>
/// Checks a rewritten model in ONNX Runtime: it must load and run, and its features are compared with the float
/// model's on the verification samples with the curves' metric (sum over features of relative squared error).
/// The float features are computed once and reused for every model measured.
/// </summary>
public sealed class Verifier
{
    private readonly IReadOnlyList<string> _features;
    private readonly List<IReadOnlyList<NamedTensor>> _batches = [];
    private readonly List<float[][]> _reference = [];
    private readonly double[] _energy;
    private readonly SessionOptions _sessionOptions;

    public Verifier(Model floatModel, IReadOnlyList<string> features, CalibrationSet data, int start, int count,
        SessionOptions sessionOptions, int runBatch)
    {
        _features = features;
        _sessionOptions = sessionOptions;
        var step = data.Inputs.All(i => i.BatchIsSymbolic) ? Math.Max(1, runBatch) : 1;
        for (var s = start; s < start + count; s += step)
            _batches.Add(data.Batch(s, Math.Min(step, start + count - s))
                .Select(b => new NamedTensor(b.Name, TensorData.FromBytes(b.DataType, b.Data, b.Shape))).ToList());
        _energy = new double[features.Count];
        foreach (var outputs in RunAll(WithFeatureOutputs(floatModel)))
        {
            _reference.Add(outputs);
            for (var f = 0; f < outputs.Length; f++)
                _energy[f] += System.Numerics.Tensors.TensorPrimitives.Dot(outputs[f], outputs[f]);
        }
        for (var f = 0; f < _energy.Length; f++)
            if (_energy[f] == 0)
                _energy[f] = 1;
        Samples = count;
    }

    public int Samples { get; }

    /// <summary>Measured distortion of <paramref name="quantized"/>'s features against the float model's.</summary>
    public double Measure(Model quantized)
    {
        var error = new double[_features.Count];
        var b = 0;
        foreach (var outputs in RunAll(WithFeatureOutputs(quantized)))
        {
            for (var f = 0; f < outputs.Length; f++)
                error[f] += Curves.FeatureDistortion.SquaredDistance(outputs[f], _reference[b][f]);
            b++;
        }
        return Enumerable.Range(0, error.Length).Sum(f => error[f] / _energy[f]);
    }

    private IEnumerable<float[][]> RunAll(byte[] model)
    {
        using var session = InferenceSession.Create(model, _sessionOptions);
        foreach (var batch in _batches)
            yield return session.Run(batch, _features).Select(o => o.Data.ToFloats()).ToArray();
    }

    /// <summary>The model's bytes with the features as its outputs (intermediate features become outputs).</summary>
    private byte[] WithFeatureOutputs(Model model)
    {
        var graph = model.Graph;
        if (_features.All(f => graph.Outputs.Any(o => o.Name == f)))
            return ModelIO.ToBytes(model);
        var clone = model.Clone();
        foreach (var f in _features)
        {
            var value = clone.Graph.FindValue(f) ?? throw new InvalidOperationException($"feature '{f}' not in the rewritten model");
            if (!value.IsGraphOutput)
            {
                value.Type ??= new TensorType(DataType.Float, null);
                clone.Graph.AddOutput(value);
            }
        }
        return ModelIO.ToBytes(clone);
    }
}
