using OnnxQuant.Frontend;
using OnnxQuant.Passes.Calibration;
using OnnxQuant.Passes.Quantization;
using OnnxQuant.Passes.Units;
using Attribute = OnnxQuant.Frontend.Attribute;

namespace OnnxQuant.Passes.Rewrite;

/// <summary>The bits chosen for every output channel of a layer (channels of one unit share a width).</summary>
public sealed record LayerPlan(QuantLayer Layer, int[] ChannelBits)
{
    public int MaxBits => ChannelBits.Max();

    /// <summary>The layer whose weight values this one shares (<see cref="WeightTie"/>): where both quantize to the same
    /// tensors, the artifact keeps the other's.</summary>
    public string? SharesWeightOf { get; init; }
}

/// <summary>How one layer's weight was stored: container type, ideal packed bits and actual bytes.</summary>
/// <remarks>Format "qdq-split": the channels are split by <see cref="Containers"/>, <see cref="Container"/> is the widest.</remarks>
public sealed record LayerStorage(string Layer, string Format, DataType Container, int MaxBits, long Weights,
    long IdealBits, long Bytes, long FloatBytes)
{
    /// <summary>Every container the layer's weight is stored in (one unless split).</summary>
    public IReadOnlyList<DataType> Containers { get; init; } = [Container];

    /// <summary>The layer whose quantized weight this one reads (tied layers); its own bytes are then what it adds
    /// beside it (a corrected or integer bias), and its float bytes are counted with that layer's.</summary>
    public string? SharesWeightOf { get; init; }

    /// <summary>The initializers the rewrite made for this layer.</summary>
    internal IReadOnlyList<string> Created { get; init; } = [];
}

/// <summary>What the rewrite produced.</summary>
/// <param name="Compensated">What compensated each layer's rounding (layers without input statistics get none).</param>
public sealed record RewriteResult(IReadOnlyList<LayerStorage> Layers, long Opset, long IrVersion, int ActivationPairs,
    IReadOnlyList<LayerCompensation>? Compensated = null)
{
    /// <summary>What the speed target placed; null for the size target.</summary>
    public SpeedPlacement? Speed { get; init; }

    /// <summary>Values the artifact computed from its weights alone, stored computed (<see cref="ArtifactConstants"/>).</summary>
    public int ConstantsFolded { get; init; }
}

/// <summary>The compensation one layer got: second-order rounding, and whether its bias absorbed the mean output shift
/// (<see cref="BiasNote"/> says why not when it could not).</summary>
public sealed record LayerCompensation(string Layer, bool Gptq, bool BiasCorrected, string? BiasNote)
{
    /// <summary>How far second-order rounding's input statistics were shrunk toward their diagonal (0 when the layer's
    /// rows outnumbered its inputs); null without second-order rounding.</summary>
    public double? Shrinkage { get; init; }
}

/// <summary>
/// Rewrites a model to QDQ form. Weights: each quantized layer's float initializer becomes signed integer
/// initializers in the smallest containers its channels need (INT2 for 2 bits, INT4 up to 4, else INT8; a layer whose
/// channels need several is split by container, see <see cref="ReplaceWithSplitDequantize"/>; values stay in each
/// channel's own b-bit range) plus per-channel scales, feeding DequantizeLinear on the output channel axis. With <see cref="WeightFormat.MatMulNBits"/>, MatMul layers become com.microsoft MatMulNBits instead
/// (blocked, 2/4/8-bit containers since ONNX Runtime refuses 3). Activations: each float tensor entering a quantized
/// layer gets one QuantizeLinear/DequantizeLinear pair (uint8 for 8 bits, uint16 for 16) from its calibrated range (except MatMulNBits, which is weight-only),
/// shared by all quantized consumers. Finally the opset is raised to what the containers need (INT4 and UINT16: 21,
/// INT2: 25) through <see cref="OpsetConverter"/>.
/// </summary>
public static class QdqRewriter
{
    public const string MicrosoftDomain = "com.microsoft";

