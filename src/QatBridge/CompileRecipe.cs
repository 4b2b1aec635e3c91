using OnnxQuant.Frontend;
using OnnxQuant.Passes.Artifact;

namespace OnnxQuant.QatBridge;

/// <summary>
/// Turns a compile report into a QAT recipe: the allocated width of every quantized layer, the head layers at their
/// width, and the layers the compiler left float. The trainer then starts from the compiler's plan instead of uniform
/// bits.
/// </summary>
public static class CompileRecipe
{
    /// <param name="report">The compile report of one target.</param>
    /// <param name="sourceModel">The float model the report is for (recorded in the recipe).</param>
    /// <param name="attentionBits">Bits of attention q/k/v and the softmax output, which the compiler does not allocate
    /// (0: float, as in the compiled model).</param>
    /// <param name="artifact">The compiled model of the report. When given, every layer also carries the grid the
    /// compiler chose: its weight DequantizeLinear scales and its input QuantizeLinear scale and zero point (act_bits 0
    /// for a weight-only layer), so the student starts at the artifact's outputs (recipe revision 2).</param>
    /// <param name="weightsFile">With an artifact: the .npz file name (beside the recipe) that
    /// <see cref="WriteArtifactWeights"/> writes, recorded in the recipe's <c>weights</c>.</param>
    public static QatRecipe FromReport(CompileReport report, string sourceModel, int attentionBits, Model? artifact = null,
        string? weightsFile = null)
    {
        // Without activation quantization (weight-only compiles) the trainer still needs a width; 8 keeps the
        // activations as close to float as its quantizers allow.
        var actBits = report.ActBits is >= BitWidths.MinBits and <= BitWidths.MaxBits ? report.ActBits : 8;
        // A layer split into channel groups can carry several widths; the trainer quantizes whole layers, so it takes
        // the widest, which never costs accuracy against the plan.
        var allocated = report.Units
            .GroupBy(u => u.Layer, StringComparer.Ordinal)
            .Select(g => (Layer: g.Key, Bits: g.Max(u => u.Bits)));
        var heads = report.Heads.Select(h => (h.Layer, h.Bits));
        var layers = new Dictionary<string, LayerRecipe>(StringComparer.Ordinal);
        foreach (var (layer, bits) in allocated.Concat(heads))
        {
            var name = ModulePath(layer);
            // Two ONNX nodes can come from one module (e.g. a Linear exported as MatMul + Add); keep the widest.
            if (!layers.TryGetValue(name, out var existing) || existing.WeightBits < bits)
                layers[name] = new LayerRecipe(name, Math.Max(bits, BitWidths.MinBits), actBits);
        }
        if (artifact is not null)
        {
            var grids = ArtifactGrids(artifact);
            foreach (var name in layers.Keys.ToList())
            {
                if (!grids.TryGetValue(name, out var grid))
                    throw new QatBridgeException($"layer '{name}' of the report has no DequantizeLinear weight in the compiled model");
                layers[name] = layers[name] with
                {
                    WeightScales = grid.WeightScales,
                    ActBits = grid.ActScale is null ? BitWidths.FloatBits : grid.ActBits ?? actBits,
                    ActScale = grid.ActScale,
                    ActZeroPoint = grid.ActZeroPoint,
                };
            }
        }
        var floatLayers = report.Skipped.Select(s => ModulePath(s.Name)).Where(n => !layers.ContainsKey(n));
        var defaultWeight = (int)Math.Round(report.TargetBits, MidpointRounding.AwayFromZero);
        var defaults = new BitWidths(Math.Clamp(defaultWeight, BitWidths.MinBits, BitWidths.MaxBits), actBits, attentionBits);
        var revision = artifact is not null || attentionBits == BitWidths.FloatBits ? QatRecipe.LatestRevision : 1;
        return QatRecipe.FromAllocation(sourceModel, defaults, layers.Values, floatLayers, revision) with
        {
            Weights = artifact is null ? null : weightsFile,
        };
    }

    /// <summary>
    /// A layer's post-training result in a compiled QDQ model: its weight scales and input grid, and its dequantized
    /// weight (PyTorch layout: output channels first) and bias, which compensation may have changed.
    /// </summary>
    public sealed record LayerGrid(IReadOnlyList<float> WeightScales, float? ActScale, int? ActZeroPoint,
        float[] Weight, long[] WeightShape, float[]? Bias)
    {
        /// <summary>The input quantizer's width (8, or 16 in a UINT16 container); null when the input is float.</summary>
        public int? ActBits { get; init; }
    }

