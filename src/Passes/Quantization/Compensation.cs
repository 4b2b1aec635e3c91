using System.Runtime.CompilerServices;
using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

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
/// the second-moment matrix <c>S = E[x x^T]</c> and the mean <c>E[x]</c>. Output channel c reads the slice
/// [<see cref="Offset"/>(c), + <see cref="RowLength"/>) of a row (a group's slice for a grouped Conv; the whole row
/// otherwise), so only S's diagonal blocks over the slices are ever read, and only they are kept: <see cref="Second"/>
/// holds one <see cref="RowLength"/>^2 block per slice, row-major, block after block (the whole of S for a layer with
/// one slice). A depthwise convolution of 1,152 channels with 5x5 kernels has rows of 28,800 values, whose whole S
/// would be 6.6 GB, and 1,152 blocks of 25 x 25 hold all it needs. The mean is computed at once; S, the expensive part,
/// when first read.
/// </summary>
public sealed class InputStatistics
{
    private readonly Func<double[]> _computeSecond;
    private double[]? _second;

    public InputStatistics(int reduction, Func<double[]> second, double[] mean, int rowLength, int channelsPerGroup, int rows)
        : this(reduction, _ => second(), mean, rowLength, channelsPerGroup, rows)
    {
    }

    private InputStatistics(int reduction, Func<ShrinkageRecord, double[]> second, double[] mean, int rowLength, int channelsPerGroup, int rows)
    {
        Reduction = reduction;
        _computeSecond = () => second(_shrinkage);
        Mean = mean;
        RowLength = rowLength;
        ChannelsPerGroup = channelsPerGroup;
        Rows = rows;
    }

    public int Reduction { get; }
    public double[] Mean { get; }

    /// <summary>The largest intensity by which a slice's covariance was shrunk toward its diagonal (0 when its rows
    /// outnumber its inputs); known once <see cref="Second"/> has been computed, null before.</summary>
    public double? Shrinkage => _shrinkage.Known ? _shrinkage.Largest : null;

    private readonly ShrinkageRecord _shrinkage = new();
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

    /// <summary>S, handed over to be overwritten (the factorization works in its array): a later read of
    /// <see cref="Second"/> computes it again.</summary>
    internal double[] TakeSecond()
    {
        lock (_computeSecond)
        {
            var second = _second ?? _computeSecond();
            _second = null;
            return second;
        }
    }

    public int Offset(int channel) => channel / ChannelsPerGroup * RowLength;

    /// <summary>Slices of a row: 1 for a dense layer, the groups of a grouped Conv.</summary>
    public int Slices => Reduction / RowLength;

    /// <summary>Where the block of the slice at <paramref name="offset"/> starts in <see cref="Second"/>: S(offset + i,
    /// offset + j) is <c>Second[Block(offset) + i * RowLength + j]</c>.</summary>
    public long Block(int offset) => (long)(offset / RowLength) * RowLength * RowLength;

    private readonly Dictionary<(int Offset, int Block, bool Ordered), SecondOrderFactor?> _factors = [];

    /// <summary>The factor of the slice at <paramref name="offset"/> for blocks of <paramref name="block"/> columns,
    /// computed once (every width and every rewrite reuses it).</summary>
    internal SecondOrderFactor? Factor(int offset, int block, bool ordered, Func<SecondOrderFactor?> compute)
    {
        lock (_factors)
        {
            if (!_factors.TryGetValue((offset, block, ordered), out var u))
                _factors[(offset, block, ordered)] = u = compute();
            return u;
        }
    }

    /// <summary>S's blocks and the mean of <paramref name="rows"/> (each <paramref name="reduction"/> long, in slices of
    /// <paramref name="rowLength"/>); with <paramref name="shrink"/>, each block's covariance shrunk toward its diagonal
    /// by what the rows cannot support (<see cref="ShrinkageIntensity"/>).</summary>
    public static InputStatistics FromRows(IReadOnlyList<float[]> rows, int reduction, int rowLength, int channelsPerGroup, bool shrink = true)
    {
        if (rows.Count == 0)
            throw new ArgumentException("no input rows", nameof(rows));
        if (rowLength <= 0 || reduction % rowLength != 0)
            throw new ArgumentException($"rows of {reduction} values do not split into slices of {rowLength}", nameof(rowLength));
        // 6 significant digits, as every measured number that drives a decision: the rows come from ONNX Runtime, whose
        // last bits differ between thread counts and CPUs.
        return new InputStatistics(reduction, record => SecondBlocks(rows, reduction, rowLength, shrink, record),
            DenseSpd.Mean(rows, reduction).Select(StableRounding.Round).ToArray(), rowLength, channelsPerGroup, rows.Count);
    }

    // Each entry is one multiply-add chain over the rows in order, so a block equals the same entries of the whole S.
    private static double[] SecondBlocks(IReadOnlyList<float[]> rows, int reduction, int rowLength, bool shrink, ShrinkageRecord record)
    {
        if (rowLength == reduction)
        {
            var (second, mean) = DenseSpd.Moments(rows, reduction, threads: 0, StableRounding.Round);
            record.Set(shrink ? ShrinkOffDiagonal(second, 0, rowLength, rows, mean) : 0);
            return second;
        }
        var blockSize = (long)rowLength * rowLength;
        var blocks = new double[reduction / rowLength * blockSize];
        var slice = rows.Select(_ => new float[rowLength]).ToArray();
        double largest = 0;
        for (var g = 0; g < reduction / rowLength; g++)
        {
            for (var r = 0; r < rows.Count; r++)
                Array.Copy(rows[r], g * rowLength, slice[r], 0, rowLength);
            var (second, mean) = DenseSpd.Moments(slice, rowLength, threads: 0, StableRounding.Round);
            Array.Copy(second, 0, blocks, g * blockSize, blockSize);
            largest = Math.Max(largest, shrink ? ShrinkOffDiagonal(blocks, g * blockSize, rowLength, slice, mean) : 0);
        }
        record.Set(largest);
        return blocks;
    }

