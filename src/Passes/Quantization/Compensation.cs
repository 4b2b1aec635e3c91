using System.Numerics.Tensors;

namespace OnnxQuant.Passes.Quantization;

/// <summary>What compensates the rounding error of quantized weights (the curves and the rewrite apply the same).</summary>
[Flags]
public enum Compensation
{
    /// <summary>Round to nearest with the MSE-chosen scale.</summary>
    None = 0,
    /// <summary>The expected output shift <c>(W_q - W) E[x]</c> folded into the layer's bias.</summary>
    Bias = 1,
    /// <summary>Second-order rounding: columns quantized in order, each error pushed onto the rest through S^-1.</summary>
    Gptq = 2,
    /// <summary>Both.</summary>
    All = Bias | Gptq,
}

/// <summary>
/// The statistics of a layer's input rows (a token for MatMul/Gemm, an im2col patch for Conv) that compensation needs:
/// the second-moment matrix <c>S = E[x x^T]</c> (row-major, <see cref="Reduction"/>^2) and the mean <c>E[x]</c>. Output
/// channel c reads the slice [<see cref="Offset"/>(c), + <see cref="RowLength"/>) of a row (a group's slice for a
/// grouped Conv; the whole row otherwise). The mean is computed at once; S, the expensive part, when first read.
/// </summary>
public sealed class InputStatistics
{
    private readonly Func<double[]> _computeSecond;
    private double[]? _second;

    public InputStatistics(int reduction, Func<double[]> second, double[] mean, int rowLength, int channelsPerGroup, int rows)
    {
        Reduction = reduction;
        _computeSecond = second;
        Mean = mean;
        RowLength = rowLength;
        ChannelsPerGroup = channelsPerGroup;
        Rows = rows;
    }

    public int Reduction { get; }
    public double[] Mean { get; }
    public int RowLength { get; }
    public int ChannelsPerGroup { get; }
    public int Rows { get; }

    public double[] Second
    {
        get
        {
            lock (_computeSecond)
                return _second ??= _computeSecond();
        }
    }

    public int Offset(int channel) => channel / ChannelsPerGroup * RowLength;

    private readonly Dictionary<int, float[]?> _factors = [];

    /// <summary>The inverse factor of the slice at <paramref name="offset"/>, computed once (every width reuses it).</summary>
    internal float[]? Factor(int offset, Func<float[]?> compute)
    {
        lock (_factors)
        {
            if (!_factors.TryGetValue(offset, out var u))
                _factors[offset] = u = compute();
            return u;
        }
    }

    /// <summary>S and the mean of <paramref name="rows"/> (each <paramref name="reduction"/> long).</summary>
    public static InputStatistics FromRows(IReadOnlyList<float[]> rows, int reduction, int rowLength, int channelsPerGroup)
    {
        if (rows.Count == 0)
            throw new ArgumentException("no input rows", nameof(rows));
        // 6 significant digits, as every measured number that drives a decision: the rows come from ONNX Runtime, whose
        // last bits differ between thread counts and CPUs.
        return new InputStatistics(reduction, () => DenseSpd.Moments(rows, reduction, threads: 0).Second.Select(StableRounding.Round).ToArray(),
            DenseSpd.Mean(rows, reduction).Select(StableRounding.Round).ToArray(), rowLength, channelsPerGroup, rows.Count);
    }
}

/// <summary>
/// Each layer's weight quantized at each width, computed once and shared by the curves (every width) and every rewrite
/// (the allocated widths, the uniform baseline, repairs), up to a memory budget: second-order rounding of a large layer
/// costs seconds, picking its channels from stored widths nothing. Channels are quantized independently, so a mix of
/// widths is exactly the stored widths' channels side by side.
/// </summary>
public sealed class CompensationMemo(long budgetBytes)
{
    private readonly Dictionary<(string Layer, int Bits, string Layout, bool Gptq), WeightQuantization> _entries = [];
    private long _bytes;

    public WeightQuantization Quantize(string layer, float[] weight, WeightLayout layout, int[] channelBits, Func<InputStatistics?> statistics, bool gptq)
    {
        var distinct = channelBits.Distinct().Order().ToArray();
        var byBits = distinct.ToDictionary(b => b, b => Uniform(layer, weight, layout, b, statistics, gptq));
        return distinct.Length == 1 ? byBits[distinct[0]] : Compensator.Compose(weight, layout, channelBits, byBits);
    }