    /// <summary>
    /// Per module path, the grid of every node that reads a DequantizeLinear of an integer initializer (its weight):
    /// the per-channel weight scales, and when its first input comes through QuantizeLinear -> DequantizeLinear, that
    /// pair's scale and zero point. Nodes of one module (MatMul + Add) share the name; the weight node wins.
    /// </summary>
    public static IReadOnlyDictionary<string, LayerGrid> ArtifactGrids(Model artifact)
    {
        var grids = new Dictionary<string, LayerGrid>(StringComparer.Ordinal);
        var computed = new HashSet<Node>(ReferenceEqualityComparer.Instance);
        foreach (var node in artifact.Graph.AllNodes())
        {
            if (node.OpType == "DequantizeLinear" && node.Inputs[0] is { IsInitializer: true })
                computed.Add(node);
            if (node.OpType is "QuantizeLinear" or "DequantizeLinear")
                continue;
            // Nodes that only combine weight DequantizeLinears (the parts of a weight split by container) are no
            // layer; the layer that takes their result reads them below.
            if (node.OpType is "Add" or "Mul" or "Concat" or "Gather"
                && node.Inputs.Any(v => v?.Producer is { } p && computed.Contains(p))
                && node.Inputs.All(v => v is null || v.IsInitializer || v.ConstantValue is not null || (v.Producer is { } p && computed.Contains(p))))
            {
                computed.Add(node);
                continue;
            }
            var weight = node.Inputs.Skip(1).Select(v => v is null ? null : QuantizedWeight(v, node)).FirstOrDefault(w => w is not null);
            if (weight is null)
                continue;
            var scales = weight.Scales;
            float? actScale = null;
            int? zeroPoint = null;
            int? actWidth = null;
            if (node.Inputs[0]?.Producer is { OpType: "DequantizeLinear" } actDq && actDq.Inputs[0]?.Producer is { OpType: "QuantizeLinear" })
            {
                actScale = actDq.Inputs[1]?.ConstantValue?.ToFloatArray().Single();
                zeroPoint = actDq.Inputs.Count > 2 && actDq.Inputs[2]?.ConstantValue is { } z ? (int)z.ToFloatArray().Single() : 0;
                // A tensor --act16-tensors raised is in a UINT16 container.
                actWidth = actDq.Inputs.Count > 2 && actDq.Inputs[2]?.ConstantValue is { DataType: DataType.UInt16 or DataType.Int16 } ? 16 : 8;
            }
            var (values, shape) = Dequantize(weight, node);
            grids[ModulePath(node.Name)] = new LayerGrid(scales, actScale, actScale is null ? null : zeroPoint, values, shape, Bias(node)) { ActBits = actWidth };
        }
        return grids;
    }

    /// <summary>A layer's integer weight with one scale per channel along <paramref name="Axis"/>.</summary>
    private sealed record IntWeight(float[] Values, long[] Dims, int Axis, float[] Scales);