    /// <summary>What the shrinking did to S's slices, set when S is computed: a recomputation of S sets the same value,
    /// so once known it never changes.</summary>
    private sealed class ShrinkageRecord
    {
        private double _largest;
        private volatile bool _known;

        public bool Known => _known;
        public double Largest => _largest;

        public void Set(double largest)
        {
            _largest = largest;
            _known = true;
        }
    }

    /// <summary>
    /// When <paramref name="rows"/> are fewer than the n inputs of the block at <paramref name="start"/> (S singular),
    /// shrinks the off-diagonal entries of its covariance (S less the mean's outer product) toward zero by the
    /// intensity <see cref="ShrinkageIntensity"/> estimates from the same rows; the diagonal and the mean's part stay.
    /// </summary>
    /// <remarks>
    /// S comes from a few hundred rows, while a wide layer's rows are longer than that (a 3x3 convolution over 512
    /// channels: 4,608 values): S is then singular, and second-order rounding moves the rounding error into the
    /// directions those rows never visited, where fresh inputs do: on DETR-R50, 16 of 153 layers (the 3x3 convolutions
    /// of the last two stages among them) measured over 5x the output error their rows predicted. Shrinking toward the
    /// diagonal (the estimate that keeps each input's energy and trusts no correlation the rows cannot support) bounds
    /// that, by an amount the rows themselves decide. With at least as many rows as inputs S has no such directions and
    /// the dampening suffices: shrinking those layers too moved the bundled DETR's 3-bit box AP by -0.8 (within its
    /// allocations' spread, but nothing gained), so only under-determined slices are shrunk.
    /// </remarks>
    private static double ShrinkOffDiagonal(double[] second, long start, int n, IReadOnlyList<float[]> rows, double[] mean)
    {
        if (rows.Count >= n)
            return 0;
        var alpha = ShrinkageIntensity(second, start, n, rows, mean);
        if (alpha <= 0)
            return 0;
        var keep = 1 - alpha;
        for (var i = 0; i < n; i++)
            for (var j = 0; j < n; j++)
                if (i != j)
                {
                    var at = start + (long)i * n + j;
                    var product = mean[i] * mean[j];
                    second[at] = product + keep * (second[at] - product);
                }
        return alpha;
    }

    /// <summary>
    /// The share of the off-diagonal energy of the covariance C = S - mu mu^T that is sampling noise,
    /// sum_{i != j} Var(c_ij) / sum_{i != j} c_ij^2 in [0, 1] (the Ledoit-Wolf intensity for a diagonal target),
    /// rounded to 6 significant digits. The mean's own outer product is kept whole: it is estimated far better than the
    /// covariance, and left in it dominates the off-diagonal energy of rows after a ReLU and hides the noise. With
    /// z = x - mu and y = z_i z_j, Var(c_ij) is estimated as (mean_r y^2 - c_ij^2) / (m - 1), summed over i != j
    /// without forming y: sum_{i != j} z_i^2 z_j^2 = (sum_i z_i^2)^2 - sum_i z_i^4 per row, one pass over the rows.
    /// Sums run in row and column order, so it does not depend on the thread count.
    /// </summary>
    public static double ShrinkageIntensity(double[] second, long start, int n, IReadOnlyList<float[]> rows) =>
        ShrinkageIntensity(second, start, n, rows, DenseSpd.Mean(rows, n));

    private static double ShrinkageIntensity(double[] second, long start, int n, IReadOnlyList<float[]> rows, double[] mean)
    {
        var m = rows.Count;
        if (m < 2 || n < 2)
            return 0;
        double fourth = 0;
        foreach (var row in rows)
        {
            double squares = 0, quartics = 0;
            for (var i = 0; i < n; i++)
            {
                var z = row[i] - mean[i];
                var z2 = z * z;
                squares += z2;
                quartics += z2 * z2;
            }
            fourth += squares * squares - quartics;
        }
        fourth /= m;
        double offDiagonal = 0;
        for (var i = 0; i < n; i++)
            for (var j = 0; j < n; j++)
                if (i != j)
                {
                    var c = second[start + (long)i * n + j] - mean[i] * mean[j];
                    offDiagonal += c * c;
                }
        if (!(offDiagonal > 0) || !double.IsFinite(fourth))
            return 0;
        var noise = Math.Max(0, fourth - offDiagonal) / (m - 1);
        return StableRounding.Round(Math.Clamp(noise / offDiagonal, 0, 1));
    }
}

/// <summary>
/// Each layer's weight quantized at each width, computed once and shared by the curves (every width) and every rewrite
/// (the allocated widths, the uniform baseline, repairs), in memory up to a budget and on disk beyond it: second-order rounding of a large layer
/// costs seconds, picking its channels from stored widths nothing. Channels are quantized independently, so a mix of
/// widths is exactly the stored widths' channels side by side.
/// </summary>
public sealed class CompensationMemo(long budgetBytes) : IDisposable
{
    // Beyond the in-memory budget an entry's integer values go to a file in a private temporary folder (its scales and
    // output errors stay in memory): a width is never computed twice, and the memo costs the budget whatever the model.
    private readonly Dictionary<(string Layer, int Bits, string Layout, bool Gptq), WeightQuantization> _entries = [];
    private readonly Dictionary<(string Layer, int Bits, string Layout, bool Gptq), (string Path, WeightQuantization Stub)> _spilled = [];
    private string? _folder;
    private long _bytes;