    /// <param name="actBits">Bits of the activations entering quantized layers (0 = weight-only).</param>
    /// <param name="int2">
    /// Layers whose 2-bit weights stay in INT4 containers (and 5-6-bit ones in INT8) with the same values: all of them
    /// (opset 21 instead of 25) for models with ops the runtime cannot load at opset 25, or those the runtime fuses
    /// into kernels without INT2 (<see cref="Int2Exclusions"/>). Null: none.
    /// </param>
    /// <param name="statistics">Input statistics per layer name, for <see cref="RewriteOptions.Compensation"/>; layers
    /// without them are rounded to nearest.</param>
    /// <param name="memo">Weights already quantized at each width (by the curves); null = quantize here.</param>
    public static RewriteResult Apply(Model model, IReadOnlyList<LayerPlan> plans, CalibrationTable? calibration, RewriteOptions options,
        int actBits, Int2Exclusions? int2 = null, Func<string, InputStatistics?>? statistics = null, CompensationMemo? memo = null,
        IReadOnlySet<string>? quantizedOutputs = null)
    {
        if (options.Deploy == DeployTarget.Speed)
            return SpeedRewriter.Apply(model, plans, calibration
                ?? throw new InvalidOperationException("the speed target needs calibrated activations"), options, statistics, memo, quantizedOutputs).Result;
        var compensated = new List<LayerCompensation>();
        var graph = model.Graph;
        var storage = new List<LayerStorage>();
        long requiredOpset = 13; // per-axis DequantizeLinear
        var usesMicrosoft = false;
        var quantizedNodes = new HashSet<Node>(ReferenceEqualityComparer.Instance);
        foreach (var plan in plans)
        {
            var layer = plan.Layer;
            var weightValue = graph.FindInitializer(layer.WeightName)
                ?? throw new InvalidOperationException($"weight '{layer.WeightName}' of layer '{layer.Name}' not found");
            var node = weightValue.Uses.Single().Node;
            using var created = new CreatedInitializers(graph, storage);
            var weights = weightValue.Initializer!.ToFloatArray();
            var floatBytes = weightValue.Initializer.ByteSize;
            var layout = layer.Layout(options.Format, options.BlockSize);
            var quantized = Quantize(graph, node, plan, weights, layout, options.Compensation, statistics?.Invoke(layer.Name), compensated, memo);
            var ideal = IdealBits(layer, plan.ChannelBits);
            if (options.Format == WeightFormat.MatMulNBits && layer.OpType == "MatMul")
            {
                var bytes = ReplaceWithMatMulNBits(graph, node, layer, quantized, plan.MaxBits, options.BlockSize);
                storage.Add(new LayerStorage(layer.Name, "matmulnbits", DataType.UInt8, plan.MaxBits, layer.Size, ideal, bytes, floatBytes));
                usesMicrosoft = true;
                continue; // weight-only: no activation Q/DQ in front of MatMulNBits
            }
            else
            {
                // A layer the runtime fuses into a kernel without INT2 keeps its split 5-6-bit weights: their UINT2
                // part is joined by an Add, which no integer kernel absorbs.
                var packed = PackedWidths(layer, plan.ChannelBits, int2?.Allows(layer.Name) ?? true, !(int2?.All ?? false));
                var container = Container(packed.Max());
                var used = packed.Distinct().Order().ToArray();
                var containers = used.SelectMany(w => w == SplitWidth ? new[] { DataType.Int4, DataType.UInt2 } : [Container(w)]).Distinct().ToArray();
                foreach (var c in containers)
                    requiredOpset = Math.Max(requiredOpset, RequiredOpset(c));
                if (options.SplitContainers && (used.Length > 1 || used[0] == SplitWidth))
                {
                    var split = ReplaceWithSplitDequantize(graph, weightValue, layer, quantized, packed, used);
                    storage.Add(new LayerStorage(layer.Name, "qdq-split", container, plan.MaxBits, layer.Size, ideal, split, floatBytes) { Containers = containers });
                }
                else
                {
                    var bytes = ReplaceWithDequantize(graph, weightValue, layer, quantized, container);
                    storage.Add(new LayerStorage(layer.Name, "qdq", container, plan.MaxBits, layer.Size, ideal, bytes, floatBytes));
                }
            }
            quantizedNodes.Add(node);
        }

        var pairs = 0;
        if (actBits > 0 && calibration is not null)
        {
            pairs = InsertActivationQdq(graph, plans, quantizedNodes, calibration, t => options.Act16.Contains(t) ? 16 : actBits, out var wide);
            // UINT16 Q/DQ are opset 21's.
            if (wide)
                requiredOpset = Math.Max(requiredOpset, 21);
        }
        var opset = model.OpsetImports.Default ?? 1;
        if (opset < requiredOpset)
            OpsetConverter.Raise(model, requiredOpset);
        if (usesMicrosoft && !model.OpsetImports.Contains(MicrosoftDomain))
            model.OpsetImports[MicrosoftDomain] = 1;
        var finalOpset = model.OpsetImports.Default ?? requiredOpset;
        model.IrVersion = Math.Max(model.IrVersion, finalOpset >= 25 ? 12 : finalOpset >= 21 ? 10 : finalOpset >= 19 ? 9 : 7);
        graph.TopologicalSort();
        return new RewriteResult(storage, finalOpset, model.IrVersion, pairs, compensated);
    }