    private WeightQuantization Uniform(string layer, float[] weight, WeightLayout layout, int bits, Func<InputStatistics?> statistics, bool gptq)
    {
        var key = (layer, bits, $"{string.Join("x", layout.Shape)}/{layout.ChannelAxis}/{layout.BlockSize}", gptq);
        lock (_entries)
        {
            if (_entries.TryGetValue(key, out var found))
                return found;
        }
        var computed = Compensator.Quantize(weight, layout, Enumerable.Repeat(bits, layout.Channels).ToArray(), gptq ? statistics() : null, gptq);
        lock (_entries)
        {
            var size = computed.Values.LongLength + computed.Scales.LongLength * sizeof(float);
            if (_bytes + size <= budgetBytes && _entries.TryAdd(key, computed))
                _bytes += size;
        }
        return computed;
    }
}

/// <summary>
/// Input statistics computed on demand per layer and kept up to a memory budget: S and its inverse factor are
/// reduction^2 doubles each (170 MB for a 3x3 Conv over 512 channels), too much to hold for every layer of a large
/// model at once. The least recently used layers are dropped first and recomputed when asked for again.
/// </summary>
public sealed class InputStatisticsCache(Func<string, InputStatistics?> compute, long budgetBytes)
{
    private readonly Dictionary<string, InputStatistics?> _entries = new(StringComparer.Ordinal);
    private readonly LinkedList<string> _order = new();
    private long _bytes;

    public InputStatistics? Find(string layer)
    {
        lock (_entries)
        {
            if (_entries.TryGetValue(layer, out var found))
            {
                _order.Remove(layer);
                _order.AddLast(layer);
                return found;
            }
            var statistics = compute(layer);
            var size = Size(statistics);
            while (_order.First is { } oldest && _bytes + size > budgetBytes)
            {
                _bytes -= Size(_entries[oldest.Value]);
                _entries.Remove(oldest.Value);
                _order.RemoveFirst();
            }
            _entries[layer] = statistics;
            _order.AddLast(layer);
            _bytes += size;
            return statistics;
        }
    }

    // S and, once second-order rounding ran, its factor.
    private static long Size(InputStatistics? s) => s is null ? 0 : 2L * s.Reduction * s.Reduction * sizeof(double);
}

/// <summary>
/// Weight quantization with error compensation, shared by the curves and the rewrite so the solver sees the cost of the
/// weights that are written.
/// <list type="bullet">
/// <item>Second-order rounding (GPTQ, Frantar et al. 2023): for every output channel, the weights w_0..w_{L-1} of its
/// input slice are quantized in order; after w_j, the error e = (w_j - Q(w_j)) / U_jj is subtracted from the later
/// weights as <c>w_t -= e * U_jt</c>, U the upper Cholesky factor of <c>(S + lambda I)^-1</c> over the slice,
/// <c>lambda = 0.01 * mean(diag S)</c>. This minimises the layer-output error <c>tr(dW S dW^T)</c> greedily instead
/// of the weight error. Per-channel scales come from the float weights (MSE clipping, as without compensation); blocked
/// scales are chosen when their block is reached, from the updated weights. Channels are independent, so each keeps
/// its own width.</item>
/// <item>Bias correction: <see cref="OutputShift"/> is <c>(W_q - W) E[x]</c> per output channel; subtracting it
/// from the bias removes the mean output error, leaving <c>E||dW (x - E[x])||^2</c>.</item>
/// </list>
/// </summary>
public static class Compensator
{
    /// <summary>GPTQ's dampening, a fraction of the mean diagonal of S.</summary>
    public const double Dampening = 0.01;

    public static string Name(Compensation c) => c switch
    {
        Compensation.None => "none",
        Compensation.Bias => "bias",
        Compensation.Gptq => "gptq",
        Compensation.All => "all",
        _ => c.ToString().ToLowerInvariant(),
    };

    public static Compensation Parse(string text) => text.ToLowerInvariant() switch
    {
        "none" => Compensation.None,
        "bias" => Compensation.Bias,
        "gptq" => Compensation.Gptq,
        "all" => Compensation.All,
        _ => throw new ArgumentException($"--compensation {text}: expected none, bias, gptq or all"),
    };

