using OnnxQuant.Frontend;

namespace OnnxQuant.Passes.Units;

/// <summary>The tensors distortion is measured on, checked against the model.</summary>
public static class Features
{
    /// <summary>The requested features, or the model's float outputs when none are named.</summary>
    public static IReadOnlyList<string> Resolve(Model model, FeatureOptions options)
    {
        var graph = model.Graph;
        var requested = options.Features;
        if (requested.Count == 0)
        {
            var outputs = graph.Outputs.Where(o => o.Type?.ElementType == DataType.Float).Select(o => o.Name).ToList();
            if (outputs.Count == 0)
                throw new CompileException("the model has no float outputs to measure distortion on; name tensors with --feature");
            return outputs;
        }
        foreach (var f in requested)
        {
            var value = graph.FindValue(f) ?? throw new CompileException(
                $"--feature '{f}' names no tensor of the model (outputs: {string.Join(", ", graph.Outputs.Select(o => o.Name))})");
            if (value.Type is { } t && t.ElementType != DataType.Float)
                throw new CompileException($"--feature '{f}' is {t.ElementType}; distortion is measured on float tensors");
            if (value.IsInitializer || value.IsGraphInput)
                throw new CompileException($"--feature '{f}' is a model input or constant, not computed by the model");
        }
        return requested.Distinct().ToList();
    }
}