    /// <summary>Bytes of integer values held in memory, and written to the spill folder.</summary>
    public long MemoryBytes => _bytes;
    public long SpilledBytes { get; private set; }

    public WeightQuantization Quantize(string layer, float[] weight, WeightLayout layout, int[] channelBits, Func<InputStatistics?> statistics, bool gptq)
    {
        var distinct = channelBits.Distinct().Order().ToArray();
        var byBits = distinct.ToDictionary(b => b, b => Uniform(layer, weight, layout, b, statistics, gptq));
        return distinct.Length == 1 ? byBits[distinct[0]] : Compensator.Compose(weight, layout, channelBits, byBits);
    }

    /// <summary>Computes every width of <paramref name="widths"/> not stored yet in one pass (they share each read of
    /// the factor), and stores them.</summary>
    public void Prepare(string layer, float[] weight, WeightLayout layout, IReadOnlyList<int> widths, Func<InputStatistics?> statistics, bool gptq, int threads)
    {
        List<int> missing;
        lock (_entries)
            missing = widths.Distinct().Order().Where(b => !_entries.ContainsKey(Key(layer, b, layout, gptq)) && !_spilled.ContainsKey(Key(layer, b, layout, gptq))).ToList();
        if (missing.Count == 0)
            return;
        var computed = Compensator.QuantizeWidths(weight, layout, missing, gptq ? statistics() : null, threads);
        for (var k = 0; k < missing.Count; k++)
            Store(Key(layer, missing[k], layout, gptq), computed[k]);
    }

    private readonly Dictionary<string, string> _aliases = new(StringComparer.Ordinal);

    /// <summary>Layers whose weights and statistics are those of another (tied layers) take its entries.</summary>
    public void Alias(string layer, string sameAs)
    {
        lock (_entries)
            _aliases[layer] = sameAs;
    }

    private (string, int, string, bool) Key(string layer, int bits, WeightLayout layout, bool gptq) =>
        (_aliases.GetValueOrDefault(layer, layer), bits, $"{string.Join("x", layout.Shape)}/{layout.ChannelAxis}/{layout.BlockSize}", gptq);

    /// <summary>The stored entry (read back from its file when spilled), or null. Callers hold the lock.</summary>
    private WeightQuantization? Find((string, int, string, bool) key)
    {
        if (_entries.TryGetValue(key, out var found))
            return found;
        if (!_spilled.TryGetValue(key, out var spilled))
            return null;
        var values = new sbyte[new FileInfo(spilled.Path).Length];
        using (var file = File.OpenRead(spilled.Path))
            file.ReadExactly(System.Runtime.InteropServices.MemoryMarshal.AsBytes(values.AsSpan()));
        return spilled.Stub with { Values = values };
    }

    private void Store((string, int, string, bool) key, WeightQuantization computed)
    {
        lock (_entries)
        {
            if (_entries.ContainsKey(key) || _spilled.ContainsKey(key))
                return;
            var size = computed.Values.LongLength + computed.Scales.LongLength * sizeof(float);
            if (_bytes + size <= budgetBytes)
            {
                _entries[key] = computed;
                _bytes += size;
                return;
            }
            _folder ??= OnnxQuant.Passes.Pipeline.ScratchFolder.Create("memo");
            var path = Path.Combine(_folder, $"{_spilled.Count}.bin");
            File.WriteAllBytes(path, System.Runtime.InteropServices.MemoryMarshal.AsBytes(computed.Values.AsSpan()));
            _spilled[key] = (path, computed with { Values = [] });
            SpilledBytes += computed.Values.LongLength;
        }
    }

    private WeightQuantization Uniform(string layer, float[] weight, WeightLayout layout, int bits, Func<InputStatistics?> statistics, bool gptq)
    {
        var key = Key(layer, bits, layout, gptq);
        lock (_entries)
        {
            if (Find(key) is { } found)
                return found;
        }
        var computed = Compensator.Quantize(weight, layout, Enumerable.Repeat(bits, layout.Channels).ToArray(), gptq ? statistics() : null, gptq);
        Store(key, computed);
        return computed;
    }

    public void Dispose()
    {
        lock (_entries)
        {
            _entries.Clear();
            _spilled.Clear();
            if (_folder is not null && Directory.Exists(_folder))
                Directory.Delete(_folder, true);
            _folder = null;
        }
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

    // S (doubles) and, once second-order rounding ran, its factor (about half a square of floats per slice).
    private static long Size(InputStatistics? s) => s is null ? 0 : (long)s.Reduction * s.RowLength * (sizeof(double) + sizeof(float));
}

/// <summary>
/// Weight quantization with error compensation, shared by the curves and the rewrite so the solver sees the cost of the
/// weights that are written.
/// <list type="bullet">
/// <item>Second-order rounding (GPTQ, Frantar et al. 2023): for every output channel, the weights w_0..w_{L-1} of its
/// input slice are quantized in order (with per-channel scales, by decreasing input energy diag S: "act-order", which
/// rounds the costly columns while many cheap ones remain to absorb their error); after w_j, the error
/// e = (w_j - Q(w_j)) / U_jj is subtracted from the later weights as <c>w_t -= e * U_jt</c>, U the upper Cholesky
/// factor of <c>(S + lambda I)^-1</c> over the slice, <c>lambda = 0.01 * mean(diag S)</c>. This minimises the layer-output error <c>tr(dW S dW^T)</c> greedily instead
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
    public static WeightQuantization Quantize(float[] weight, WeightLayout layout, int[] channelBits, InputStatistics? statistics, bool gptq) =>
        Quantize(weight, layout, channelBits, statistics, gptq, actOrder: true);

