using OnnxQuant.Frontend;

namespace OnnxQuant.Passes.Canonicalize;

/// <summary>
/// What the compile accepts although the ONNX specification or this tool's knowledge would not, and how it handles
/// it: the loader's warnings (rules ONNX Runtime does not enforce), initializers also listed as graph inputs (taken
/// as weights), operator sets newer than this tool knows. <c>inspect</c> shows these notes and the report records
/// them.
/// </summary>
public static class Intake
{
    /// <summary>The newest default-domain opset whose operator changes this tool knows (ONNX 1.19).</summary>
    public const long NewestKnownOpset = 25;

    public static IReadOnlyList<string> Notes(Model model)
    {
        var notes = ModelValidator.Validate(model).Warnings.Select(w => w.ToString()).ToList();
        var initializerInputs = DetachInitializerInputsPass.InitializerInputs(model);
        if (initializerInputs.Count > 0)
            notes.Add($"{initializerInputs.Count} initializer(s) are also graph inputs (first '{initializerInputs[0]}'): they are treated as weights "
                + "and dropped from the quantized model's inputs (--keep-initializer-inputs lists the unquantized ones again)");
        if (InferenceBatchNormPass.Count(model) is var training and > 0)
            notes.Add($"{training} BatchNormalization node(s) are in training mode (exported with the model in training mode?): ONNX Runtime "
                + "normalizes them with each batch's own statistics; they are compiled in inference mode, with their running statistics, "
                + "so the quantized model and the float reference of its distortion compute what an inference export would "
                + "(re-export with the model in eval mode to compare like with like)");
        if (HalfPrecisionPass.HalfCount(model) > 0)
            notes.Add("the model computes in half precision: it is compiled, calibrated and verified in float32 with casts at its half-precision "
                + "inputs and outputs, so the quantized model keeps its interface; distortion is measured against the float32 computation "
                + "and weight sizes are compared with float32 weights (the model stores two bytes per weight)");
        if (model.IrVersion is > 0 and < 4)
            notes.Add($"IR version {model.IrVersion} is written back as IR version {ModelIO.DefaultIrVersion} or newer");
        if (model.OpsetImports.Default is { } opset && opset > NewestKnownOpset)
            notes.Add($"opset {opset} is newer than this tool knows ({NewestKnownOpset}); its operators are taken as the newest ones it knows");
        return notes;
    }
}
