using OnnxQuant.Frontend;

namespace OnnxQuant.Runtime.Tests;

/// <summary>The outcome of one backend node test.</summary>
internal sealed record NodeTestResult(string Name, bool Passed, string Detail);

/// <summary>
/// Runs the ONNX backend node tests (model.onnx plus test_data_set_*/input_*.pb and output_*.pb) through the binding
/// and compares outputs with the expected tensors.
/// </summary>
internal static class Conformance
{
    public const double RelativeTolerance = 1e-3;
    public const double AbsoluteTolerance = 1e-5;

    public static IReadOnlyList<string> AllTests() =>
        Directory.EnumerateDirectories(NodeModels.Root).Select(Path.GetFileName).OfType<string>().Order(StringComparer.Ordinal).ToList();

    public static NodeTestResult Run(string name)
    {
        var dir = Path.Combine(NodeModels.Root, name);
        try
        {
            using var session = InferenceSession.Create(Path.Combine(dir, "model.onnx"), NodeModels.Options);
            var mismatch = BackendSuiteCase.RunRecorded(session, dir, RelativeTolerance, AbsoluteTolerance);
            return new NodeTestResult(name, mismatch is null, mismatch ?? "");
        }
        catch (Exception ex) when (ex is OrtException or NotSupportedException or InvalidDataException or ArgumentException)
        {
            return new NodeTestResult(name, false, $"{ex.GetType().Name}: {ex.Message.ReplaceLineEndings(" ")}");
        }
    }
}