    /// <summary><see cref="Quantize(float[], WeightLayout, int[], InputStatistics?, bool)"/>; without
    /// <paramref name="actOrder"/>, second-order rounding takes the columns in their own order (what act-order is
    /// measured against).</summary>
    internal static WeightQuantization Quantize(float[] weight, WeightLayout layout, int[] channelBits, InputStatistics? statistics, bool gptq, bool actOrder)
    {
        if (channelBits.Length != layout.Channels)
            throw new ArgumentException($"{channelBits.Length} widths for {layout.Channels} channels", nameof(channelBits));
        if (!gptq || statistics is null)
            return RoundToNearest(weight, layout, channelBits);
        return SecondOrder(weight, layout, [channelBits], statistics, threads: 0, actOrder)[0];
    }

    /// <summary>
    /// Every channel at each of <paramref name="widths"/> in one pass (what the curves need): the factor and the
    /// weight rows are read once for all widths. With <paramref name="statistics"/> null, round to nearest.
    /// </summary>
    public static WeightQuantization[] QuantizeWidths(float[] weight, WeightLayout layout, IReadOnlyList<int> widths, InputStatistics? statistics, int threads)
    {
        if (statistics is null)
            return widths.Select(b => QuantMath.QuantizeWeight(weight, layout, b)).ToArray();
        return SecondOrder(weight, layout, widths.Select(b => Enumerable.Repeat(b, layout.Channels).ToArray()).ToList(), statistics, threads, actOrder: true);
    }

