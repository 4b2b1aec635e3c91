using System.Numerics.Tensors;
using OnnxQuant.Passes.Calibration;
using OnnxQuant.Runtime;

namespace OnnxQuant.Passes.Measurement;

/// <summary>
/// The one distortion metric of the compiler, shared by the error curves and the verification of the output:
/// the sum over features of ||y_q - y||^2 / ||y||^2, each norm summed over all samples (relative squared error, so
/// features of different scales add up sensibly; 0 means identical). A feature that is zero everywhere falls back to
/// the absolute squared error.
/// </summary>
public static class FeatureMetric
{
    public const string Description = "sum over features of ||y_q - y||^2 / ||y||^2 (relative squared error)";

    /// <summary>||a - b||^2, accumulated in double over float chunks.</summary>
    public static double SquaredDistance(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        if (a.Length != b.Length)
            throw new InvalidOperationException($"feature changed length from {b.Length} to {a.Length} between runs");
        double sum = 0;
        const int chunk = 4096;
        Span<float> diff = stackalloc float[chunk];
        for (var i = 0; i < a.Length; i += chunk)
        {
            var n = Math.Min(chunk, a.Length - i);
            TensorPrimitives.Subtract(a.Slice(i, n), b.Slice(i, n), diff[..n]);
            sum += TensorPrimitives.Dot(diff[..n], diff[..n]);
        }
        return sum;
    }
}

/// <summary>
/// The float features of a fixed set of sample runs, computed once, and the metric of any other model's features
/// against them. The runs follow <see cref="CalibrationSet.Runs"/>, the one batching rule.
/// </summary>
public sealed class FeatureReference
{
    private readonly List<float[][]> _reference = [];
    private readonly double[] _energy;

    /// <param name="runFloat">Runs the float model on one run's inputs and returns the features in order.</param>
    public FeatureReference(IReadOnlyList<string> features, CalibrationSet data, int start, int count, int runBatch,
        Func<IReadOnlyList<NamedTensor>, float[][]> runFloat)
    {
        Features = features;
        Samples = count;
        Runs = data.Runs(start, count, runBatch).Select(r => (IReadOnlyList<NamedTensor>)r.Inputs.Select(b => b.ToNamedTensor()).ToList()).ToList();
        _energy = new double[features.Count];
        foreach (var run in Runs)
        {
            var outputs = runFloat(run);
            _reference.Add(outputs);
            for (var f = 0; f < outputs.Length; f++)
                _energy[f] += TensorPrimitives.Dot(outputs[f], outputs[f]);
        }
        for (var f = 0; f < _energy.Length; f++)
            if (_energy[f] == 0)
                _energy[f] = 1;
    }

    public IReadOnlyList<string> Features { get; }

    /// <summary>Samples covered by <see cref="Runs"/>.</summary>
    public int Samples { get; }

    /// <summary>The inputs of every run, in order.</summary>
    public IReadOnlyList<IReadOnlyList<NamedTensor>> Runs { get; }

    /// <summary>The float features of every run (in feature order).</summary>
    public IReadOnlyList<float[][]> Reference => _reference;

    /// <summary>The metric of <paramref name="outputs"/> (one entry per run, in run order) against the float features.</summary>
    public double Distortion(IEnumerable<float[][]> outputs)
    {
        var error = new double[_energy.Length];
        var run = 0;
        foreach (var output in outputs)
        {
            for (var f = 0; f < output.Length; f++)
                error[f] += FeatureMetric.SquaredDistance(output[f], _reference[run][f]);
            run++;
        }
        if (run != _reference.Count)
            throw new InvalidOperationException($"{run} runs measured against {_reference.Count} reference runs");
        double total = 0;
        for (var f = 0; f < error.Length; f++)
            total += error[f] / _energy[f];
        return total;
    }
}
