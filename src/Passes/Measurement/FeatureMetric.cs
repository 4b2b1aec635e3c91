using System.Numerics.Tensors;
using OnnxQuant.Passes.Calibration;
using OnnxQuant.Runtime;

namespace OnnxQuant.Passes.Measurement;

/// <summary>
/// The one distortion metric of the compiler, shared by the error curves and the verification of the output:
/// the sum over features of ||y_q - y||^2 / ||y - mean(y)||^2, each norm summed over all samples and the mean taken
/// over every element of the feature on those samples: the share of the feature's variation that quantization
/// changes, so features of different scales add up sensibly (0 means identical). Centered because a consumer reads
/// the variation, not the offset: a detector's sigmoid boxes have about six times more energy than variance, so an
/// uncentered norm counted their errors six times less than an equally harmful error of the logits. See
/// <see cref="FeatureEnergy"/> for features that do not vary. Each term may carry a weight (named by the user, or
/// measured from the task by <see cref="TaskWeights"/>); without weights every feature counts once.
/// </summary>
public static class FeatureMetric
{
    public const string Description = "sum over features of ||y_q - y||^2 / ||y - mean(y)||^2 (relative squared error against the feature's variation)";

    /// <summary>The metric's description for <paramref name="features"/> with <paramref name="weights"/> (the plain
    /// <see cref="Description"/> without).</summary>
    public static string Describe(IReadOnlyList<string> features, IReadOnlyList<double> weights) =>
        weights.Count == 0 || weights.All(w => w == 1) ? Description
            : "sum over features of w * ||y_q - y||^2 / ||y - mean(y)||^2 (relative squared error against the feature's variation, weighted: " +
              string.Join(", ", features.Select((f, i) => $"{f} {weights[i].ToString("R", System.Globalization.CultureInfo.InvariantCulture)}")) + ")";

    /// <summary>Feature <paramref name="index"/>'s weight in the sum: 1 without weights.</summary>
    public static double Weight(IReadOnlyList<double>? weights, int index) => weights is null || weights.Count == 0 ? 1 : weights[index];

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
/// The denominator of <see cref="FeatureMetric"/> for one feature, accumulated over float outputs in the order they
/// arrive (sums in double). A feature that does not vary (a constant output) falls back to its plain energy
/// ||y||^2, and one that is zero everywhere to 1 (the absolute squared error).
/// </summary>
public sealed class FeatureEnergy
{
    private const int Chunk = 4096;
    // Sums of (y - shift) and its square: with the shift near the mean they stay on the scale of the variation, so
    // an offset large against the spread (boxes around 0.3, a feature around 1000) cancels nothing in float chunks.
    private double? _shift;
    private double _sum;
    private double _squares;
    private long _elements;

    public void Add(ReadOnlySpan<float> values, int samples)
    {
        Samples += samples;
        if (values.IsEmpty)
            return;
        _shift ??= TensorPrimitives.Sum(values[..Math.Min(Chunk, values.Length)]) / Math.Min(Chunk, values.Length);
        var shift = (float)_shift.Value;
        Span<float> shifted = stackalloc float[Chunk];
        for (var i = 0; i < values.Length; i += Chunk)
        {
            var n = Math.Min(Chunk, values.Length - i);
            TensorPrimitives.Subtract(values.Slice(i, n), shift, shifted[..n]);
            _sum += TensorPrimitives.Sum(shifted[..n]);
            _squares += TensorPrimitives.Dot(shifted[..n], shifted[..n]);
        }
        _elements += values.Length;
    }

    /// <summary>Samples added so far.</summary>
    public int Samples { get; private set; }

    /// <summary>||y - mean(y)||^2 over everything added (see the class for the fallbacks).</summary>
    public double Total
    {
        get
        {
            if (_elements == 0)
                return 1;
            var shift = (double)(float)_shift!.Value;
            var centered = Math.Max(0, _squares - _sum * _sum / _elements);
            var plain = _squares + 2 * shift * _sum + _elements * shift * shift;
            // A variation under 1e-10 of the plain energy is float rounding of a constant feature (one ulp of a float
            // is 6e-8 of it, squared 4e-15), not a signal to measure errors against.
            if (centered > 1e-10 * plain)
                return centered;
            return plain > 0 ? plain : 1;
        }
    }

    /// <summary><see cref="Total"/> per sample added.</summary>
    public double PerSample => Total / Math.Max(1, Samples);
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
    /// <param name="weights">Each feature's weight in the sum (feature order); null = 1 each.</param>
    public FeatureReference(IReadOnlyList<string> features, CalibrationSet data, int start, int count, int runBatch,
        Func<IReadOnlyList<NamedTensor>, float[][]> runFloat, IReadOnlyList<double>? weights = null)
    {
        Features = features;
        Samples = count;
        Runs = data.Runs(start, count, runBatch).Select(r => (IReadOnlyList<NamedTensor>)r.Inputs.Select(b => b.ToNamedTensor()).ToList()).ToList();
        var energy = features.Select(_ => new FeatureEnergy()).ToArray();
        foreach (var run in Runs)
        {
            var outputs = runFloat(run);
            _reference.Add(outputs);
            for (var f = 0; f < outputs.Length; f++)
                energy[f].Add(outputs[f], 1);
        }
        // A feature of weight w counts its error w times: its denominator is divided by w.
        _energy = energy.Select((e, f) => e.Total / FeatureMetric.Weight(weights, f)).ToArray();
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
