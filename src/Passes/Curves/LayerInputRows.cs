using System.Numerics.Tensors;
using OnnxQuant.Frontend;
using OnnxQuant.Passes.Quantization;
using OnnxQuant.Passes.Units;

namespace OnnxQuant.Passes.Curves;

/// <summary>
/// The layer-local error of a quantized weight in closed form. A layer computes z = W x for every row x of its input
/// (a token for MatMul/Gemm, an im2col patch for Conv), so replacing W by W_q = W + dW adds
/// <c>E||dW x||^2 = tr(dW S dW^T)</c> per row, S = E[x x^T] the full second-moment matrix over the reduction axis
/// (for a grouped or depthwise Conv, over the group's slice of the patch). S is represented by the rows it is the mean
/// of: up to <see cref="RowsPerSample"/> rows per calibration sample, drawn with a fixed seed, are kept while the
/// calibration pass streams, and <c>tr(dW S dW^T) = mean_r ||dW x_r||^2</c> is evaluated per output channel and width
/// with <see cref="TensorPrimitives.Dot(ReadOnlySpan{float}, ReadOnlySpan{float})"/> (rows x weights multiply-adds per
/// width, instead of reduction^2 memory for S). The per-sample error is that times the rows one sample has (output
/// positions for a Conv, tokens for a MatMul) and alpha^2 for a Gemm, so it is comparable to ||dz||^2 measured on one
/// sample.
/// </summary>
public sealed class LayerInputRows
{
    private readonly QuantLayer _layer;
    private readonly ConvGeometry? _conv;
    // A deconvolution whose kernel taps never overlap: each input position's channel vector is a row, and output
    // channel c reads it through one weight vector per kernel tap (0 otherwise).
    private readonly int _deconvTaps;
    private readonly bool _transposedInput;
    private readonly int _rowsPerSample;
    private readonly int _seed;
    private readonly List<float[]> _rows = [];
    // Once calibration is done the rows may wait in a file (see Spill): each layer reads them once or twice.
    private string? _file;
    private int _fileRows;
    private long _observedRows;
    private long _observedSamples;

    /// <param name="node">The layer's node (Conv attributes, Gemm transA/alpha).</param>
    /// <param name="rowsPerSample">Rows kept per calibration sample.</param>
    /// <param name="seed">Seed of the row draw (the layer's index), so the rows do not depend on anything else.</param>
    public LayerInputRows(QuantLayer layer, Node node, int rowsPerSample, int seed)
    {
        _layer = layer;
        _rowsPerSample = Math.Max(1, rowsPerSample);
        _seed = seed;
        switch (layer.OpType)
        {
            case "Conv":
                _conv = ConvGeometry.Of(node, layer.WeightShape, out var reason);
                Fallback = reason;
                break;
            case "ConvTranspose":
                // Where kernel taps overlap, an output position sums over several input positions, which differ with
                // its phase: no one row per output, so no closed form (curves measured at every width). Where they do
                // not (stride >= kernel, no dilation, no cropping, one group: the 2x2 stride-2 upsampling of Mask
                // R-CNN's mask head and of a ViT's feature pyramid), every output position reads one input position
                // through one tap, so ||dZ||^2 = sum over input positions and taps of (dW_tap . x)^2 exactly.
                _deconvTaps = NonOverlappingTaps(node, layer.WeightShape, out var why);
                if (_deconvTaps == 0)
                    Fallback = $"ConvTranspose ({why})";
                break;
            case "Gemm":
                _transposedInput = node.GetInt("transA", 0) != 0;
                Alpha = node.GetFloat("alpha", 1f);
                break;
        }
        Reduction = layer.OpType switch
        {
            "Conv" => (int)(layer.WeightShape[1] * layer.Groups * layer.WeightShape.Skip(2).Aggregate(1L, (a, b) => a * b)),
            "ConvTranspose" when _deconvTaps > 0 => (int)layer.WeightShape[0],
            "ConvTranspose" => (int)(layer.Size / layer.Channels),
            _ => (int)layer.WeightShape[layer.InputChannelAxis],
        };
    }

