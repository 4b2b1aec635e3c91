using OnnxQuant.Frontend;
using OnnxQuant.Passes.Quantization;
using OnnxQuant.Passes.Rewrite;
using OnnxQuant.Runtime;

namespace OnnxQuant.Passes.Verify;

/// <summary>A rewritten model ONNX Runtime loaded and ran, its measured distortion, and what had to change for it.</summary>
public sealed record VerifiedModel(RewrittenModel Rewritten, double Measured, IReadOnlyList<string> Notes);

/// <summary>
/// Rewrites one target and verifies it in ONNX Runtime. A model with INT2 containers that ONNX Runtime cannot load
/// at opset 25 (some ops resolve to versions it has no kernel for, e.g. RoiAlign-22 in 1.30) is rewritten once more
/// with the same 2-bit values in INT4 containers at opset 21. If ONNX Runtime still rejects the compiler's own
/// output, that is a bug: the model and the error are kept in a folder under the debug directory and an
/// <see cref="InternalFailureException"/> is thrown.
/// </summary>
public static class VerifyStage
{
    /// <param name="withoutInt2">The same rewrite with 2-bit weights in INT4 containers.</param>
    public static VerifiedModel Run(RewrittenModel rewritten, Func<RewrittenModel> withoutInt2, Verifier verifier,
        string debugDirectory, string label)
    {
        var notes = new List<string>();
        try
        {
            return new VerifiedModel(rewritten, StableRounding.Round(verifier.Measure(rewritten.Model)), notes);
        }
        catch (OrtException ex) when (rewritten.Result.Layers.Any(l => l.Containers.Any(c => c is DataType.Int2 or DataType.UInt2)))
        {
            var failedOpset = rewritten.Result.Opset;
            rewritten = withoutInt2();
            notes.Add($"ONNX Runtime could not load the model with INT2 containers at opset {failedOpset} " +
                      $"({FirstLine(ex.Message)}); 2-bit weights are stored in INT4 containers instead (same values, larger file)");
        }
        catch (OrtException ex)
        {
            throw Rejected(rewritten.Model, ex, debugDirectory, label);
        }
        try
        {
            return new VerifiedModel(rewritten, StableRounding.Round(verifier.Measure(rewritten.Model)), notes);
        }
        catch (OrtException ex)
        {
            throw Rejected(rewritten.Model, ex, debugDirectory, label);
        }
    }

    /// <summary>
    /// The speed target's guarantee: in the model ONNX Runtime runs after its optimizations, no DequantizeLinear is
    /// left on a weight path. A violation is a bug of the rewrite: the model and the list of unfused layers are kept
    /// under the debug directory and an <see cref="InternalFailureException"/> is thrown.
    /// </summary>
    public static FusionReport CheckFusion(Model model, SessionOptions options, string debugDirectory, string label)
    {
        var report = FusionCheck.Run(model, options);
        if (report.WeightDequantizeLeft == 0)
            return report;
        var detail = $"{report.WeightDequantizeLeft} DequantizeLinear node(s) left on weight paths after ONNX Runtime's optimizations, feeding: " +
                     string.Join(", ", report.Offenders.Take(8)) + (report.Offenders.Count > 8 ? $", ... ({report.Offenders.Count} in all)" : "");
        string? kept = Path.Combine(debugDirectory, label);
        try
        {
            Directory.CreateDirectory(kept);
            ModelIO.Save(model, Path.Combine(kept, "model.onnx"));
            File.WriteAllText(Path.Combine(kept, "error.txt"), detail + "\n" + string.Join("\n", report.Offenders) + "\n");
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or FrontendException)
        {
            kept = null;
        }
        return report.WeightDequantizeLeft == 0 ? report
            : throw new InternalFailureException($"the speed artifact for {label} does not fuse into integer kernels: {detail}", kept);
    }

    private static InternalFailureException Rejected(Model model, OrtException error, string debugDirectory, string label)
    {
        string? kept = Path.Combine(debugDirectory, label);
        try
        {
            Directory.CreateDirectory(kept);
            ModelIO.Save(model, Path.Combine(kept, "model.onnx"));
            File.WriteAllText(Path.Combine(kept, "error.txt"), error.ToString() + "\n");
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or FrontendException)
        {
            kept = null;
        }
        return new InternalFailureException(
            $"ONNX Runtime rejected the model this compiler wrote for {label} ({FirstLine(error.Message)})", kept, error);
    }

    private static string FirstLine(string message) =>
        message.ReplaceLineEndings("\n").Split('\n', StringSplitOptions.RemoveEmptyEntries).FirstOrDefault()?.Trim() ?? "";
}
