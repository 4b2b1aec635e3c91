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
    public static QatRecipe FromReport(CompileReport report, string sourceModel, int attentionBits, Model? artifact = null)
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
        return QatRecipe.FromAllocation(sourceModel, defaults, layers.Values, floatLayers, revision);
    }

    /// <summary>A layer's post-training grid in a compiled QDQ model.</summary>
    public sealed record LayerGrid(IReadOnlyList<float> WeightScales, float? ActScale, int? ActZeroPoint);

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
            grids[ModulePath(node.Name)] = new LayerGrid(scales, actScale, actScale is null ? null : zeroPoint);
        }
        return grids;
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