    /// <summary>
    /// A layer's weight values at its planned widths, compensated as <paramref name="compensation"/> asks when the layer
    /// has input statistics (its bias, if corrected, is changed in <paramref name="graph"/>); what it got is added to
    /// <paramref name="compensated"/>. Both deploy targets take their values from here.
    /// </summary>
    internal static WeightQuantization Quantize(Graph graph, Node node, LayerPlan plan, float[] weights, WeightLayout layout,
        Compensation compensation, InputStatistics? stats, List<LayerCompensation> compensated, CompensationMemo? memo)
    {
        var layer = plan.Layer;
        var gptq = stats is not null && compensation.HasFlag(Compensation.Gptq);
        var quantized = memo?.Quantize(layer.Name, weights, layout, plan.ChannelBits, () => stats, gptq)
            ?? Compensator.Quantize(weights, layout, plan.ChannelBits, stats, gptq);
        if (stats is not null && compensation != Compensation.None)
        {
            string? biasNote = null;
            if (compensation.HasFlag(Compensation.Bias))
                biasNote = CorrectBias(graph, node, layer, Compensator.OutputShift(weights, quantized.Dequantize(), layout, stats));
            compensated.Add(new LayerCompensation(layer.Name, gptq, compensation.HasFlag(Compensation.Bias) && biasNote is null, biasNote)
            {
                Shrinkage = gptq ? quantized.Shrinkage : null,
            });
        }
        return quantized;
    }

    /// <summary>5- and 6-bit channels of a split layer: stored as a 4-bit high part and a 2-bit low part.</summary>
    internal const int SplitWidth = 6;

    /// <summary>
    /// The packed width each output channel is stored at: 2 (INT2, where <paramref name="allowInt2"/>), 4 (INT4), 6
    /// (INT4 high part + UINT2 low part, where <paramref name="allowSplit"/>: the model loads at opset 25) or 8 (INT8).
    /// The widest is the layer's container.
    /// </summary>
    private static int[] PackedWidths(QuantLayer layer, int[] channelBits, bool allowInt2, bool allowSplit)
    {
        var widths = channelBits.Select(b => b <= 2 ? (allowInt2 ? 2 : 4) : b <= 4 ? 4 : b <= 6 && allowSplit ? SplitWidth : 8).ToArray();
        // ONNX Runtime 1.30 fuses DequantizeLinear(INT2) -> MatMul/Gemm into MatMulNBits and gets the wrong answer when
        // the output channels are not a multiple of 4 (checked by a test); such channels keep their 2-bit values in an
        // INT4 container. A split weight is not fused, but its INT2 part follows the same rule to stay on the safe side.
        var int2 = widths.Count(w => w == 2);
        if (int2 > 0 && layer.OpType != "Conv" && int2 % 4 != 0)
            for (var c = 0; c < widths.Length; c++)
                if (widths[c] == 2)
                    widths[c] = 4;
        return widths;
    }

    /// <summary>Signed container for a width: INT2, INT4 or INT8.</summary>
    public static DataType Container(int bits) => bits <= 2 ? DataType.Int2 : bits <= 4 ? DataType.Int4 : DataType.Int8;

