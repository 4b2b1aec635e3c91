using OnnxQuant.Frontend;
using OnnxQuant.Passes.Rewrite;
using OnnxQuant.Runtime;
using OnnxQuant.Runtime.Tests;

namespace OnnxQuant.Passes.Tests.Rewrite;

/// <summary>How one backend-suite model fared: at its own opset, and raised to a target.</summary>
internal enum ConversionOutcome
{
    /// <summary>The model's opset is already at or above the target.</summary>
    NotBelowTarget,
    /// <summary>ONNX Runtime fails the model at its own opset (its gap, not the converter's): not counted.</summary>
    BaselineFails,
    /// <summary>The converter refused the model (the message says why).</summary>
    Refused,
    /// <summary>Converted, but ONNX Runtime has no kernel for some operator at the target opset.</summary>
    NoKernel,
    /// <summary>Converted, but ONNX Runtime does not load or run it, or its outputs differ from the expected ones.</summary>
    Mismatch,
    Matches,
}

internal sealed record ConversionResult(string Name, ConversionOutcome Outcome, string Detail);

/// <summary>
/// Runs the models of the ONNX 1.12 backend test suite (Debian's libonnx-testdata) through the opset converter and
/// compares ONNX Runtime's outputs with the suite's expected ones, within the suite's tolerances (those of
/// onnx.backend.test: relative 1e-3, absolute 1e-7).
/// </summary>
internal static class BackendSuiteConversion
{
    public const string Root = "/usr/share/libonnx-testdata/data";
    public const double RelativeTolerance = 1e-3;
    public const double AbsoluteTolerance = 1e-7;

    private static readonly SessionOptions Options = new() { IntraOpThreads = 1 };

    /// <summary>Every suite model with recorded inputs and outputs, as "folder/test", in ordinal order.</summary>
    public static IReadOnlyList<string> Models() =>
        new[] { "node", "pytorch-converted", "pytorch-operator", "simple" }
            .SelectMany(kind => Directory.EnumerateDirectories(Path.Combine(Root, kind))
                .Where(d => Directory.EnumerateDirectories(d, "test_data_set_*").Any())
                .Select(d => $"{kind}/{Path.GetFileName(d)}"))
            .Order(StringComparer.Ordinal).ToList();

    public static ConversionResult Run(string name, long target)
    {
        var dir = Path.Combine(Root, name);
        var model = ModelIO.Load(Path.Combine(dir, "model.onnx"));
        if ((model.OpsetImports.Default ?? 1) >= target)
            return new(name, ConversionOutcome.NotBelowTarget, "");
        if (Check(ModelIO.ToBytes(model), dir) is { } baseline)
            return new(name, ConversionOutcome.BaselineFails, baseline);
        try
        {
            OpsetConverter.Raise(model, target);
        }
        catch (CompileException ex)
        {
            return new(name, ConversionOutcome.Refused, ex.Message);
        }
        // As the compile writes it: an IR version that can carry the opset.
        model.IrVersion = Math.Max(model.IrVersion, target >= 25 ? 12 : 10);
        var detail = Check(ModelIO.ToBytes(model), dir);
        if (detail is null)
            return new(name, ConversionOutcome.Matches, "");
        return new(name, detail.Contains("Could not find an implementation", StringComparison.Ordinal) ? ConversionOutcome.NoKernel : ConversionOutcome.Mismatch, detail);
    }

    /// <summary>Null when every recorded output matches; otherwise what went wrong.</summary>
    private static string? Check(byte[] bytes, string dir)
    {
        try
        {
            using var session = InferenceSession.Create(bytes, Options);
            return BackendSuiteCase.RunRecorded(session, dir, RelativeTolerance, AbsoluteTolerance);
        }
        catch (Exception ex) when (ex is OrtException or NotSupportedException or InvalidDataException or ArgumentException or IndexOutOfRangeException)
        {
            return $"{ex.GetType().Name}: {ex.Message.ReplaceLineEndings(" ")}";
        }
    }
}
