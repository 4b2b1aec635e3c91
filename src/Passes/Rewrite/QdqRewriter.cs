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
}

/// <summary>How one layer's weight was stored: container type, ideal packed bits and actual bytes.</summary>
public sealed record LayerStorage(string Layer, string Format, DataType Container, int MaxBits, long Weights,
    long IdealBits, long Bytes, long FloatBytes);

/// <summary>What the rewrite produced.</summary>
/// <param name="WeightOnlyLayers">Quantized layers left without activation Q/DQ (INT2 containers).</param>
public sealed record RewriteResult(IReadOnlyList<LayerStorage> Layers, long Opset, long IrVersion, int ActivationPairs,
    IReadOnlyList<string> WeightOnlyLayers)
{
    /// <summary>What the speed target placed; null for the size target.</summary>
    public SpeedPlacement? Speed { get; init; }
}

/// <summary>
/// Rewrites a model to QDQ form. Weights: each quantized layer's float initializer becomes a signed integer
/// initializer in the smallest container that holds its widest channel (INT2 for 2 bits, INT4 up to 4, else INT8;
/// values stay in each channel's own b-bit range) plus per-channel scales, feeding DequantizeLinear on the output
/// channel axis. With <see cref="WeightFormat.MatMulNBits"/>, MatMul layers become com.microsoft MatMulNBits instead
/// (blocked, 2/4/8-bit containers since ONNX Runtime refuses 3). Activations: each float tensor entering a quantized
/// layer gets one QuantizeLinear/DequantizeLinear pair (uint8 for 8 bits, uint16 for 16) from its calibrated range (except MatMulNBits, which is weight-only),
/// shared by all quantized consumers. Finally the opset is raised to what the containers need (INT4 and UINT16: 21,
/// INT2: 25) through <see cref="OpsetConverter"/>.
/// </summary>
public static class QdqRewriter
{
    public const string MicrosoftDomain = "com.microsoft";

    /// <param name="actBits">Bits of the activations entering quantized layers (0 = weight-only).</param>
    /// <param name="allowInt2">
    /// False keeps 2-bit weights in INT4 containers (same values, opset 21 instead of 25), for models with ops that
    /// the runtime cannot load at opset 25.
    /// </param>
    public static RewriteResult Apply(Model model, IReadOnlyList<LayerPlan> plans, CalibrationTable? calibration, RewriteOptions options,
        int actBits, bool allowInt2 = true)
    {
        if (options.Deploy == DeployTarget.Speed)
            return SpeedRewriter.Apply(model, plans, calibration
                ?? throw new InvalidOperationException("the speed target needs calibrated activations"), options.BlockSize).Result;
        var graph = model.Graph;
        var storage = new List<LayerStorage>();
        long requiredOpset = 13; // per-axis DequantizeLinear
        var usesMicrosoft = false;
        var quantizedNodes = new HashSet<Node>(ReferenceEqualityComparer.Instance);
        var weightOnly = new List<string>();
        foreach (var plan in plans)
        {
            var layer = plan.Layer;
            var weightValue = graph.FindInitializer(layer.WeightName)
                ?? throw new InvalidOperationException($"weight '{layer.WeightName}' of layer '{layer.Name}' not found");
            var node = weightValue.Uses.Single().Node;
            var weights = weightValue.Initializer!.ToFloatArray();
            var floatBytes = weightValue.Initializer.ByteSize;
            var layout = layer.Layout(options.Format, options.BlockSize);
            var quantized = QuantizePerChannel(weights, layout, plan.ChannelBits);
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
                var container = Container(plan.MaxBits);
                if (container == DataType.Int2 && !allowInt2)
                    container = DataType.Int4;
                // ONNX Runtime 1.30 fuses DequantizeLinear(INT2) -> MatMul/Gemm into MatMulNBits and gets the wrong
                // answer when the output channels are not a multiple of 4 (checked by a test); such layers keep their
                // 2-bit values in an INT4 container.
                if (container == DataType.Int2 && layer.OpType != "Conv" && layer.Channels % 4 != 0)
                    container = DataType.Int4;
                requiredOpset = Math.Max(requiredOpset, RequiredOpset(container));
                var bytes = ReplaceWithDequantize(graph, weightValue, layer, quantized, container);
                storage.Add(new LayerStorage(layer.Name, "qdq", container, plan.MaxBits, layer.Size, ideal, bytes, floatBytes));
                // ONNX Runtime 1.30 fuses quantized activations with DQ weights into integer kernels that refuse INT2,
                // so INT2 layers stay weight-only (DQ -> op, which it runs and fuses into MatMulNBits).
                if (container == DataType.Int2)
                {
                    weightOnly.Add(layer.Name);
                    continue;
                }
            }
            quantizedNodes.Add(node);
        }