    /// <summary>
    /// The integer weight behind <paramref name="value"/>: a DequantizeLinear of an initializer, or (a weight the size
    /// target split by container) a Concat of such along their channel axis, optionally reordered by a Gather of
    /// constant indices on that axis. Null when the value is not a quantized weight.
    /// </summary>
    private static IntWeight? QuantizedWeight(Value value, Node layer)
    {
        switch (value.Producer)
        {
            case { OpType: "DequantizeLinear" } dq when dq.Inputs[0] is { IsInitializer: true }:
            {
                var scales = dq.Inputs[1]!.ConstantValue?.ToFloatArray()
                    ?? throw new QatBridgeException($"the weight DequantizeLinear of {layer.Describe()} has no constant scale");
                var q = dq.Inputs[0]!.Initializer!;
                var dims = q.GetDims();
                var axis = (int)dq.GetInt("axis", 1);
                return new IntWeight(q.ToFloatArray(), dims, axis < 0 ? axis + dims.Length : axis, scales);
            }
            case { OpType: "Mul" } mul when mul.Inputs[0]?.Producer is { OpType: "Add" } add && mul.Inputs[1]?.ConstantValue is { } scale
                && add.Inputs.All(v => v?.Producer is { OpType: "DequantizeLinear" } d && d.Inputs[0] is { IsInitializer: true }):
            {
                // 5/6-bit channels: (high x 4 + low) x channel scale, the two parts dequantized with scalar scales
                var integers = add.Inputs.Select(v => Scaled(v!.Producer!)).ToArray();
                if (integers[0].Length != integers[1].Length)
                    return null;
                var dims = add.Inputs[0]!.Producer!.Inputs[0]!.Initializer!.GetDims();
                var scaleDims = scale.GetDims();
                var axis = Array.FindIndex(scaleDims, d => d != 1);
                if (scaleDims.Length != dims.Length || axis < 0 || scaleDims[axis] != dims[axis])
                    throw new QatBridgeException($"the 6-bit weight of {layer.Describe()} has a scale of shape [{string.Join(", ", scaleDims)}]");
                return new IntWeight(integers[0].Zip(integers[1], (h, l) => h + l).ToArray(), dims, axis, scale.ToFloatArray());
            }
            case { OpType: "Concat" } concat when concat.Inputs.Count > 0:
            {
                var parts = concat.Inputs.Select(v => v is null ? null : QuantizedWeight(v, layer)).ToList();
                if (parts.Any(p => p is null))
                    return null;
                var axis = (int)concat.GetInt("axis", 0);
                var first = parts[0]!;
                if (axis < 0)
                    axis += first.Dims.Length;
                if (parts.Any(p => p!.Axis != axis))
                    throw new QatBridgeException($"the split weight of {layer.Describe()} is not concatenated along its channel axis");
                var channels = parts.Select(p => (int)p!.Dims[axis]).ToArray();
                return Reorder(parts!, axis, Enumerable.Range(0, channels.Sum()).ToArray());
            }
            case { OpType: "Gather" } gather when gather.Inputs[0] is { } data && data.Producer is { OpType: "Concat" }
                && gather.Inputs[1]?.ConstantValue is { } indices:
            {
                var whole = QuantizedWeight(data, layer);
                if (whole is null)
                    return null;
                var axis = (int)gather.GetInt("axis", 0);
                if ((axis < 0 ? axis + whole.Dims.Length : axis) != whole.Axis)
                    throw new QatBridgeException($"the split weight of {layer.Describe()} is not reordered along its channel axis");
                return Reorder([whole], whole.Axis, indices.ToFloatArray().Select(i => (int)i).ToArray());
            }
            default:
                return null;
        }
    }

    /// <summary>A DequantizeLinear of an initializer with a scalar scale and zero point, computed.</summary>
    private static float[] Scaled(Node dq)
    {
        var scale = dq.Inputs[1]?.ConstantValue?.ToFloatArray().Single() ?? 1f;
        var zero = dq.Inputs.Count > 2 && dq.Inputs[2]?.ConstantValue is { } z ? z.ToFloatArray().Single() : 0f;
        return dq.Inputs[0]!.Initializer!.ToFloatArray().Select(v => (v - zero) * scale).ToArray();
    }

    /// <summary>The channels <paramref name="order"/> names (indices into the concatenation of <paramref name="parts"/>).</summary>
    private static IntWeight Reorder(IReadOnlyList<IntWeight> parts, int axis, int[] order)
    {
        var dims = (long[])parts[0].Dims.Clone();
        long outer = 1, inner = 1;
        for (var d = 0; d < axis; d++)
            outer *= dims[d];
        for (var d = axis + 1; d < dims.Length; d++)
            inner *= dims[d];
        var sources = parts.SelectMany(p => Enumerable.Range(0, (int)p.Dims[axis]).Select(c => (Part: p, Channel: c))).ToArray();
        dims[axis] = order.Length;
        var values = new float[outer * order.Length * inner];
        for (long o = 0; o < outer; o++)
            for (var c = 0; c < order.Length; c++)
            {
                var (part, channel) = sources[order[c]];
                Array.Copy(part.Values, (o * part.Dims[axis] + channel) * inner, values, (o * order.Length + c) * inner, inner);
            }
        return new IntWeight(values, dims, axis, order.Select(c => sources[c].Part.Scales[sources[c].Channel]).ToArray());
    }

