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
                    ActBits = grid.ActScale is null ? BitWidths.FloatBits : actBits,
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
        float[] Weight, long[] WeightShape, float[]? Bias);

    /// <summary>
    /// Per module path, the grid of every node that reads a DequantizeLinear of an integer initializer (its weight):
    /// the per-channel weight scales, and when its first input comes through QuantizeLinear -> DequantizeLinear, that
    /// pair's scale and zero point. Nodes of one module (MatMul + Add) share the name; the weight node wins.
    /// </summary>
    public static IReadOnlyDictionary<string, LayerGrid> ArtifactGrids(Model artifact)
    {
        var grids = new Dictionary<string, LayerGrid>(StringComparer.Ordinal);
        foreach (var node in artifact.Graph.AllNodes())
        {
            if (node.OpType is "QuantizeLinear" or "DequantizeLinear")
                continue;
            var weightDq = node.Inputs.Skip(1).Select(v => v?.Producer)
                .FirstOrDefault(p => p is { OpType: "DequantizeLinear" } && p.Inputs[0] is { IsInitializer: true });
            if (weightDq is null)
                continue;
            var scales = weightDq.Inputs[1]!.ConstantValue?.ToFloatArray()
                ?? throw new QatBridgeException($"the weight DequantizeLinear of {node.Describe()} has no constant scale");
            float? actScale = null;
            int? zeroPoint = null;
            if (node.Inputs[0]?.Producer is { OpType: "DequantizeLinear" } actDq && actDq.Inputs[0]?.Producer is { OpType: "QuantizeLinear" })
            {
                actScale = actDq.Inputs[1]?.ConstantValue?.ToFloatArray().Single();
                zeroPoint = actDq.Inputs.Count > 2 && actDq.Inputs[2]?.ConstantValue is { } z ? (int)z.ToFloatArray().Single() : 0;
            }
            var (weight, shape) = Dequantize(weightDq, scales, node);
            grids[ModulePath(node.Name)] = new LayerGrid(scales, actScale, actScale is null ? null : zeroPoint, weight, shape, Bias(node));
        }
        return grids;
    }

    /// <summary>The weight as floats (q x scale per channel), output channels first as PyTorch stores it: a 2-D
    /// weight quantized along axis 1 (MatMul's [in, out], Gemm without transB) is transposed.</summary>
    private static (float[] Weight, long[] Shape) Dequantize(Node dq, float[] scales, Node layer)
    {
        var q = dq.Inputs[0]!.Initializer!;
        var values = q.ToFloatArray();
        var dims = q.GetDims();
        var axis = (int)dq.GetInt("axis", 1);
        if (axis < 0)
            axis += dims.Length;
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