    /// <summary>Kernel taps of a ConvTranspose whose taps never overlap, or 0 with the reason.</summary>
    private static int NonOverlappingTaps(Node node, long[] weightShape, out string why)
    {
        why = "";
        var rank = weightShape.Length - 2;
        var kernel = weightShape.Skip(2).ToArray();
        var strides = node.GetInts("strides") ?? Enumerable.Repeat(1L, rank).ToArray();
        var dilations = node.GetInts("dilations") ?? Enumerable.Repeat(1L, rank).ToArray();
        var pads = node.GetInts("pads") ?? new long[2 * rank];
        var autoPad = node.GetString("auto_pad", "NOTSET");
        if (rank < 1 || node.GetInt("group", 1) != 1)
            why = "grouped";
        else if (strides.Count != rank || Enumerable.Range(0, rank).Any(a => strides[a] < kernel[a]))
            why = "kernel taps overlap: stride below the kernel, no one input row per output position";
        else if (dilations.Any(d => d != 1))
            why = "dilated";
        else if (pads.Any(p => p != 0) || autoPad is not ("NOTSET" or "VALID") || node.GetInts("output_shape") is not null)
            why = "cropped output";
        return why.Length > 0 ? 0 : (int)kernel.Aggregate(1L, (a, b) => a * b);
    }

    public QuantLayer Layer => _layer;

    /// <summary>Length of one input row (the whole im2col patch for a Conv, all groups).</summary>
    public int Reduction { get; }

    public float Alpha { get; } = 1f;

    /// <summary>Why the layer's rows cannot be formed (the caller falls back to the diagonal proxy); null when they can.</summary>
    public string? Fallback { get; private set; }

    public int RowCount => _file is null ? _rows.Count : _fileRows;

    /// <summary>
    /// Moves the rows to <paramref name="path"/> and frees them; later reads load them from there (the same floats).
    /// Calibration must be over: no row can be added afterwards.
    /// </summary>
    public void Spill(string path)
    {
        if (_file is not null || _rows.Count == 0)
            return;
        using (var stream = new FileStream(path, FileMode.CreateNew, FileAccess.Write))
            foreach (var row in _rows)
                stream.Write(System.Runtime.InteropServices.MemoryMarshal.AsBytes(row.AsSpan()));
        _fileRows = _rows.Count;
        _file = path;
        _rows.Clear();
        _rows.TrimExcess();
    }

    /// <summary>The rows, from memory or read back from their file.</summary>
    private IReadOnlyList<float[]> Rows()
    {
        if (_file is null)
            return _rows;
        var rows = new float[_fileRows][];
        using var stream = File.OpenRead(_file);
        for (var r = 0; r < rows.Length; r++)
        {
            rows[r] = new float[Reduction];
            stream.ReadExactly(System.Runtime.InteropServices.MemoryMarshal.AsBytes(rows[r].AsSpan()));
        }
        return rows;
    }

    private void CheckOpen()
    {
        if (_file is not null)
            throw new InvalidOperationException($"layer '{_layer.Name}': rows added after they were spilled");
    }

    /// <summary>Mean number of rows (output positions or tokens) one sample gives this layer.</summary>
    public double RowsPerSampleObserved => _observedSamples == 0 ? 0 : (double)_observedRows / _observedSamples;

    /// <summary>Adds the layer input of <paramref name="count"/> samples stacked in one run.</summary>
    public void Add(float[] values, long[] shape, int firstSample, int count)
    {
        CheckOpen();
        if (Draw(shape, firstSample, count) is not { } draw)
            return;
        foreach (var positions in draw.Rows)
            _rows.Add(Read(values, positions));
        _observedRows += draw.RunRows;
        _observedSamples += count;
        _lastDraw = null;
    }