    /// <summary>The weight as floats (q x scale per channel), output channels first as PyTorch stores it: a 2-D
    /// weight quantized along axis 1 (MatMul's [in, out], Gemm without transB) is transposed.</summary>
    private static (float[] Weight, long[] Shape) Dequantize(IntWeight weight, Node layer)
    {
        var (values, dims, axis, scales) = (weight.Values, weight.Dims, weight.Axis, weight.Scales);
        if (dims.Length < 2 || scales.Length != dims[axis] || axis > 1 || (axis == 1 && dims.Length != 2))
            throw new QatBridgeException($"the weight of {layer.Describe()} has a layout the trainer cannot take (dims [{string.Join(", ", dims)}], axis {axis})");
        if (axis == 0)
        {
            var inner = values.Length / dims[0];
            for (var i = 0; i < values.Length; i++)
                values[i] *= scales[i / inner];
            return (values, dims);
        }
        long rows = dims[0], cols = dims[1];
        var transposed = new float[values.Length];
        for (var r = 0; r < rows; r++)
            for (var c = 0; c < cols; c++)
                transposed[c * rows + r] = values[r * cols + c] * scales[c];
        return (transposed, [cols, rows]);
    }

    /// <summary>The layer's bias: Conv's B, Gemm's C, or the constant addend of the Add right after a MatMul.</summary>
    private static float[]? Bias(Node layer)
    {
        if (layer.OpType is "Conv" or "Gemm")
            return layer.Inputs.Count > 2 ? layer.Inputs[2]?.ConstantValue?.ToFloatArray() : null;
        if (layer.Outputs[0].Uses is [{ Node: { OpType: "Add" } add }])
            return add.Inputs.Select(v => v?.ConstantValue).FirstOrDefault(t => t is not null)?.ToFloatArray();
        return null;
    }

    /// <summary>The weights file written beside a recipe: "r.json" -> "r.weights.npz".</summary>
    public static string WeightsPath(string recipePath) => Path.ChangeExtension(recipePath, ".weights.npz");

    /// <summary>
    /// Writes the artifact's dequantized weights and biases as an .npz (arrays "&lt;layer&gt;.weight" and
    /// "&lt;layer&gt;.bias", PyTorch layout), the file a revision-2 recipe names in <c>weights</c>: the student takes
    /// them instead of the teacher's, so compensation (GPTQ, bias correction) carries over to its start.
    /// </summary>
    public static void WriteArtifactWeights(QatRecipe recipe, Model artifact, string path)
    {
        var grids = ArtifactGrids(artifact);
        var arrays = new List<OnnxQuant.Data.NamedArray>();
        foreach (var layer in recipe.Layers)
        {
            var grid = grids[layer.Name];
            arrays.Add(new(layer.Name + ".weight", OnnxQuant.Data.NpyArray.FromFloats(grid.Weight, grid.WeightShape)));
            if (grid.Bias is { } bias)
                arrays.Add(new(layer.Name + ".bias", OnnxQuant.Data.NpyArray.FromFloats(bias, bias.Length)));
        }
        OnnxQuant.Data.Npz.Write(path, arrays);
    }

    /// <summary>
    /// The PyTorch module path of an exported node, from the scope name the exporter gives it:
    /// "/model/backbone/stages/stages.0/stages.0.0/conv1/Conv" -> "model.backbone.stages.0.0.conv1". Each scope level
    /// repeats its parent's name as a prefix for container children ("stages" then "stages.0"), which is dropped.
    /// A node name without scopes is returned as it is, minus a trailing ".weight".
    /// </summary>
    public static string ModulePath(string nodeName)
    {
        if (!nodeName.StartsWith('/'))
            return QatRecipe.LayerNameFromWeight(nodeName);
        var scopes = nodeName.Trim('/').Split('/');
        // The last component is the op ("Conv", "MatMul", "Gemm", "MatMul_1").
        var parts = new List<string>();
        string? previous = null;
        foreach (var scope in scopes[..^1])
        {
            if (scope.Length == 0)
                continue;
            parts.Add(previous is not null && scope.StartsWith(previous + ".", StringComparison.Ordinal)
                ? scope[(previous.Length + 1)..]
                : scope);
            previous = scope;
        }
        return parts.Count == 0 ? nodeName : string.Join('.', parts);
    }
}
