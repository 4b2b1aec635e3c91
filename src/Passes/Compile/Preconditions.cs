using OnnxQuant.Frontend;
using OnnxQuant.Passes.Load;
using OnnxQuant.Passes.Rewrite;
using OnnxQuant.Runtime;

namespace OnnxQuant.Passes.Compile;

/// <summary>
/// Everything the compile can know at the start that would otherwise fail it at the end, checked before calibration:
/// the output folder can be written, the float model runs in ONNX Runtime on the first calibration sample, and its
/// opset can be raised as far as the chosen containers need (per-channel 13, INT4 21, INT2 25) to a graph ONNX
/// Runtime loads. Each failure is a <see cref="CompileException"/> (exit 2) saying what to do.
/// </summary>
public static class Preconditions
{
    /// <summary>Runs the checks; returns notes on what the compile will do differently (e.g. INT2 kept in INT4).</summary>
    /// <param name="int2">Told to keep every layer out of INT2 when the model does not load at opset 25.</param>
    public static IReadOnlyList<string> Check(Model canonical, LoadedInputs loaded, CompileOptions options, string outputDirectory,
        Int2Exclusions? int2 = null)
    {
        CheckWritable(outputDirectory);
        // Without graph optimizations: the session only has to prove the model loads and runs, and starts faster.
        var sessionOptions = options.Execution.Instrumentation();
        try
        {
            using var session = InferenceSession.Create(ModelIO.ToBytes(canonical), sessionOptions);
            session.Run(loaded.Data.Batch(0, 1).Select(b => b.ToNamedTensor()).ToList());
        }
        catch (OrtException ex)
        {
            throw new CompileException($"the float model does not run in ONNX Runtime on the first calibration sample: {ex.Message.ReplaceLineEndings(" ")}"
                + CustomOperatorHint(canonical));
        }

        var notes = new List<string>();
        var needed = RequiredOpset(options);
        var opset = canonical.OpsetImports.Default ?? 1;
        if (opset >= needed)
            return notes;
        // The conversion to 25 only adds steps to the one to 21, so when 25 loads, 21 does too.
        if (needed > 21 && Raised(canonical, needed, sessionOptions) is { } int2Failure)
        {
            notes.Add($"2-bit weights are stored in INT4 containers (opset 21): at opset {needed}, {int2Failure}");
            int2?.ExcludeAll();
            needed = 21;
        }
        if (needed <= 21 && Raised(canonical, needed, sessionOptions) is { } failure)
            throw new CompileException(failure);
        if (opset < 13)
            notes.Add($"the model's opset {opset} is raised to {needed} (the quantized weights' containers need it)");
        return notes;
    }

    /// <summary>The operator domains ONNX Runtime's CPU build registers kernels for.</summary>
    private static readonly HashSet<string> ShippedDomains = new(StringComparer.Ordinal) { "", "ai.onnx", "ai.onnx.ml", "com.microsoft", "com.microsoft.nchwc" };

    /// <summary>What to do when the model holds operators of domains ONNX Runtime does not ship (an exporter's own
    /// operators, such as a detection library's RoI or NMS kernels); empty otherwise.</summary>
    internal static string CustomOperatorHint(Model model)
    {
        var custom = model.Graph.AllNodes().Where(n => !ShippedDomains.Contains(n.Domain))
            .Select(n => $"{n.Domain}:{n.OpType}").Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal).ToList();
        return custom.Count == 0 ? ""
            : $" (the model uses operators ONNX Runtime does not ship: {string.Join(", ", custom.Take(5))}{(custom.Count > 5 ? ", ..." : "")}; " +
              "give the library that implements them with --custom-op-library PATH (the exporter's or deployment toolkit's ONNX Runtime ops), " +
              "or export them as standard ONNX operators, e.g. with the exporter's option to avoid custom ops)";
    }

    /// <summary>The opset the widest-ranging choice of containers needs: INT2 25, INT4 (or 16-bit activations) 21, else 13.</summary>
    public static long RequiredOpset(CompileOptions options)
    {
        var narrowest = Math.Min(options.Curves.CandidateBits.Min(), options.Units.HeadBits);
        return narrowest <= 2 ? 25 : narrowest <= 4 || options.Calibration.ActBits == 16 ? 21 : 13;
    }

    /// <summary>Null when a copy raised to <paramref name="target"/> loads in ONNX Runtime; otherwise why not.</summary>
    private static string? Raised(Model canonical, long target, SessionOptions sessionOptions)
    {
        var copy = canonical.Clone();
        if (OpsetConverter.Refusal(copy, target) is { } refusal)
            return refusal;
        OpsetConverter.Raise(copy, target);
        copy.IrVersion = Math.Max(copy.IrVersion, target >= 25 ? 12 : 10);
        try
        {
            using var session = InferenceSession.Create(ModelIO.ToBytes(copy), sessionOptions);
            return null;
        }
        catch (OrtException ex)
        {
            return $"the model converted to opset {target} does not load in ONNX Runtime: {ex.Message.ReplaceLineEndings(" ")}";
        }
    }

    /// <summary>Creates and deletes a probe file in the output folder, or in its nearest existing parent.</summary>
    private static void CheckWritable(string outputDirectory)
    {
        var dir = Path.GetFullPath(outputDirectory);
        while (!Directory.Exists(dir) && Path.GetDirectoryName(dir) is { } parent)
        {
            if (File.Exists(dir))
                throw new CompileException($"{outputDirectory}: '{dir}' is a file, so the output folder cannot be created; choose another -o folder");
            dir = parent;
        }
        var probe = Path.Combine(dir, $".onnxquant-probe-{Guid.NewGuid():N}");
        try
        {
            using (File.Create(probe, 1, FileOptions.DeleteOnClose)) { }
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new CompileException($"{outputDirectory}: the output folder cannot be written ({ex.Message}); choose another -o folder");
        }
    }
}