    /// <summary>
    /// Where the rows drawn from <paramref name="sample"/> (alone in a run, its input of <paramref name="shape"/>) lie
    /// in the flattened input, row after row, -1 for an element that is zero padding; null when the shape forms no rows.
    /// A caller that gathers these elements (in the graph) and hands them to <see cref="AddSelected"/> adds exactly the
    /// rows <see cref="Add"/> would take from the whole input.
    /// </summary>
    public long[]? SelectionPositions(long[] shape, int sample)
    {
        if (Draw(shape, sample, 1) is not { } draw)
            return null;
        var positions = new long[draw.Rows.Sum(r => (long)r.Length)];
        var offset = 0;
        foreach (var r in draw.Rows)
        {
            r.CopyTo(positions, offset);
            offset += r.Length;
        }
        return positions;
    }

    /// <summary>Adds the rows of <paramref name="sample"/> from the elements at <see cref="SelectionPositions"/>
    /// (<paramref name="selected"/> in that order; the values at padding positions are ignored).</summary>
    public void AddSelected(long[] shape, int sample, ReadOnlySpan<float> selected)
    {
        CheckOpen();
        if (Draw(shape, sample, 1) is not { } draw)
            return;
        var offset = 0;
        foreach (var positions in draw.Rows)
        {
            var row = new float[positions.Length];
            for (var i = 0; i < row.Length; i++)
                if (positions[i] >= 0)
                    row[i] = selected[offset + i];
            _rows.Add(row);
            offset += positions.Length;
        }
        _observedRows += draw.RunRows;
        _observedSamples += 1;
        _lastDraw = null;
    }

    private static float[] Read(float[] values, long[] positions)
    {
        var row = new float[positions.Length];
        for (var i = 0; i < row.Length; i++)
            if (positions[i] >= 0)
                row[i] = values[positions[i]];
        return row;
    }

    /// <summary>
    /// The rows drawn from samples [<paramref name="firstSample"/>, + <paramref name="count"/>) of a run input of
    /// <paramref name="shape"/>, as element positions, and the rows the whole run has; null (and <see cref="Fallback"/>
    /// set) when the shape forms no rows.
    /// </summary>
    private (List<long[]> Rows, long RunRows)? Draw(long[] shape, int firstSample, int count)
    {
        if (Fallback is not null)
            return null;
        // A selection asks for one sample's draw twice (the positions, then the rows): the last draw is kept.
        if (_lastDraw is { } last && last.Sample == firstSample && last.Count == count && last.Shape.AsSpan().SequenceEqual(shape))
            return last.Draw;
        var draw = DrawNew(shape, firstSample, count);
        _lastDraw = draw is { } d ? ((long[])shape.Clone(), firstSample, count, d) : null;
        return draw;
    }

    private (long[] Shape, int Sample, int Count, (List<long[]> Rows, long RunRows) Draw)? _lastDraw;

