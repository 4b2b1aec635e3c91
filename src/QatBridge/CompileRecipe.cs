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
    /// <param name="attentionBits">Bits of attention q/k/v and the softmax output, which the compiler does not allocate.</param>
    public static QatRecipe FromReport(CompileReport report, string sourceModel, int attentionBits)
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
        var floatLayers = report.Skipped.Select(s => ModulePath(s.Name)).Where(n => !layers.ContainsKey(n));
        var defaultWeight = (int)Math.Round(report.TargetBits, MidpointRounding.AwayFromZero);
        var defaults = new BitWidths(Math.Clamp(defaultWeight, BitWidths.MinBits, BitWidths.MaxBits), actBits, attentionBits);
        return QatRecipe.FromAllocation(sourceModel, defaults, layers.Values, floatLayers);
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