    /// <summary>The factor R of one slice of S (see <see cref="SecondOrder"/>), computed once per statistics and
    /// slice; empty when S is zero or not positive definite there (the slice is then rounded to nearest).</summary>
    public static SecondOrderFactor? Factor(InputStatistics statistics, int offset, int block, bool ordered, int threads) =>
        statistics.Factor(offset, block, ordered, () => ReverseFactor(statistics, offset, statistics.RowLength, block, ordered, threads));

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
        var n = statistics.RowLength;
        var second = statistics.Second;
        double total = 0;
        for (var c = 0; c < layout.Channels; c++)
        {
            rowLayout.GatherBlock(weight, c, 0, row, indices);
            rowLayout.GatherBlock(dequantized, c, 0, quantized, indices);
            var offset = statistics.Offset(c);
            var block = statistics.Block(offset);
            var d = new double[length];
            for (var j = 0; j < length; j++)
                d[j] = (double)quantized[j] - row[j];
            double sum = 0, mean = 0;
            for (var i = 0; i < length; i++)
            {
                double inner = 0;
                for (var j = 0; j < length; j++)
                    inner += second[block + (long)i * n + j] * d[j];
                sum += d[i] * inner;
                mean += d[i] * statistics.Mean[offset + i];
            }
            total += centered ? sum - mean * mean : sum;
        }
        return total;
    }

    /// <summary>R with <c>R R^T = S + lambda I</c> over one slice (see <see cref="SecondOrder"/>), or null when S is
    /// zero there or not positive definite even damped (the caller then rounds to nearest).</summary>
    /// <remarks>With J the reversal permutation, <c>J H J = L L^T</c> (Cholesky) gives <c>R = J L J</c>, upper.</remarks>
    private static SecondOrderFactor? ReverseFactor(InputStatistics statistics, int offset, int length, int block, bool ordered, int threads)
    {
        // The slice's block of S: n x n from `start`, the slice's columns at 0..n-1.
        var n = statistics.RowLength;
        var second = statistics.Second;
        var start = statistics.Block(offset);
        var order = ordered ? ColumnOrder(second, n, start, length) : null;
        double trace = 0;
        for (var i = 0; i < length; i++)
            trace += second[start + (long)i * n + i];
        var meanDiagonal = trace / length;
        if (!(meanDiagonal > 0) || !double.IsFinite(meanDiagonal))
            return null;
        double[] l;
        if (statistics.Slices == 1 && length == n)
        {
            // The whole of S: J S J is S's array reversed, so the factorization runs in S's own array (a second n^2
            // array costs as much to fault in as the factorization takes); S is computed again if asked for later.
            l = statistics.TakeSecond();
            if (order is not null)
                PermuteSymmetric(l, n, order);
            Array.Reverse(l);
        }
        else
        {
            l = new double[(long)length * length];
            for (var i = 0; i < length; i++)
            {
                if (order is null)
                {
                    var source = start + (long)(length - 1 - i) * n + length - 1;
                    for (var j = 0; j <= i; j++)
                        l[(long)i * length + j] = second[source - j];
                }
                else
                {
                    var source = start + (long)order[length - 1 - i] * n;
                    for (var j = 0; j <= i; j++)
                        l[(long)i * length + j] = second[source + order[length - 1 - j]];
                }
            }
        }
        // What H adds to S's diagonal, in slice order (l is reversed), so the output error can be read off the factor.
        var added = new double[length];
        for (var i = 0; i < length; i++)
        {
            // A column whose input is always zero carries no error; a unit diagonal keeps the factor defined.
            var at = (long)i * length + i;
            var original = l[at];
            l[at] = (original <= 0 ? meanDiagonal : original) + Dampening * meanDiagonal;
            added[length - 1 - i] = l[at] - original;
        }
        return DenseSpd.CholeskyInPlace(l, length, threads) ? new SecondOrderFactor(l, length, block, added, order) : null;
    }

    /// <summary>The slice's columns by decreasing input energy (diagonal of S), ties by position: GPTQ's
    /// "act-order". The columns rounded first are the ones whose error costs most; later, cheaper columns absorb it,
    /// which lowers the output error most where a few input channels carry most of the energy (3 bits and below).
    /// Null when that order is the slice's own.</summary>
    private static int[]? ColumnOrder(double[] second, int n, long start, int length)
    {
        var energy = new double[length];
        for (var i = 0; i < length; i++)
            energy[i] = second[start + (long)i * n + i];
        // OrderBy is a stable sort, so equal energies keep their positions and the order is the same on every machine.
        var order = Enumerable.Range(0, length).OrderByDescending(i => energy[i]).ToArray();
        for (var i = 0; i < length; i++)
            if (order[i] != i)
                return order;
        return null;
    }

    /// <summary>Rewrites the n x n matrix <paramref name="a"/> as <c>a'[i, j] = a[order[i], order[j]]</c> in place
    /// (the whole of S is too large to copy on wide layers).</summary>
    private static void PermuteSymmetric(double[] a, int n, int[] order)
    {
        var row = new double[n];
        for (var i = 0; i < n; i++)
        {
            var span = a.AsSpan((int)((long)i * n), n);
            for (var j = 0; j < n; j++)
                row[j] = span[order[j]];
            row.CopyTo(span);
        }
        // Rows by cycles of the permutation: row i takes old row order[i].
        var done = new bool[n];
        for (var start = 0; start < n; start++)
        {
            if (done[start] || order[start] == start)
                continue;
            a.AsSpan((int)((long)start * n), n).CopyTo(row);
            var i = start;
            while (true)
            {
                done[i] = true;
                var next = order[i];
                if (next == start)
                {
                    row.CopyTo(a.AsSpan((int)((long)i * n), n));
                    break;
                }
                a.AsSpan((int)((long)next * n), n).CopyTo(a.AsSpan((int)((long)i * n), n));
                i = next;
            }
        }
    }

    /// <summary>Rows of weights that one task walks together (they share the factor's panels while in cache).</summary>
    private const int ChunkRows = 64;

    /// <summary>Columns one lazy update covers when scales are per channel.</summary>
    private const int ColumnBlock = 128;

    /// <summary>
    /// Second-order rounding of every channel at the widths of each request in <paramref name="requests"/> (one result
    /// per request).
    /// <para>
    /// GPTQ quantizes the columns of a channel's slice in order and, after column j, adds to every later column t
    /// <c>-e_j U_jt</c> with <c>e_j = (w_j - q_j) / U_jj</c> and U the upper Cholesky factor of <c>H^-1</c>,
    /// <c>H = S + lambda I</c>. Summing these updates shows that the total error is <c>W - Q = E U</c>, so
    /// <c>E = (W - Q) R</c> with <c>R = U^-1</c>, upper, <c>H = R R^T</c>; the value column t is quantized from is then
    /// <c>w_t = W_t + (sum_{j&lt;t} (W_j - Q_j) R_jt) / R_tt</c>, with W the float weights. This needs R (one
    /// Cholesky factorization) instead of an inverse and a second factorization, and it batches: the sums over a
    /// block of <see cref="ColumnBlock"/> columns reach the later columns as one matrix product per block (the lazy
    /// updates of GPTQ), register-blocked, every entry one multiply-add chain in column order, so results depend on
    /// neither the thread count nor the vector width. Rows are independent: each (channel, width) pair is one row,
    /// so all widths of a layer share each pass over the factor.
    /// </para>
    /// With <paramref name="actOrder"/> and per-channel scales, "the slice" above is the slice with its columns
    /// permuted by decreasing diag S (<see cref="ColumnOrder"/>): the factor is that of the permuted S and each row is
    /// gathered in that order, so everything else is unchanged. On the small DETR it lowered the measured distortion
    /// of the 4- and 3-bit compiles by 22 % and 29 %.
    /// Per-channel scales come from the float weights (MSE clipping, as without compensation); blocked scales are
    /// chosen when their block is reached, from the values the block would be quantized from at that moment.
    /// </summary>
    private static WeightQuantization[] SecondOrder(float[] weight, WeightLayout layout, IReadOnlyList<int[]> requests, InputStatistics statistics, int threads, bool actOrder)
    {
        var rowLayout = new WeightLayout(layout.Shape, layout.ChannelAxis);
        if (rowLayout.BlockLength != statistics.RowLength)
            throw new ArgumentException($"a channel holds {rowLayout.BlockLength} weights, the input statistics slices of {statistics.RowLength}");
        if (layout.BlockSize > 0 && layout.Shape.Length != 2)
            throw new ArgumentException("blocked second-order rounding needs a 2-D weight");
        var length = statistics.RowLength;
        var channels = layout.Channels;
        var values = requests.Select(_ => new sbyte[weight.Length]).ToArray();
        var scales = requests.Select(_ => new float[channels * layout.BlocksPerChannel]).ToArray();
        var outputErrors = requests.Select(_ => new double[channels]).ToArray();
        // The factors first, outside the parallel loop over rows: the factorization parallelizes inside. Blocked
        // scales need each block's columns together, so only per-channel scales round in act-order.
        var block = layout.BlockSize > 0 ? layout.BlockSize : ColumnBlock;
        var ordered = layout.BlockSize == 0 && actOrder;
        var factors = Enumerable.Range(0, channels).Select(statistics.Offset).Distinct().ToDictionary(o => o, o => Factor(statistics, o, block, ordered, threads));
        // Each channel's weights in the order its factor rounds them, with their positions in the weight.
        var floatRows = new float[channels][];
        var indices = new int[channels][];
        var gathered = new float[length];
        var positions = new int[length];
        for (var c = 0; c < channels; c++)
        {
            floatRows[c] = new float[length];
            indices[c] = new int[length];
            rowLayout.GatherBlock(weight, c, 0, gathered, positions);
            var order = factors[statistics.Offset(c)]?.Order;
            for (var t = 0; t < length; t++)
            {
                var from = order is null ? t : order[t];
                floatRows[c][t] = gathered[from];
                indices[c][t] = positions[from];
            }
        }
        // One row per (channel, request), grouped by the slice they read, in a fixed order.
        var chunks = new List<(SecondOrderFactor? R, (int Channel, int Request)[] Rows)>();
        foreach (var group in Enumerable.Range(0, channels).GroupBy(statistics.Offset).OrderBy(g => g.Key))
            foreach (var chunk in group.SelectMany(c => Enumerable.Range(0, requests.Count).Select(k => (c, k))).Chunk(ChunkRows))
                chunks.Add((factors[group.Key], chunk));
        var options = new ParallelOptions { MaxDegreeOfParallelism = threads > 0 ? threads : Environment.ProcessorCount };
        // Scratch per worker, not per chunk: fresh large arrays are slow to fault in.
        Parallel.For(0, chunks.Count, options, () => (Sums: new float[ChunkRows * length], Errors: new float[ChunkRows * block]), (i, _, scratch) =>
        {
            var (r, rows) = chunks[i];
            var bits = rows.Select(p => requests[p.Request][p.Channel]).ToArray();
            var rowScales = rows.Select((p, k) => layout.BlockSize > 0 ? 0f : QuantMath.MseOptimalScale(floatRows[p.Channel], bits[k])).ToArray();
            if (layout.BlockSize == 0)
                for (var k = 0; k < rows.Length; k++)
                    scales[rows[k].Request][rows[k].Channel] = rowScales[k];
            var sums = scratch.Sums;
            var errors = scratch.Errors;
            Array.Clear(sums, 0, rows.Length * length);
            var current = new float[Math.Max(1, layout.BlockSize)];
            for (var j0 = 0; j0 < length; j0 += block)
            {
                var j1 = Math.Min(length, j0 + block);
                for (var k = 0; k < rows.Length; k++)
                {
                    var (channel, request) = rows[k];
                    var w = floatRows[channel];
                    var sum = sums.AsSpan(k * length, length);
                    var qmin = QuantMath.SignedMin(bits[k]);
                    var qmax = QuantMath.SignedMax(bits[k]);
                    for (var t = j0; t < j1; t++)
                    {
                        if (layout.BlockSize > 0 && t == j0)
                        {
                            for (var u = j0; u < j1; u++)
                                current[u - j0] = r is null ? w[u] : w[u] + sum[u] / r.Diagonal[u];
                            rowScales[k] = QuantMath.MseOptimalScale(current.AsSpan(0, j1 - j0), bits[k]);
                            scales[request][channel * layout.BlocksPerChannel + j0 / layout.BlockSize] = rowScales[k];
                        }
                        var scale = rowScales[k];
                        var target = r is null ? w[t] : w[t] + sum[t] / r.Diagonal[t];
                        var q = Math.Clamp(MathF.Round(target / scale, MidpointRounding.ToEven), qmin, qmax);
                        values[request][indices[channel][t]] = (sbyte)q;
                        if (r is null)
                            continue;
                        var error = w[t] - q * scale;
                        errors[k * block + t - j0] = error;
                        // E_t = sum_{j<=t} (W_j - Q_j) R_jt, and sum_t E_t^2 = dW H dW^T (E = dW R, H = R R^T).
                        var scaled = (double)sum[t] + (double)error * r.Diagonal[t];
                        outputErrors[request][channel] += scaled * scaled - r.Added[t] * error * error;
                        if (t + 1 < j1)
                            AddScaled(sum.Slice(t + 1, j1 - t - 1), r.InBlock(t, j1), error);
                    }
                }
                if (r is not null && j1 < length)
                    LazyUpdate(sums, errors, r.Panel(j0), rows.Length, length, block, j1 - j0, j1);
            }
            return scratch;
        }, _ => { });
        // The layer-output error of each channel comes with the rounding for free: dW S dW^T = dW H dW^T - dW (H - S) dW^T.
        var complete = factors.Values.All(f => f is not null);
        return requests.Select((req, k) => new WeightQuantization(req.Max(), layout, values[k], scales[k])
        {
            OutputErrors = complete ? outputErrors[k].Select(e => Math.Max(0, e)).ToArray() : null,
            Shrinkage = statistics.Shrinkage,
        }).ToArray();
    }

    /// <summary>
    /// <c>sums[row, t] += sum_k errors[row, k] * R[j0 + k, t]</c> for t from <paramref name="from"/> on (the block's
    /// packed panel, <see cref="SecondOrderFactor.Panel"/>): a
    /// (rows x width) by (width x rest) product, tiled 4 rows by 16 columns in registers. Each entry is one multiply-add
    /// chain in k order.
    /// </summary>
    private static void LazyUpdate(float[] sums, float[] errors, ReadOnlySpan<float> panel, int rows, int length, int block, int width, int from)
    {
        ref var pp = ref MemoryMarshal.GetReference(panel);
        // Each 16-column chunk of the panel is read by every row tile while it is in the first-level cache (read once
        // per 4 rows, the whole panel streamed from memory).
        for (var t = from; t < length; t += 16)
        {
            var chunk = (t - from) / 16 * width * 16;
            var i0 = 0;
            if (t + 16 <= length && Vector512.IsHardwareAccelerated)
                for (; i0 + 8 <= rows; i0 += 8)
                    UpdateTile512(sums, errors, ref pp, chunk, i0, length, block, width, t);
            for (; i0 < rows; i0 += 4)
            {
                var tileRows = Math.Min(4, rows - i0);
                if (tileRows == 4 && t + 16 <= length && Vector256.IsHardwareAccelerated)
                {
                    Vector256<float> a00 = default, a01 = default, a10 = default, a11 = default,
                        a20 = default, a21 = default, a30 = default, a31 = default;
                    for (var k = 0; k < width; k++)
                    {
                        var offset = (nuint)(chunk + k * 16);
                        var u0 = Vector256.LoadUnsafe(ref pp, offset);
                        var u1 = Vector256.LoadUnsafe(ref pp, offset + 8);
                        var e0 = Vector256.Create(errors[i0 * block + k]);
                        var e1 = Vector256.Create(errors[(i0 + 1) * block + k]);
                        var e2 = Vector256.Create(errors[(i0 + 2) * block + k]);
                        var e3 = Vector256.Create(errors[(i0 + 3) * block + k]);
                        a00 = Vector256.FusedMultiplyAdd(e0, u0, a00);
                        a01 = Vector256.FusedMultiplyAdd(e0, u1, a01);
                        a10 = Vector256.FusedMultiplyAdd(e1, u0, a10);
                        a11 = Vector256.FusedMultiplyAdd(e1, u1, a11);
                        a20 = Vector256.FusedMultiplyAdd(e2, u0, a20);
                        a21 = Vector256.FusedMultiplyAdd(e2, u1, a21);
                        a30 = Vector256.FusedMultiplyAdd(e3, u0, a30);
                        a31 = Vector256.FusedMultiplyAdd(e3, u1, a31);
                    }
                    Add(sums, i0 * length + t, a00, a01);
                    Add(sums, (i0 + 1) * length + t, a10, a11);
                    Add(sums, (i0 + 2) * length + t, a20, a21);
                    Add(sums, (i0 + 3) * length + t, a30, a31);
                    continue;
                }
                for (var i = i0; i < i0 + tileRows; i++)
                    for (var c = 0; c < 16 && t + c < length; c++)
                    {
                        float s = 0;
                        for (var k = 0; k < width; k++)
                            s = MathF.FusedMultiplyAdd(errors[i * block + k], panel[chunk + k * 16 + c], s);
                        sums[i * length + t + c] += s;
                    }
            }
        }
    }

    /// <summary><c>rest[u] = fma(row[u], e, rest[u])</c>, each element one fused multiply-add whatever the vector width:
    /// called once per weight and width (hundreds of millions of times on a large model) over at most a column block,
    /// where a library call's fixed cost is as large as the work.</summary>
    private static void AddScaled(Span<float> rest, ReadOnlySpan<float> row, float e)
    {
        ref var d = ref MemoryMarshal.GetReference(rest);
        ref var x = ref MemoryMarshal.GetReference(row);
        var n = rest.Length;
        if (row.Length < n)
            throw new ArgumentException("the factor's row is shorter than the block's rest");
        var i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            var ve = Vector256.Create(e);
            for (; i + 8 <= n; i += 8)
                Vector256.FusedMultiplyAdd(Vector256.LoadUnsafe(ref x, (nuint)i), ve, Vector256.LoadUnsafe(ref d, (nuint)i)).StoreUnsafe(ref d, (nuint)i);
        }
        for (; i < n; i++)
            Unsafe.Add(ref d, i) = MathF.FusedMultiplyAdd(Unsafe.Add(ref x, i), e, Unsafe.Add(ref d, i));
    }

    /// <summary>Rows i0..i0+7 by the 16 columns from t: 8 rows in 512-bit registers, each entry the same multiply-add
    /// chain in k order as the 256-bit tile, so the values do not depend on the vector width.</summary>
    private static void UpdateTile512(float[] sums, float[] errors, ref float pp, int chunk, int i0, int length, int block, int width, int t)
    {
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
        ref var e = ref MemoryMarshal.GetArrayDataReference(errors);
        ref var e0 = ref Unsafe.Add(ref e, i0 * block);
        for (var k = 0; k < width; k++)
        {
            var u = Vector512.LoadUnsafe(ref pp, (nuint)(chunk + k * 16));
            a0 = Vector512.FusedMultiplyAdd(Vector512.Create(Unsafe.Add(ref e0, k)), u, a0);
            a1 = Vector512.FusedMultiplyAdd(Vector512.Create(Unsafe.Add(ref e0, block + k)), u, a1);
            a2 = Vector512.FusedMultiplyAdd(Vector512.Create(Unsafe.Add(ref e0, 2 * block + k)), u, a2);
            a3 = Vector512.FusedMultiplyAdd(Vector512.Create(Unsafe.Add(ref e0, 3 * block + k)), u, a3);
            a4 = Vector512.FusedMultiplyAdd(Vector512.Create(Unsafe.Add(ref e0, 4 * block + k)), u, a4);
            a5 = Vector512.FusedMultiplyAdd(Vector512.Create(Unsafe.Add(ref e0, 5 * block + k)), u, a5);
            a6 = Vector512.FusedMultiplyAdd(Vector512.Create(Unsafe.Add(ref e0, 6 * block + k)), u, a6);
            a7 = Vector512.FusedMultiplyAdd(Vector512.Create(Unsafe.Add(ref e0, 7 * block + k)), u, a7);
        }
        ref var p = ref MemoryMarshal.GetArrayDataReference(sums);
        Add512(ref p, i0 * length + t, a0);
        Add512(ref p, (i0 + 1) * length + t, a1);
        Add512(ref p, (i0 + 2) * length + t, a2);
        Add512(ref p, (i0 + 3) * length + t, a3);
        Add512(ref p, (i0 + 4) * length + t, a4);
        Add512(ref p, (i0 + 5) * length + t, a5);
        Add512(ref p, (i0 + 6) * length + t, a6);
        Add512(ref p, (i0 + 7) * length + t, a7);
    }

    private static void Add512(ref float p, int at, Vector512<float> value) =>
        (Vector512.LoadUnsafe(ref p, (nuint)at) + value).StoreUnsafe(ref p, (nuint)at);

    private static void Add(float[] sums, int at, Vector256<float> low, Vector256<float> high)
    {
        ref var p = ref MemoryMarshal.GetArrayDataReference(sums);
        (Vector256.LoadUnsafe(ref p, (nuint)at) + low).StoreUnsafe(ref p, (nuint)at);
        (Vector256.LoadUnsafe(ref p, (nuint)at + 8) + high).StoreUnsafe(ref p, (nuint)at + 8);
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
        return new WeightQuantization(channelBits.Max(), layout, values, scales) { Shrinkage = byBits.Values.Max(q => q.Shrinkage) };
    }
}