    private (List<long[]> Rows, long RunRows)? DrawNew(long[] shape, int firstSample, int count)
    {
        long rows;
        Func<long, long[]> row;
        if (_conv is { } conv)
        {
            if (shape.Length != conv.SpatialRank + 2 || shape[1] != conv.Channels)
            {
                Fallback = $"input of shape [{string.Join(",", shape)}] is not N, {conv.Channels} channels and {conv.SpatialRank} spatial axes";
                return null;
            }
            var size = shape.Skip(2).Select(v => (int)v).ToArray();
            var outputSize = conv.OutputSize(size);
            var positions = outputSize.Aggregate(1L, (a, b) => a * b);
            rows = shape[0] * positions;
            row = r => conv.PatchPositions((int)(r / positions), r % positions, outputSize, size);
        }
        else if (_deconvTaps > 0)
        {
            var k = Reduction;
            if (shape.Length != _layer.WeightShape.Length || shape[1] != k)
            {
                Fallback = $"input of shape [{string.Join(",", shape)}] is not N, {k} channels and {shape.Length - 2} spatial axes";
                return null;
            }
            var plane = shape.Skip(2).Aggregate(1L, (a, b) => a * b);
            rows = shape[0] * plane;
            row = r =>
            {
                var start = r / plane * k * plane + r % plane;
                return Enumerable.Range(0, k).Select(i => start + i * plane).ToArray();
            };
        }
        else
        {
            var k = Reduction;
            var length = shape.Aggregate(1L, (a, b) => a * b);
            if (length % k != 0 || shape.Length == 0)
            {
                Fallback = $"input of shape [{string.Join(",", shape)}] does not hold rows of {k}";
                return null;
            }
            rows = length / k;
            if (_transposedInput)
            {
                if (shape.Length != 2 || shape[0] != k)
                {
                    Fallback = $"transposed Gemm input of shape [{string.Join(",", shape)}]";
                    return null;
                }
                var m = shape[1];
                row = r => Enumerable.Range(0, k).Select(i => i * m + r).ToArray();
            }
            else
                row = r => Enumerable.Range(0, k).Select(i => r * k + i).ToArray();
        }
        // One draw per sample, seeded by the layer and the sample only (not by how samples were batched).
        var perSample = rows / count;
        var drawn = new List<long[]>(count * _rowsPerSample);
        for (var s = 0; s < count; s++)
        {
            var random = new Random(unchecked(_seed * 1_000_003 + firstSample + s));
            for (var j = 0; j < _rowsPerSample; j++)
                drawn.Add(row(s * perSample + random.NextInt64(perSample)));
        }
        return (drawn, rows);
    }

    /// <summary>
    /// Per width (in <paramref name="bits"/> order) and output channel: the expected squared error that quantizing the
    /// weight (round to nearest) adds to that channel of the layer output, summed over one sample's rows.
    /// </summary>
    public double[][] ChannelErrors(float[] weight, WeightLayout layout, IReadOnlyList<int> bits, int threads) =>
        ChannelErrors(weight, b => QuantMath.FakeQuantizeWeight(weight, layout, b), bits, false, threads);

    /// <summary>
    /// As above for the weights <paramref name="quantize"/> gives per width (the compensated ones); with
    /// <paramref name="centered"/>, the error left once the bias absorbs the mean shift: <c>(dW (x - mean x))^2</c>.
    /// </summary>
    public double[][] ChannelErrors(float[] weight, Func<int, float[]> quantize, IReadOnlyList<int> bits, bool centered, int threads)
    {
        if (Fallback is not null || RowCount == 0)
            throw new InvalidOperationException($"layer '{_layer.Name}' has no input rows ({Fallback ?? "none observed"})");
        var result = new double[bits.Count][];
        var rows = Rows();
        var scale = RowsPerSampleObserved * Alpha * Alpha / rows.Count;
        var mean = centered ? Mean(rows) : null;
        for (var k = 0; k < bits.Count; k++)
        {
            var q = quantize(bits[k]);
            result[k] = SquaredProjections(rows, c => ChannelVectors(weight, q, c), mean, scale, threads);
        }
        return result;
    }

    /// <summary>
    /// Per output channel c: <paramref name="scale"/> times the sum over <paramref name="rows"/> of
    /// (v_c . (x - mean))^2, v_c what <paramref name="vectorOf"/> gives for the channel (laid out like the slice of a
    /// row at its offset). Each channel is summed sequentially in row order, so the result does not depend on the
    /// thread count.
    /// </summary>
    private double[] SquaredProjections(IReadOnlyList<float[]> rows, Func<int, IReadOnlyList<(float[] Vector, int Offset)>> vectorsOf, float[]? mean,
        double scale, int threads)
    {
        var result = new double[_layer.Channels];
        var parallel = new ParallelOptions { MaxDegreeOfParallelism = threads > 0 ? threads : Environment.ProcessorCount };
        Parallel.For(0, result.Length, parallel, c =>
        {
            double sum = 0;
            foreach (var (v, offset) in vectorsOf(c))
            {
                double shift = mean is null ? 0 : TensorPrimitives.Dot(mean.AsSpan(offset, v.Length), v);
                foreach (var x in rows)
                {
                    double d = TensorPrimitives.Dot(x.AsSpan(offset, v.Length), v) - shift;
                    sum += d * d;
                }
            }
            result[c] = sum * scale;
        });
        return result;
    }