    /// <summary>
    /// Quantizes every output channel at its own width (<paramref name="channelBits"/>), with second-order rounding when
    /// <paramref name="gptq"/> and <paramref name="statistics"/> are given, else round to nearest.
    /// </summary>
    public static WeightQuantization Quantize(float[] weight, WeightLayout layout, int[] channelBits, InputStatistics? statistics, bool gptq)
    {
        if (channelBits.Length != layout.Channels)
            throw new ArgumentException($"{channelBits.Length} widths for {layout.Channels} channels", nameof(channelBits));
        if (!gptq || statistics is null)
            return RoundToNearest(weight, layout, channelBits);
        var rowLayout = new WeightLayout(layout.Shape, layout.ChannelAxis);
        if (rowLayout.BlockLength != statistics.RowLength)
            throw new ArgumentException($"a channel holds {rowLayout.BlockLength} weights, the input statistics slices of {statistics.RowLength}");
        if (layout.BlockSize > 0 && layout.Shape.Length != 2)
            throw new ArgumentException("blocked second-order rounding needs a 2-D weight");
        var values = new sbyte[weight.Length];
        var scales = new float[layout.Channels * layout.BlocksPerChannel];
        var length = statistics.RowLength;
        // The factors first, outside the parallel loop: the factorization parallelizes inside, and pool threads blocked on a
        // shared factor would starve it.
        var factors = Enumerable.Range(0, layout.Channels).Select(statistics.Offset).Distinct()
            .ToDictionary(o => o, o => statistics.Factor(o, () => InverseFactor(statistics, o, length) is { } u ? Array.ConvertAll(u, v => (float)v) : null) ?? []);
        // Each channel is computed on its own in a fixed order, so the result does not depend on the thread count. A
        // group of channels walks the columns together, so each row of the factor is read from memory once per group
        // instead of once per channel (the factor of a 3x3 Conv over 512 channels is 170 MB).
        const int group = 16;
        Parallel.For(0, (layout.Channels + group - 1) / group, g =>
        {
            var first = g * group;
            var channels = Enumerable.Range(first, Math.Min(group, layout.Channels - first)).Select(c =>
            {
                var row = new float[length];
                var indices = new int[length];
                rowLayout.GatherBlock(weight, c, 0, row, indices);
                var scale = layout.BlockSize > 0 ? 0f : QuantMath.MseOptimalScale(row, channelBits[c]);
                if (layout.BlockSize == 0)
                    scales[c] = scale;
                return new ChannelState(c, factors[statistics.Offset(c)], row, indices, channelBits[c], scale);
            }).ToList();
            for (var j = 0; j < length; j++)
                foreach (var state in channels)
                    state.Step(j, layout, values, scales);
        });
        return new WeightQuantization(channelBits.Max(), layout, values, scales);
    }

    /// <summary>Fake quantization (quantize, dequantize) of every channel at <paramref name="bits"/>.</summary>
    public static float[] FakeQuantize(float[] weight, WeightLayout layout, int bits, InputStatistics? statistics, bool gptq) =>
        Quantize(weight, layout, Enumerable.Repeat(bits, layout.Channels).ToArray(), statistics, gptq).Dequantize();

    /// <summary>Per output channel: <c>(W_q - W) E[x]</c>, the mean change of that output the quantization causes.</summary>
    public static double[] OutputShift(float[] weight, float[] dequantized, WeightLayout layout, InputStatistics statistics)
    {
        var rowLayout = new WeightLayout(layout.Shape, layout.ChannelAxis);
        var shift = new double[layout.Channels];
        var length = rowLayout.BlockLength;
        var row = new float[length];
        var quantized = new float[length];
        var indices = new int[length];
        for (var c = 0; c < layout.Channels; c++)
        {
            rowLayout.GatherBlock(weight, c, 0, row, indices);
            rowLayout.GatherBlock(dequantized, c, 0, quantized, indices);
            var offset = statistics.Offset(c);
            double sum = 0;
            for (var j = 0; j < length; j++)
                sum += ((double)quantized[j] - row[j]) * statistics.Mean[offset + j];
            shift[c] = sum;
        }
        return shift;
    }

    /// <summary><c>tr(dW S dW^T)</c> (over all channels) for the error dW = <paramref name="dequantized"/> - <paramref name="weight"/>;
    /// with <paramref name="centered"/>, the covariance instead of S (the error left after bias correction).</summary>
    public static double LocalError(float[] weight, float[] dequantized, WeightLayout layout, InputStatistics statistics, bool centered)
    {
        var rowLayout = new WeightLayout(layout.Shape, layout.ChannelAxis);
        var length = rowLayout.BlockLength;
        var row = new float[length];
        var quantized = new float[length];
        var indices = new int[length];
        var n = statistics.Reduction;
        double total = 0;
        for (var c = 0; c < layout.Channels; c++)
        {
            rowLayout.GatherBlock(weight, c, 0, row, indices);
            rowLayout.GatherBlock(dequantized, c, 0, quantized, indices);
            var offset = statistics.Offset(c);
            var d = new double[length];
            for (var j = 0; j < length; j++)
                d[j] = (double)quantized[j] - row[j];
            double sum = 0, mean = 0;
            for (var i = 0; i < length; i++)
            {
                double inner = 0;
                for (var j = 0; j < length; j++)
                    inner += statistics.Second[(offset + i) * n + offset + j] * d[j];
                sum += d[i] * inner;
                mean += d[i] * statistics.Mean[offset + i];
            }
            total += centered ? sum - mean * mean : sum;
        }
        return total;
    }