        var pairs = 0;
        if (actBits > 0 && calibration is not null)
        {
            if (actBits == 16)
                requiredOpset = Math.Max(requiredOpset, 21);
            pairs = InsertActivationQdq(graph, plans, quantizedNodes, calibration, actBits);
        }
        var opset = model.OpsetImports.Default ?? 1;
        if (opset < requiredOpset)
            OpsetConverter.Raise(model, requiredOpset);
        if (usesMicrosoft && !model.OpsetImports.Contains(MicrosoftDomain))
            model.OpsetImports[MicrosoftDomain] = 1;
        var finalOpset = model.OpsetImports.Default ?? requiredOpset;
        model.IrVersion = Math.Max(model.IrVersion, finalOpset >= 25 ? 12 : finalOpset >= 21 ? 10 : finalOpset >= 19 ? 9 : 7);
        graph.TopologicalSort();
        return new RewriteResult(storage, finalOpset, model.IrVersion, pairs, weightOnly);
    }

    /// <summary>Signed container for a width: INT2, INT4 or INT8.</summary>
    public static DataType Container(int bits) => bits <= 2 ? DataType.Int2 : bits <= 4 ? DataType.Int4 : DataType.Int8;

    public static long RequiredOpset(DataType container) => container switch
    {
        DataType.Int2 => 25,
        DataType.Int4 => 21,
        _ => 13,
    };

    /// <summary>sum over channels of (weights per channel x channel bits).</summary>
    public static long IdealBits(QuantLayer layer, int[] channelBits) =>
        channelBits.Sum(b => (long)b) * (layer.Size / layer.Channels);

    /// <summary>Quantizes each channel at its own width (one pass per distinct width).</summary>
    internal static WeightQuantization QuantizePerChannel(float[] weights, WeightLayout layout, int[] channelBits)
    {
        var distinct = channelBits.Distinct().OrderBy(b => b).ToArray();
        if (distinct.Length == 1)
            return QuantMath.QuantizeWeight(weights, layout, distinct[0]);
        var byBits = distinct.ToDictionary(b => b, b => QuantMath.QuantizeWeight(weights, layout, b));
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
        var output = node.Outputs[0];
        var replacement = new Node("MatMulNBits", [node.Inputs[0], b, scales], [graph.UniqueName(output.Name + "_nbits")],
            domain: MicrosoftDomain, name: graph.UniqueName(layer.Name + "_nbits"),
            attributes:
            [
                Attribute.FromInt("K", k), Attribute.FromInt("N", n), Attribute.FromInt("bits", bits),
                Attribute.FromInt("block_size", blockSize), Attribute.FromInt("accuracy_level", 0),
            ]);
        replacement.Outputs[0].Type = output.Type;
        graph.InsertBefore(node, replacement);
        var name = output.Name;
        graph.RemoveNode(node, force: true);
        graph.ReplaceAllUsesWith(output, replacement.Outputs[0], replaceGraphOutputs: true);
        // The tensor keeps its name so features and graph outputs still find it.
        replacement.Outputs[0].Name = name;
        if (weightValue.Uses.Count == 0)
            graph.RemoveInitializer(weightValue);
        return packed.Length + (long)n * blocks * 4;
    }

    private static int InsertActivationQdq(Graph graph, IReadOnlyList<LayerPlan> plans, HashSet<Node> quantized,
        CalibrationTable calibration, int actBits)
    {
        var container = actBits == 16 ? DataType.UInt16 : DataType.UInt8;
        var pairs = 0;
        foreach (var name in plans.Select(p => p.Layer.Activation).Distinct())
        {
            var value = graph.FindValue(name);
            var range = calibration.Find(name);
            if (value is null || range is null)
                continue;
            var consumers = value.Uses.Where(u => u.InputIndex == 0 && quantized.Contains(u.Node)).ToList();
            if (consumers.Count == 0)
                continue;
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