    /// <summary>What output channel <paramref name="c"/> reads a row through: its slice (<see cref="ChannelSlice"/>),
    /// or for a non-overlapping deconvolution one vector over the input channels per kernel tap.</summary>
    private IReadOnlyList<(float[] Vector, int Offset)> ChannelVectors(float[] w, float[]? q, int c)
    {
        if (_deconvTaps == 0)
            return [ChannelSlice(w, q, c)];
        var (inputs, outputs, taps) = (Reduction, _layer.Channels, _deconvTaps);
        var vectors = new (float[], int)[taps];
        for (var t = 0; t < taps; t++)
        {
            var v = new float[inputs];
            for (var i = 0; i < inputs; i++)
            {
                var at = ((long)i * outputs + c) * taps + t;
                v[i] = q is null ? w[at] : q[at] - w[at];
            }
            vectors[t] = (v, 0);
        }
        return vectors;
    }

    /// <summary>
    /// As <see cref="ChannelErrors(float[], Func{int, float[]}, IReadOnlyList{int}, bool, int)"/>, from the per-channel
    /// <c>dW S dW^T</c> that second-order rounding reports (<paramref name="outputErrors"/> per width; S the second
    /// moments of these same rows), instead of a pass over the rows per width: the same quantity, scaled the same way.
    /// </summary>
    public double[][] ChannelErrors(float[] weight, Func<int, float[]> quantize, IReadOnlyList<int> bits, IReadOnlyList<double[]> outputErrors,
        InputStatistics statistics, bool centered)
    {
        var scale = RowsPerSampleObserved * Alpha * Alpha;
        var result = new double[bits.Count][];
        for (var k = 0; k < bits.Count; k++)
        {
            var q = centered ? quantize(bits[k]) : null;
            var errors = new double[_layer.Channels];
            for (var c = 0; c < errors.Length; c++)
            {
                var error = outputErrors[k][c];
                if (q is not null)
                {
                    var (dw, offset) = ChannelSlice(weight, q, c);
                    double shift = 0;
                    for (var i = 0; i < dw.Length; i++)
                        shift += dw[i] * statistics.Mean[offset + i];
                    error = Math.Max(0, error - shift * shift);
                }
                errors[c] = error * scale;
            }
            result[k] = errors;
        }
        return result;
    }

    /// <summary>
    /// Per output channel: the expected squared error that quantizing this layer's input with
    /// <paramref name="activation"/> adds to the channel, summed over one sample's rows, scaled as
    /// <see cref="ChannelErrors(float[], WeightLayout, IReadOnlyList{int}, int)"/>. Each kept row x gives its own
    /// rounding error e = Q(x) - x (zeros, a Conv's padding among them, quantize exactly), so
    /// <c>mean_r (w_c . e_r)^2</c> is the error of this input's real values, not of a uniform-noise model; the weight is
    /// the float one (what the quantized weight changes is second order).
    /// </summary>
    public double[] ActivationErrors(float[] weight, ActivationQuantization activation, int threads)
    {
        if (Fallback is not null || RowCount == 0)
            throw new InvalidOperationException($"layer '{_layer.Name}' has no input rows ({Fallback ?? "none observed"})");
        var rows = Rows();
        var scale = RowsPerSampleObserved * Alpha * Alpha / rows.Count;
        var errors = new float[rows.Count][];
        for (var r = 0; r < rows.Count; r++)
        {
            var e = (float[])rows[r].Clone();
            QuantMath.FakeQuantizeActivation(e, activation);
            TensorPrimitives.Subtract(e, rows[r], e);
            errors[r] = e;
        }
        return SquaredProjections(errors, c => ChannelVectors(weight, null, c), null, scale, threads);
    }

    private float[] Mean(IReadOnlyList<float[]> rows)
    {
        var sum = new double[Reduction];
        foreach (var x in rows)
            for (var i = 0; i < Reduction; i++)
                sum[i] += x[i];
        return sum.Select(v => (float)(v / rows.Count)).ToArray();
    }

