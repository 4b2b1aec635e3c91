using System.CommandLine;
using OnnxQuant.QatBridge;
using OnnxQuant.Runtime;

namespace OnnxQuant.Cli;

/// <summary>`onnxquant qat-import`: checks a trained student in ONNX Runtime and writes it as compile's artifact
/// form (model.onnx, report.json, manifest.json).</summary>
internal static class QatImportCommand
{
    public static Command Create()
    {
        var student = new Argument<string>("student") { Description = "The trained student: QDQ ONNX written by the trainer (student.onnx)" };
        var scales = new Option<string>("--scales") { Description = "Learned-scales file (default: scales.json beside the student, if present)" };
        var output = new Option<string>("--output", "-o") { Description = "Output folder", Required = true };
        var ortLib = new Option<string>("--ort-lib") { Description = "Path to libonnxruntime.so (default: ONNXQUANT_ORT_LIB or the ONNX Runtime that ships with the tool)" };
        var command = new Command("qat-import", "Check a QAT-trained student in ONNX Runtime and write it as a deployable artifact")
        {
            student, scales, output, ortLib,
        };
        command.SetAction(parse =>
        {
            if (parse.GetValue(ortLib) is { } lib)
                OrtRuntime.Initialize(lib);
            var result = QatImporter.Import(new QatImportRequest(parse.GetValue(student)!, parse.GetValue(output)!,
                parse.GetValue(scales)), VersionCommand.ToolVersion);
            var o = parse.InvocationConfiguration.Output;
            var r = result.Report;
            o.WriteLine($"student runs in ONNX Runtime ({r.Check.Provider}, load + run {result.CheckMilliseconds} ms): " +
                string.Join(", ", r.Check.Outputs.Select(c => $"{c.Name}[{string.Join("x", c.Shape)}]")));
            o.WriteLine($"{r.QuantizeLinearNodes} QuantizeLinear, {r.DequantizeLinearNodes} DequantizeLinear" +
                (r.Learned is { } l ? $"; {l.Layers.Count} quantized layers, {l.Attention.Count} attention blocks" : ""));
            o.WriteLine($"wrote {result.ModelPath}, {result.ReportPath}, {result.ManifestPath}");
            return ExitCodes.Ok;
        });
        return command;
    }
}