    public static long RequiredOpset(DataType container) => container switch
    {
        DataType.Int2 or DataType.UInt2 => 25,
        DataType.Int4 => 21,
        _ => 13,
    };

    /// <summary>sum over channels of (weights per channel x channel bits).</summary>
    public static long IdealBits(QuantLayer layer, int[] channelBits) =>
        channelBits.Sum(b => (long)b) * (layer.Size / layer.Channels);

    /// <summary>Quantizes each channel at its own width, rounding to nearest.</summary>
    internal static WeightQuantization QuantizePerChannel(float[] weights, WeightLayout layout, int[] channelBits) =>
        Compensator.Quantize(weights, layout, channelBits, null, false);

    /// <summary>
    /// Subtracts the mean output shift from the layer's bias: Conv's B and Gemm's C (added when absent, C divided by
    /// beta, the shift scaled by alpha), or the constant [N] addend of an Add that alone consumes a MatMul. Returns why
    /// not when the layer has no such bias (then nothing changes).
    /// </summary>
    private static string? CorrectBias(Graph graph, Node node, QuantLayer layer, double[] shift)
    {
        var n = shift.Length;
        switch (node.OpType)
        {
            case "Conv":
                return Fold(graph, node, 2, layer, shift, 1.0);
            case "Gemm":
            {
                var beta = node.GetFloat("beta", 1f);
                if (beta == 0f && node.Inputs.Count > 2 && node.Inputs[2] is not null)
                    return "Gemm with beta 0";
                var alpha = node.GetFloat("alpha", 1f);
                if (node.Inputs.Count <= 2 || node.Inputs[2] is null)
                    node.SetAttribute(Attribute.FromFloat("beta", 1f));
                return Fold(graph, node, 2, layer, shift, alpha / (node.Inputs.Count > 2 && node.Inputs[2] is not null ? beta : 1f));
            }
            case "MatMul":
            {
                var output = node.Outputs[0];
                if (output.Uses.Count != 1 || output.IsGraphOutput || output.Uses[0].Node is not { OpType: "Add" } add)
                    return "MatMul without a bias Add";
                var other = add.Inputs[1 - output.Uses[0].InputIndex];
                if (other is not { IsInitializer: true } || other.Uses.Count != 1 || other.Initializer!.DataType != DataType.Float
                    || other.Initializer.ElementCount != n || other.Initializer.Dims[^1] != n)
                    return "MatMul whose Add does not take a constant of its own per output channel";
                return Fold(graph, add, 1 - output.Uses[0].InputIndex, layer, shift, 1.0);
            }
            default:
                return $"{node.OpType} has no bias";
        }
    }

    private static string? Fold(Graph graph, Node node, int index, QuantLayer layer, double[] shift, double factor)
    {
        var n = shift.Length;
        var current = node.Inputs.Count > index ? node.Inputs[index] : null;
        if (current is null)
        {
            var bias = shift.Select(s => (float)(-s * factor)).ToArray();
            while (node.Inputs.Count < index)
                node.AppendInput(null);
            var value = graph.AddInitializer(graph.UniqueName(layer.Name + "_bias_correction"), Tensor.FromFloats("b", [n], bias));
            if (node.Inputs.Count == index)
                node.AppendInput(value);
            else
                node.ReplaceInput(index, value);
            return null;
        }
        if (!current.IsInitializer || current.Initializer!.DataType != DataType.Float || current.Initializer.ElementCount != n)
            return "bias is not a constant with one value per output channel";
        var values = current.Initializer.ToFloatArray();
        for (var c = 0; c < n; c++)
            values[c] = (float)(values[c] - shift[c] * factor);
        var replacement = Tensor.FromFloats(current.Name, current.Initializer.GetDims(), values);
        if (current.Uses.Count == 1)
            graph.SetInitializer(current, replacement);
        else
            node.ReplaceInput(index, graph.AddInitializer(graph.UniqueName(layer.Name + "_bias_corrected"), replacement));
        return null;
    }