    /// <summary>S = E[x x^T] and E[x] of the kept rows, for compensation; null when no rows could be formed.</summary>
    public InputStatistics? Statistics() => Combined([this]);

    /// <summary>
    /// The statistics of layers that share one weight (<see cref="Units.WeightTie"/>): the rows of all, in the order
    /// given, so that compensation fits the one quantized weight to every input it is applied to. Layers without rows
    /// add none; null when none has any.
    /// </summary>
    public static InputStatistics? Combined(IReadOnlyList<LayerInputRows> layers)
    {
        // A deconvolution's rows are its input positions' channels, not what compensation's layout reads: rounded to nearest.
        var usable = layers.Where(l => l.Fallback is null && l.RowCount > 0 && l._deconvTaps == 0).ToList();
        if (usable.Count == 0)
            return null;
        var first = usable[0];
        // A snapshot: S is computed later from these rows, whatever happens to the lists.
        var rows = usable.SelectMany(l => l._file is null ? l._rows.ToList() : l.Rows()).ToList();
        var rowLength = first._layer.OpType == "Conv" ? (int)(first._layer.Size / first._layer.Channels) : first.Reduction;
        var perGroup = first._layer.OpType == "Conv" ? first._layer.Channels / Math.Max(1, first._layer.Groups) : first._layer.Channels;
        return InputStatistics.FromRows(rows, first.Reduction, rowLength, perGroup);
    }

    /// <summary>
    /// Output channel <paramref name="c"/>'s weights (<paramref name="q"/> null) or their change q - w, laid out like a
    /// slice of an input row, with the slice's offset in the row (a grouped Conv's group).
    /// </summary>
    private (float[] Values, int Offset) ChannelSlice(float[] w, float[]? q, int c)
    {
        var shape = _layer.WeightShape;
        if (_layer.OpType == "Conv")
        {
            var length = (int)(_layer.Size / _layer.Channels);
            var slice = new float[length];
            if (q is null)
                w.AsSpan(c * length, length).CopyTo(slice);
            else
                TensorPrimitives.Subtract(q.AsSpan(c * length, length), w.AsSpan(c * length, length), slice);
            var perGroup = _layer.Channels / Math.Max(1, _layer.Groups);
            return (slice, c / perGroup * length);
        }
        var k = (int)shape[_layer.InputChannelAxis];
        var d = new float[k];
        if (_layer.ChannelAxis == 0)
        {
            if (q is null)
                w.AsSpan(c * k, k).CopyTo(d);
            else
                TensorPrimitives.Subtract(q.AsSpan(c * k, k), w.AsSpan(c * k, k), d);
        }
        else
        {
            var n = (int)shape[1];
            for (var i = 0; i < k; i++)
                d[i] = q is null ? w[i * n + c] : q[i * n + c] - w[i * n + c];
        }
        return (d, 0);
    }

