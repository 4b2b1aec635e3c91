using OnnxQuant.Frontend;
using OnnxQuant.Passes.Pipeline;

namespace OnnxQuant.Passes.Canonicalize;

/// <summary>
/// Treats initializers that the main graph also lists as inputs as the constants they are: IR versions below 4
/// required every initializer to be listed (the value then being a default the caller may override), and some
/// exporters keep the habit at any IR version. Like ONNX Runtime's own quantizer, the compile reads them as weights,
/// so they are folded and quantized; the inputs are dropped, and an IR version below 4 (which would require them) is
/// raised to <see cref="ModelIO.DefaultIrVersion"/>. The compile can list the survivors as inputs again at the end
/// (<c>--keep-initializer-inputs</c>).
/// </summary>
public sealed class DetachInitializerInputsPass : IPass
{
    public string Name => "detach-initializer-inputs";

    public PassResult Run(Model model)
    {
        var graph = model.Graph;
        var detached = graph.Inputs.Where(v => v.IsInitializer).ToList();
        foreach (var v in detached)
            graph.RemoveInput(v);
        var raised = model.IrVersion is > 0 and < 4;
        if (raised)
            model.IrVersion = ModelIO.DefaultIrVersion;
        return PassResult.Changed(detached.Count + (raised ? 1 : 0));
    }

    /// <summary>Names of the main graph's inputs that are initializers, in input order.</summary>
    public static IReadOnlyList<string> InitializerInputs(Model model) =>
        model.Graph.Inputs.Where(v => v.IsInitializer).Select(v => v.Name).ToList();

    /// <summary>
    /// Lists again as graph inputs the initializers of <paramref name="names"/> that <paramref name="model"/> still
    /// holds (quantized weights were replaced, so they cannot be overridden any more); returns how many.
    /// </summary>
    public static int Relist(Model model, IReadOnlyList<string> names)
    {
        var count = 0;
        foreach (var name in names)
            if (model.Graph.FindInitializer(name) is { IsGraphInput: false } v)
            {
                model.Graph.AddInput(v);
                count++;
            }
        return count;
    }
}
