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
            var outputs = DefaultFeatures(model);
            if (outputs.Count == 0)
                throw new CompileException("the model has no float outputs to measure distortion on; name tensors with --feature");
            return outputs;
        }
        var resolved = new List<string>();
        foreach (var f in requested)
        {
            var value = graph.FindValue(f) ?? throw new CompileException(
                $"--feature '{f}' names no tensor of the model (outputs: {string.Join(", ", graph.Outputs.Select(o => o.Name))})");
            if (value.IsInitializer || value.IsGraphInput)
                throw new CompileException($"--feature '{f}' is a model input or constant, not computed by the model");
            var measured = Measured(value);
            if (value.Type is { } t && measured is null)
                throw new CompileException($"--feature '{f}' is {t.ElementType}; distortion is measured on float tensors");
            resolved.Add((measured ?? value).Name);
        }
        return resolved.Distinct().ToList();
    }

    /// <summary>The features when none are named: the float32 values of the model's float outputs.</summary>
    public static IReadOnlyList<string> DefaultFeatures(Model model) =>
        model.Graph.Outputs.Select(Measured).OfType<Value>().Select(o => o.Name).Distinct().ToList();

    /// <summary>
    /// The float32 tensor distortion is measured on for <paramref name="value"/>: itself, or for a half-precision value
    /// cast from a float32 one (a half-precision output after <see cref="Canonicalize.HalfPrecisionPass"/>), that
    /// value; null when it is neither.
    /// </summary>
    private static Value? Measured(Value value) => value switch
    {
        { Type.ElementType: DataType.Float } => value,
        { Type.ElementType: DataType.Float16 or DataType.BFloat16, Producer: { OpType: "Cast" } cast }
            when cast.Inputs[0] is { Type.ElementType: DataType.Float } source => source,
        _ => null,
    };
}