    internal static long ReplaceWithDequantize(Graph graph, Value weightValue, QuantLayer layer, WeightQuantization q, DataType container)
    {
        var shape = layer.WeightShape;
        var raw = Pack(q.Values, container);
        var baseName = layer.WeightName;
        var qValue = graph.AddInitializer(graph.UniqueName(baseName + "_quantized"), Tensor.FromRaw("q", container, shape, raw));
        var scale = graph.AddInitializer(graph.UniqueName(baseName + "_scale"), Tensor.FromFloats("s", [q.Scales.Length], q.Scales));
        var zero = graph.AddInitializer(graph.UniqueName(baseName + "_zero_point"),
            Tensor.FromRaw("z", container, [q.Scales.Length], new byte[DataTypes.ByteCount(container, q.Scales.Length)]));
        var dq = new Node("DequantizeLinear", [qValue, scale, zero], [graph.UniqueName(baseName + "_dequantized")],
            name: graph.UniqueName(layer.Name + "_weight_dq"), attributes: [Attribute.FromInt("axis", layer.ChannelAxis)]);
        dq.Outputs[0].Type = new TensorType(DataType.Float, Shape.Of(shape));
        graph.InsertBefore(weightValue.Uses[0].Node, dq);
        graph.ReplaceAllUsesWith(weightValue, dq.Outputs[0]);
        graph.RemoveInitializer(weightValue);
        return raw.Length + q.Scales.Length * 4L + DataTypes.ByteCount(container, q.Scales.Length);
    }