    /// <summary>Upper Cholesky factor U of (S + lambda I)^-1 over one slice (row-major), or null when S is zero there.</summary>
    private static double[]? InverseFactor(InputStatistics statistics, int offset, int length)
    {
        var n = statistics.Reduction;
        var h = new double[(long)length * length];
        double trace = 0;
        for (var i = 0; i < length; i++)
            trace += statistics.Second[(long)(offset + i) * n + offset + i];
        var meanDiagonal = trace / length;
        if (!(meanDiagonal > 0) || !double.IsFinite(meanDiagonal))
            return null;
        for (var i = 0; i < length; i++)
        {
            Array.Copy(statistics.Second, (long)(offset + i) * n + offset, h, (long)i * length, length);
            // A column whose input is always zero carries no error; a unit diagonal keeps the factor defined.
            if (h[(long)i * length + i] <= 0)
                h[(long)i * length + i] = meanDiagonal;
            h[(long)i * length + i] += Dampening * meanDiagonal;
        }
        // Not positive definite even damped: null, and the caller rounds to nearest.
        return DenseSpd.InverseUpperFactor(h, length, threads: 0);
    }

    /// <summary>One output channel's second-order rounding, one column at a time.</summary>
    /// <remarks>In single precision, as GPTQ itself: the factor is computed in double, the column updates (out x L^2 / 2
    /// multiply-adds per width, the bulk of the work) run twice as wide in float.</remarks>
    private sealed class ChannelState(int channel, float[] u, float[] w, int[] indices, int bits, float scale)
    {
        private readonly int _qmin = QuantMath.SignedMin(bits), _qmax = QuantMath.SignedMax(bits);
        private float _scale = scale;

        public void Step(int j, WeightLayout layout, sbyte[] values, float[] scales)
        {
            var length = w.Length;
            if (layout.BlockSize > 0 && j % layout.BlockSize == 0)
            {
                var end = Math.Min(length, j + layout.BlockSize);
                var block = new float[end - j];
                for (var t = j; t < end; t++)
                    block[t - j] = w[t];
                _scale = QuantMath.MseOptimalScale(block, bits);
                scales[channel * layout.BlocksPerChannel + j / layout.BlockSize] = _scale;
            }
            var q = Math.Clamp(MathF.Round(w[j] / _scale, MidpointRounding.ToEven), _qmin, _qmax);
            values[indices[j]] = (sbyte)q;
            if (u.Length == 0)
                return;
            var error = (w[j] - q * _scale) / u[j * length + j];
            var rest = w.AsSpan(j + 1);
            TensorPrimitives.MultiplyAdd(u.AsSpan(j * length + j + 1, length - j - 1), -error, rest, rest);
        }
    }

    private static WeightQuantization RoundToNearest(float[] weights, WeightLayout layout, int[] channelBits)
    {
        var distinct = channelBits.Distinct().OrderBy(b => b).ToArray();
        if (distinct.Length == 1)
            return QuantMath.QuantizeWeight(weights, layout, distinct[0]);
        return Compose(weights, layout, channelBits, distinct.ToDictionary(b => b, b => QuantMath.QuantizeWeight(weights, layout, b)));
    }

    /// <summary>Every channel's values and scales taken from the quantization at its own width.</summary>
    internal static WeightQuantization Compose(float[] weights, WeightLayout layout, int[] channelBits, IReadOnlyDictionary<int, WeightQuantization> byBits)
    {
        var values = new sbyte[weights.Length];
        var scales = new float[layout.Channels * layout.BlocksPerChannel];
        var buffer = new float[layout.BlockLength];
        var indices = new int[layout.BlockLength];
        for (var c = 0; c < layout.Channels; c++)
        {
            var q = byBits[channelBits[c]];
            for (var blk = 0; blk < layout.BlocksPerChannel; blk++)
            {
                scales[c * layout.BlocksPerChannel + blk] = q.Scales[c * layout.BlocksPerChannel + blk];
                var n = layout.GatherBlock(weights, c, blk, buffer, indices);
                for (var i = 0; i < n; i++)
                    values[indices[i]] = q.Values[indices[i]];
            }
        }
        return new WeightQuantization(channelBits.Max(), layout, values, scales);
    }
}
