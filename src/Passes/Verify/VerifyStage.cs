using OnnxQuant.Frontend;
using OnnxQuant.Passes.Quantization;
using OnnxQuant.Passes.Rewrite;
using OnnxQuant.Runtime;

namespace OnnxQuant.Passes.Verify;

/// <summary>A rewritten model ONNX Runtime loaded and ran, its measured distortion, and what had to change for it.</summary>
public sealed record VerifiedModel(RewrittenModel Rewritten, double Measured, IReadOnlyList<string> Notes);

/// <summary>
/// Rewrites one target and verifies it in ONNX Runtime. ONNX Runtime refuses some models with INT2 containers: it
/// fuses DequantizeLinear(INT2) -> Conv -> QuantizeLinear into QLinearConv, which takes no INT2, or an op resolves at
/// opset 25 to a version it has no kernel for (RoiAlign-22 in 1.30). A refusal that names a layer's INT2 weight keeps
/// that layer out of the INT2 family and rewrites again (up to <see cref="MaxLayersOneByOne"/> layers, learned for the
/// whole compile in <see cref="Int2Exclusions"/>); any other refusal keeps every layer out (opset 21). If ONNX Runtime
/// still rejects the compiler's own output, that is a bug: the model and the error are kept in a folder under the
/// debug directory and an <see cref="InternalFailureException"/> is thrown.
/// </summary>
public static class VerifyStage
{
    /// <summary>Layers kept out of INT2 one refusal at a time before every layer is (each costs a rewrite and a
    /// session build that fails).</summary>
    public const int MaxLayersOneByOne = 32;

    /// <param name="rewritten">The rewrite under <paramref name="int2"/> as it stands.</param>
    /// <param name="rewrite">The same rewrite again, reading <paramref name="int2"/> each time it is called.</param>
    /// <param name="int2">The compile's INT2 exclusions: read by <paramref name="rewrite"/>, grown here.</param>
    public static VerifiedModel Run(RewrittenModel rewritten, Func<RewrittenModel> rewrite, Int2Exclusions int2, Verifier verifier,
        string debugDirectory, string label)
    {
        var notes = new List<string>();
        var oneByOne = 0;
        while (true)
        {
            try
            {
                var measured = StableRounding.Round(verifier.Measure(rewritten.Model));
                // Only layers of this artifact below 8 bits can have lost an INT2-family container.
                var moved = int2.All ? [] : rewritten.Result.Layers.Where(l => l.MaxBits < 8 && !int2.Allows(l.Layer)).Select(l => l.Layer).ToList();
                if (moved.Count > 0)
                    notes.Add($"ONNX Runtime fuses {moved.Count} layer(s) with 2-bit weights into integer kernels that take no INT2 " +
                              $"({string.Join(", ", moved.Take(3))}{(moved.Count > 3 ? ", ..." : "")}): their 2-bit weights are stored in " +
                              "INT4 containers (same values); the other layers keep INT2");
                return new VerifiedModel(rewritten, measured, notes);
            }
            catch (OrtException ex) when (!int2.All && rewritten.Result.Layers.Any(l => l.Containers.Any(c => c is DataType.Int2 or DataType.UInt2)))
            {
                if (oneByOne < MaxLayersOneByOne && Int2Offender(ex.Message, rewritten) is { } layer && int2.Add(layer))
                    oneByOne++;
                else
                {
                    int2.ExcludeAll();
                    notes.Add($"ONNX Runtime could not load the model with INT2 containers at opset {rewritten.Result.Opset} " +
                              $"({FirstLine(ex.Message)}); 2-bit weights are stored in INT4 containers instead (same values, larger file)");
                }
                rewritten = rewrite();
            }
            catch (OrtException ex)
            {
                throw Rejected(rewritten.Model, ex, debugDirectory, label);
            }
        }
    }

    private static readonly System.Text.RegularExpressions.Regex TypeError = new(
        @"Type 'tensor\((u?int2)\)' of input parameter \((?<param>[^)]*)\) of operator \([^)]*\) in node \((?<node>[^)]*)\)",
        System.Text.RegularExpressions.RegexOptions.CultureInvariant);

    /// <summary>
    /// The layer whose INT2-family weight ONNX Runtime's type check refused: the fused node keeps the layer's node
    /// name; otherwise the refused initializer is followed to the quantized layer that reads it. Null when the error
    /// is another one.
    /// </summary>
    internal static string? Int2Offender(string message, RewrittenModel rewritten)
    {
        var match = TypeError.Match(message);
        if (!match.Success)
            return null;
        var layers = rewritten.Result.Layers.Where(l => l.Containers.Any(c => c is DataType.Int2 or DataType.UInt2))
            .Select(l => l.Layer).ToHashSet(StringComparer.Ordinal);
        var node = match.Groups["node"].Value;
        if (layers.Contains(node))
            return node;
        // The weight's DequantizeLinear (and, for split layers, the Add and Mul that join its parts) lead to the layer.
        var graph = rewritten.Model.Graph;
        var frontier = graph.FindValue(match.Groups["param"].Value) is { } value ? new List<Value> { value } : [];
        for (var hop = 0; hop < 6 && frontier.Count > 0; hop++)
        {
            var next = new List<Value>();
            foreach (var use in frontier.SelectMany(v => v.Uses))
            {
                if (use.Node.Name is { } name && layers.Contains(name))
                    return name;
                next.AddRange(use.Node.Outputs);
            }
            frontier = next;
        }
        return null;
    }

    /// <summary>
    /// The speed target's guarantee: in the model ONNX Runtime runs after its optimizations, no DequantizeLinear is
    /// left on a weight path. A violation is a gap in the rewrite's fusion rules, not an error in the artifact (its
    /// values are the quantized ones; the layers concerned dequantize their weights on every run and compute in
    /// float): the compile goes on and says so, and the model with the list of unfused layers is kept under the debug
    /// directory for a report (the folder is returned, null when it could not be written).
    /// </summary>
    /// <param name="known">What an earlier check of the same model found (the rewrite's own), reused when given.</param>
    public static (FusionReport Report, string? Kept) CheckFusion(Model model, SessionOptions options, string debugDirectory, string label,
        FusionReport? known = null)
    {
        var report = known ?? FusionCheck.Run(model, options);
        if (report.WeightDequantizeLeft == 0)
            return (report, null);
        string? kept = Path.Combine(debugDirectory, label);
        try
        {
            Directory.CreateDirectory(kept);
            ModelIO.Save(model, Path.Combine(kept, "model.onnx"));
            File.WriteAllText(Path.Combine(kept, "unfused.txt"), FusionGap(report) + "\n" + string.Join("\n", report.Offenders) + "\n");
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or FrontendException)
        {
            kept = null;
        }
        return (report, kept);
    }

    /// <summary>What a fusion check that found weight dequantization left says about it.</summary>
    public static string FusionGap(FusionReport report) =>
        $"{report.WeightDequantizeLeft} DequantizeLinear node(s) left on weight paths after ONNX Runtime's optimizations, feeding: " +
        string.Join(", ", report.Offenders.Take(8)) + (report.Offenders.Count > 8 ? $", ... ({report.Offenders.Count} in all)" : "");

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