    /// <summary>
    /// Stores a layer channel by channel in the narrowest packing each channel needs (<paramref name="packed"/>): one
    /// integer initializer per packing (the channels of that packing, in order) with its own DequantizeLinear,
    /// concatenated along the channel axis and put back into channel order by a Gather (each left out when not needed).
    /// 5- and 6-bit channels have no container of their own: q = 4 hi + lo with hi in INT4 and lo in UINT2 (6 bits),
    /// dequantized exactly to floats (scales 4 and 1) and added, then multiplied by the channel scale. Every
    /// dequantized value is the same, bit for bit, as from one INT8 container: q x scale rounded once.
    /// </summary>
    internal static long ReplaceWithSplitDequantize(Graph graph, Value weightValue, QuantLayer layer, WeightQuantization q,
        int[] packed, int[] used)
    {
        var shape = layer.WeightShape;
        var axis = layer.ChannelAxis;
        var channels = (int)shape[axis];
        long outer = 1, inner = 1;
        for (var d = 0; d < axis; d++)
            outer *= shape[d];
        for (var d = axis + 1; d < shape.Length; d++)
            inner *= shape[d];
        var baseName = layer.WeightName;
        var before = weightValue.Uses[0].Node;
        var parts = new List<Value>();
        var order = new List<int>();
        long bytes = 0;
        Value Add(Node node, long[] dims)
        {
            node.Outputs[0].Type = new TensorType(DataType.Float, Shape.Of(dims));
            graph.InsertBefore(before, node);
            return node.Outputs[0];
        }
        Value Dequantize(string suffix, sbyte[] values, DataType container, long[] dims, float[] scales, bool perChannel)
        {
            var raw = Pack(values, container);
            var qValue = graph.AddInitializer(graph.UniqueName(baseName + suffix + "_quantized"), Tensor.FromRaw("q", container, dims, raw));
            var scale = graph.AddInitializer(graph.UniqueName(baseName + suffix + "_scale"),
                Tensor.FromFloats("s", perChannel ? [scales.Length] : [], scales));
            var zeroCount = perChannel ? scales.Length : 1;
            var zero = graph.AddInitializer(graph.UniqueName(baseName + suffix + "_zero_point"),
                Tensor.FromRaw("z", container, perChannel ? [zeroCount] : [], new byte[DataTypes.ByteCount(container, zeroCount)]));
            bytes += raw.Length + scales.Length * 4L + DataTypes.ByteCount(container, zeroCount);
            return Add(new Node("DequantizeLinear", [qValue, scale, zero], [graph.UniqueName(baseName + suffix + "_dequantized")],
                name: graph.UniqueName(layer.Name + "_weight" + suffix + "_dq"),
                attributes: perChannel ? [Attribute.FromInt("axis", axis)] : []), dims);
        }
        foreach (var width in used)
        {
            var members = Enumerable.Range(0, channels).Where(c => packed[c] == width).ToArray();
            var values = new sbyte[outer * members.Length * inner];
            for (long o = 0; o < outer; o++)
                for (var m = 0; m < members.Length; m++)
                    Array.Copy(q.Values, (o * channels + members[m]) * inner, values, (o * members.Length + m) * inner, inner);
            var partShape = (long[])shape.Clone();
            partShape[axis] = members.Length;
            var scales = members.Select(c => q.Scales[c]).ToArray();
            if (width != SplitWidth)
                parts.Add(Dequantize("_int" + width, values, Container(width), partShape, scales, perChannel: true));
            else
            {
                // values in [-32, 31]: hi = floor(q / 4) in [-8, 7], lo = q - 4 hi in [0, 3]; both exact as floats.
                var hi = values.Select(v => (sbyte)(v >> 2)).ToArray();
                var lo = values.Select(v => (sbyte)(v & 3)).ToArray();
                var high = Dequantize("_int6_high", hi, DataType.Int4, partShape, [4f], perChannel: false);
                var low = Dequantize("_int6_low", lo, DataType.UInt2, partShape, [1f], perChannel: false);
                var sum = Add(new Node("Add", [high, low], [graph.UniqueName(baseName + "_int6_integers")], name: graph.UniqueName(layer.Name + "_weight_int6_add")), partShape);
                var scaleShape = Enumerable.Repeat(1L, shape.Length).ToArray();
                scaleShape[axis] = members.Length;
                var scale = graph.AddInitializer(graph.UniqueName(baseName + "_int6_scale"), Tensor.FromFloats("s", scaleShape, scales));
                bytes += scales.Length * 4L;
                parts.Add(Add(new Node("Mul", [sum, scale], [graph.UniqueName(baseName + "_int6_dequantized")], name: graph.UniqueName(layer.Name + "_weight_int6_mul")), partShape));
            }
            order.AddRange(members);
        }
        var result = parts[0];
        if (parts.Count > 1)
            result = Add(new Node("Concat", parts, [graph.UniqueName(baseName + "_dequantized_parts")],
                name: graph.UniqueName(layer.Name + "_weight_concat"), attributes: [Attribute.FromInt("axis", axis)]), shape);
        if (!order.Select((c, i) => c == i).All(x => x))
        {
            var position = new int[channels]; // where channel c sits in the concatenation
            for (var i = 0; i < order.Count; i++)
                position[order[i]] = i;
            var raw = new byte[channels * 4L];
            for (var c = 0; c < channels; c++)
                BitConverter.TryWriteBytes(raw.AsSpan(c * 4), position[c]);
            var indices = graph.AddInitializer(graph.UniqueName(baseName + "_channel_order"), Tensor.FromRaw("i", DataType.Int32, [channels], raw));
            result = Add(new Node("Gather", [result, indices], [graph.UniqueName(baseName + "_dequantized")],
                name: graph.UniqueName(layer.Name + "_weight_gather"), attributes: [Attribute.FromInt("axis", axis)]), shape);
            bytes += raw.Length;
        }
        graph.ReplaceAllUsesWith(weightValue, result);
        graph.RemoveInitializer(weightValue);
        return bytes;
    }

    /// <summary>Packs signed values into a container's raw bytes (sub-byte types low bits first).</summary>
    internal static byte[] Pack(sbyte[] values, DataType container)
    {
        if (container == DataType.Int8)
            return values.Select(v => (byte)v).ToArray();
        var bits = DataTypes.BitWidth(container);
        var raw = new byte[DataTypes.ByteCount(container, values.Length)];
        var mask = (1 << bits) - 1;
        for (var i = 0; i < values.Length; i++)
            SubByte.Set(raw, container, i, values[i] & mask);
        return raw;
    }