/// <summary>
/// The factor R (upper, <c>R R^T = S + lambda I</c> over one slice) in the layout second-order rounding reads it, for
/// blocks of <see cref="Block"/> columns: the diagonal; each block's rows within the block (row t from column t + 1 to
/// the block's end); and each block's rows beyond the block, packed 16 columns at a time with the 16 entries of row
/// k next to those of row k + 1, so the lazy update streams memory. About half of a full n x n single-precision matrix.
/// </summary>
public sealed class SecondOrderFactor
{
    private readonly float[] _inner;
    private readonly float[] _panels;
    private readonly long[] _panelStart;

    /// <param name="lower">L with <c>J H J = L L^T</c> (row-major, lower triangle), so that R[a, b] = L[n-1-a, n-1-b].</param>
    internal SecondOrderFactor(double[] lower, int length, int block, double[] added, int[]? order)
    {
        Length = length;
        Block = block;
        Added = added;
        Order = order;
        double R(int a, int b) => lower[(long)(length - 1 - a) * length + (length - 1 - b)];
        Diagonal = new float[length];
        for (var t = 0; t < length; t++)
            Diagonal[t] = (float)R(t, t);
        var blocks = (length + block - 1) / block;
        _inner = new float[(long)blocks * block * block];
        _panelStart = new long[blocks + 1];
        for (var b = 0; b < blocks; b++)
        {
            var j0 = b * block;
            var j1 = Math.Min(length, j0 + block);
            var rest = length - j1;
            _panelStart[b + 1] = _panelStart[b] + (long)(j1 - j0) * ((rest + 15) / 16 * 16);
        }
        _panels = new float[_panelStart[blocks]];
        for (var b = 0; b < blocks; b++)
        {
            var j0 = b * block;
            var j1 = Math.Min(length, j0 + block);
            var width = j1 - j0;
            for (var t = j0; t < j1; t++)
                for (var u = t + 1; u < j1; u++)
                    _inner[(long)b * block * block + (t - j0) * block + (u - j0)] = (float)R(t, u);
            for (var u = j1; u < length; u++)
            {
                var at = _panelStart[b] + (long)(u - j1) / 16 * width * 16 + (u - j1) % 16;
                for (var k = 0; k < width; k++)
                    _panels[at + k * 16] = (float)R(j0 + k, u);
            }
        }
    }

    public int Length { get; }
    public int Block { get; }
    public float[] Diagonal { get; }

    /// <summary><c>H - S</c> on the diagonal (the dampening, and the stand-in for columns S never saw).</summary>
    public double[] Added { get; }

    /// <summary>The slice position of each factor column (the order columns are rounded in); null: the slice's own.</summary>
    public int[]? Order { get; }

    /// <summary>Bytes held.</summary>
    public long Bytes => (Diagonal.LongLength + _inner.LongLength + _panels.LongLength) * sizeof(float) + (Order?.LongLength ?? 0) * sizeof(int);

    /// <summary>R[t, t+1 .. end) within t's block.</summary>
    public ReadOnlySpan<float> InBlock(int t, int end)
    {
        var b = t / Block;
        return _inner.AsSpan((int)((long)b * Block * Block + (t - b * Block) * Block + t + 1 - b * Block), end - t - 1);
    }

    /// <summary>The packed rows of the block starting at column <paramref name="j0"/>, beyond the block.</summary>
    public ReadOnlySpan<float> Panel(int j0)
    {
        var b = j0 / Block;
        return _panels.AsSpan((int)_panelStart[b], (int)(_panelStart[b + 1] - _panelStart[b]));
    }
}