    /// <summary>
    /// Convolution geometry over any number of spatial axes (1-D, 2-D, 3-D): what an im2col patch of an output position
    /// reads. The patch is laid out as the weight of one output channel is, [channel, k_1, ..., k_n], row-major.
    /// </summary>
    private sealed class ConvGeometry(int channels, int[] kernelSizes, int[] strideSizes, int[] dilationSizes, int[] padsBefore,
        int[] padsAfter, string padMode)
    {
        private readonly int[] _kernel = kernelSizes;
        private readonly int[] _stride = strideSizes;
        private readonly int[] _dilation = dilationSizes;
        private readonly int[] _padBegin = padsBefore;
        private readonly int[] _padEnd = padsAfter;
        private readonly string _autoPad = padMode;

        /// <summary>Input channels over all groups.</summary>
        public int Channels { get; } = channels;

        public int SpatialRank => _kernel.Length;

        public static ConvGeometry? Of(Node node, long[] weightShape, out string? reason)
        {
            reason = null;
            var rank = weightShape.Length - 2;
            if (rank < 1)
            {
                reason = $"Conv with a rank-{weightShape.Length} weight (no spatial axis)";
                return null;
            }
            var groups = (int)node.GetInt("group", 1);
            var strides = node.GetInts("strides") ?? Enumerable.Repeat(1L, rank).ToArray();
            var dilations = node.GetInts("dilations") ?? Enumerable.Repeat(1L, rank).ToArray();
            var pads = node.GetInts("pads") ?? new long[2 * rank];
            if (strides.Count != rank || dilations.Count != rank || pads.Count != 2 * rank)
            {
                reason = $"Conv attributes of another rank than its {rank}-D weight";
                return null;
            }
            return new ConvGeometry((int)weightShape[1] * groups,
                weightShape.Skip(2).Select(k => (int)k).ToArray(),
                strides.Select(v => (int)v).ToArray(),
                dilations.Select(v => (int)v).ToArray(),
                pads.Take(rank).Select(v => (int)v).ToArray(),
                pads.Skip(rank).Select(v => (int)v).ToArray(),
                node.GetString("auto_pad", "NOTSET"));
        }

        /// <summary>Zero padding before and after axis <paramref name="axis"/> of an input <paramref name="size"/> long.</summary>
        private (int Before, int After) Pads(int axis, int size)
        {
            if (_autoPad is "SAME_UPPER" or "SAME_LOWER")
            {
                var (stride, kernel, dilation) = (_stride[axis], _kernel[axis], _dilation[axis]);
                var output = (size + stride - 1) / stride;
                var total = Math.Max(0, (output - 1) * stride + (kernel - 1) * dilation + 1 - size);
                return _autoPad == "SAME_UPPER" ? (total / 2, total - total / 2) : (total - total / 2, total / 2);
            }
            return _autoPad == "VALID" ? (0, 0) : (_padBegin[axis], _padEnd[axis]);
        }

        /// <summary>Output positions along each spatial axis of an input of spatial sizes <paramref name="size"/>.</summary>
        public int[] OutputSize(int[] size) =>
            size.Select((s, a) => (s + Pads(a, s).Before + Pads(a, s).After - _dilation[a] * (_kernel[a] - 1) - 1) / _stride[a] + 1).ToArray();

        /// <summary>Where the patch of image <paramref name="n"/> at output position <paramref name="output"/> (row-major
        /// over <paramref name="outputSize"/>) lies in the flattened input of spatial sizes <paramref name="size"/>; -1
        /// where it reads zero padding.</summary>
        public long[] PatchPositions(int n, long output, int[] outputSize, int[] size)
        {
            var rank = SpatialRank;
            var origin = new int[rank];
            for (var a = rank - 1; a >= 0; a--)
            {
                origin[a] = (int)(output % outputSize[a]) * _stride[a] - Pads(a, size[a]).Before;
                output /= outputSize[a];
            }
            var kernelLength = _kernel.Aggregate(1, (x, y) => x * y);
            var plane = size.Aggregate(1L, (x, y) => x * y);
            // Each kernel offset's place in the plane (or -1), the same for every channel.
            var offsets = new long[kernelLength];
            var k = new int[rank];
            for (var i = 0; i < kernelLength; i++)
            {
                long flat = 0;
                for (var a = 0; a < rank && flat >= 0; a++)
                {
                    var at = origin[a] + k[a] * _dilation[a];
                    flat = at >= 0 && at < size[a] ? flat * size[a] + at : -1;
                }
                offsets[i] = flat;
                for (var a = rank - 1; a >= 0 && ++k[a] == _kernel[a]; a--)
                    k[a] = 0;
            }
            var patch = new long[Channels * kernelLength];
            for (var c = 0; c < Channels; c++)
            {
                var start = ((long)n * Channels + c) * plane;
                for (var i = 0; i < kernelLength; i++)
                    patch[c * kernelLength + i] = offsets[i] >= 0 ? start + offsets[i] : -1;
            }
            return patch;
        }
    }
}