    private static long ReplaceWithMatMulNBits(Graph graph, Node node, QuantLayer layer, WeightQuantization q, int maxBits, int blockSize)
    {
        // ORT's MatMulNBits takes 2, 4 or 8 bits; other widths go into the next container with their own range.
        var bits = maxBits <= 2 ? 2 : maxBits <= 4 ? 4 : 8;
        var k = (int)layer.WeightShape[0];
        var n = (int)layer.WeightShape[1];
        var blocks = (k + blockSize - 1) / blockSize;
        var blob = blockSize * bits / 8;
        var packed = new byte[(long)n * blocks * blob];
        var offset = 1 << (bits - 1); // the default zero point: stored = q + 2^(bits-1)
        for (var col = 0; col < n; col++)
            for (var row = 0; row < k; row++)
            {
                var stored = q.Values[row * n + col] + offset;
                var blk = row / blockSize;
                var within = row % blockSize;
                var bitPos = within * bits;
                var index = ((long)col * blocks + blk) * blob + bitPos / 8;
                packed[index] |= (byte)(stored << (bitPos % 8));
            }
        // Padding rows of the last block stay at the zero point so they contribute nothing.
        for (var col = 0; col < n; col++)
            for (var row = k; row < blocks * blockSize; row++)
            {
                var blk = row / blockSize;
                var bitPos = row % blockSize * bits;
                packed[((long)col * blocks + blk) * blob + bitPos / 8] |= (byte)(offset << (bitPos % 8));
            }
        var baseName = layer.WeightName;
        var b = graph.AddInitializer(graph.UniqueName(baseName + "_nbits"), Tensor.FromRaw("b", DataType.UInt8, [n, blocks, blob], packed));
        var scales = graph.AddInitializer(graph.UniqueName(baseName + "_nbits_scales"), Tensor.FromFloats("s", [(long)n * blocks], q.Scales));
        var weightValue = node.Inputs[1]!;
        SwapInMatMulNBits(graph, node, weightValue, layer, [node.Inputs[0], b, scales], k, n, bits, blockSize, accuracyLevel: 0);
        return packed.Length + (long)n * blocks * 4;
    }

    /// <summary>
    /// Puts a MatMulNBits node with <paramref name="inputs"/> where <paramref name="node"/> was (its output keeps its
    /// name, so features and graph outputs still find it) and drops the float weight once nothing reads it.
    /// </summary>
    internal static void SwapInMatMulNBits(Graph graph, Node node, Value weightValue, QuantLayer layer, IReadOnlyList<Value?> inputs,
        long k, long n, int bits, int blockSize, int accuracyLevel)
    {
        var output = node.Outputs[0];
        var replacement = new Node("MatMulNBits", inputs, [graph.UniqueName(output.Name + "_nbits")],
            domain: MicrosoftDomain, name: graph.UniqueName(layer.Name + "_nbits"),
            attributes:
            [
                Attribute.FromInt("K", k), Attribute.FromInt("N", n), Attribute.FromInt("bits", bits),
                Attribute.FromInt("block_size", blockSize), Attribute.FromInt("accuracy_level", accuracyLevel),
            ]);
        replacement.Outputs[0].Type = output.Type;
        graph.InsertBefore(node, replacement);
        var name = output.Name;
        graph.RemoveNode(node, force: true);
        graph.ReplaceAllUsesWith(output, replacement.Outputs[0], replaceGraphOutputs: true);
        replacement.Outputs[0].Name = name;
        if (weightValue.Uses.Count == 0)
            graph.RemoveInitializer(weightValue);
    }

    private static int InsertActivationQdq(Graph graph, IReadOnlyList<LayerPlan> plans, HashSet<Node> quantized,
        CalibrationTable calibration, Func<string, int> bitsOf, out bool wide)
    {
        var pairs = 0;
        wide = false;
        foreach (var name in plans.Select(p => p.Layer.Activation).Distinct())
        {
            var value = graph.FindValue(name);
            var range = calibration.Find(name);
            if (value is null || range is null)
                continue;
            var consumers = value.Uses.Where(u => u.InputIndex == 0 && quantized.Contains(u.Node)).ToList();
            if (consumers.Count == 0)
                continue;
            var actBits = bitsOf(name);
            var container = actBits == 16 ? DataType.UInt16 : DataType.UInt8;
            wide |= actBits == 16;
            var p = QuantMath.ActivationParameters(range.Min, range.Max, actBits);
            var scale = graph.AddInitializer(graph.UniqueName(name + "_act_scale"), Tensor.FromFloats("s", [], [p.Scale]));
            var zeroBytes = container == DataType.UInt16 ? BitConverter.GetBytes((ushort)p.ZeroPoint) : [(byte)p.ZeroPoint];
            var zero = graph.AddInitializer(graph.UniqueName(name + "_act_zero_point"), Tensor.FromRaw("z", container, [], zeroBytes));
            var qNode = new Node("QuantizeLinear", [value, scale, zero], [graph.UniqueName(name + "_quantized")], name: graph.UniqueName(name + "_act_q"));
            qNode.Outputs[0].Type = new TensorType(container, value.Type?.Shape);
            var dqNode = new Node("DequantizeLinear", [qNode.Outputs[0], scale, zero], [graph.UniqueName(name + "_dequantized")], name: graph.UniqueName(name + "_act_dq"));
            dqNode.Outputs[0].Type = new TensorType(DataType.Float, value.Type?.Shape);
            var first = consumers.Select(c => graph.IndexOf(c.Node)).Min();
            graph.InsertNode(first, dqNode);
            graph.InsertNode(first, qNode);
            foreach (var use in consumers)
                use.Node.ReplaceInput(use.InputIndex, dqNode.Outputs[0]);
            pairs++;
        }
        return pairs;
    }
}

/// <summary>
/// The layers of one compile whose 2-bit weights stay out of INT2 containers (in INT4, the same values), learned from
/// ONNX Runtime as the artifacts are verified. ONNX Runtime 1.32 fuses a DequantizeLinear(INT2) -> Conv ->
/// QuantizeLinear group into QLinearConv, which takes no INT2, and then refuses the whole model: only such layers need
/// the larger container, the others keep INT2. Whether a layer is fused depends on its neighbours, which every target
/// quantizes alike, so what one target learns holds for the others. A model that fails for another reason (an op with
/// no kernel at opset 25) keeps every layer out of the INT2 family, the split 5-6-bit weights' UINT2 part included
/// (<see cref="All"/>).
/// </summary>
public sealed class Int2Exclusions
{
    private readonly SortedSet<string> _layers = new(StringComparer.Ordinal);

    /// <summary>Every layer is kept out.</summary>
    public bool All { get; private set; }

    /// <summary>The layers kept out one by one, in name order.</summary>
    public IReadOnlyCollection<string> Layers => _layers;

    public bool Allows(string layer) => !All && !_layers.Contains(layer);

    private readonly Dictionary<string, IReadOnlyList<string>> _tied = new(StringComparer.Ordinal);

    /// <summary>Layers that store one weight (<see cref="WeightTie"/>): keeping one out keeps all out, so their
    /// containers stay alike.</summary>
    public void Tie(IEnumerable<IReadOnlyList<string>> groups)
    {
        foreach (var group in groups)
            foreach (var layer in group)
                _tied[layer] = group;
    }

    /// <summary>Keeps <paramref name="layer"/> (and the layers tied to it) out; false when it already was.</summary>
    public bool Add(string layer)
    {
        if (All || !_layers.Add(layer))
            return false;
        if (_tied.TryGetValue(layer, out var group))
            _layers.UnionWith(group);
        return true;
    }

    public void ExcludeAll() => All = true;

    /// <summary>Every layer out from the start (what a caller that cannot learn asks for).</summary>
    public static Int2Exclusions Everything()
    {
        var all = new Int2Exclusions();
        all.ExcludeAll();
        return all;
    }
}

/// <summary>
/// Notes the initializers a layer's rewrite adds and, when disposed, records them on the storage entry the rewrite
/// added last (tied layers' copies are matched against them, see <see cref="RewriteStage"/>).
/// </summary>
internal sealed class CreatedInitializers : IDisposable
{
    private readonly Graph _graph;
    private readonly List<LayerStorage> _storage;
    private readonly HashSet<Value> _before;
    private readonly int _entries;

    public CreatedInitializers(Graph graph, List<LayerStorage> storage)
    {
        _graph = graph;
        _storage = storage;
        _before = new HashSet<Value>(graph.Initializers, ReferenceEqualityComparer.Instance);
        _entries = storage.Count;
    }

    public void Dispose()
    {
        if (_storage.Count != _entries + 1)
            return;
        _storage[^1] = _storage[^1] with { Created = _graph.Initializers.Where(v => !_before.Contains(v)).Select(v => v.Name).ToList() };
    }
}
