using OnnxQuant.Frontend;
using OnnxQuant.Passes.Allocate;
using OnnxQuant.Passes.Pipeline;

namespace OnnxQuant.Passes.Artifact;

/// <summary>One compiled target: its report and where its model went.</summary>
public sealed record TargetResult(CompileReport Report, string ModelPath, string ReportPath);

/// <summary>A target ready to be written: its report (without timings) and its model's bytes.</summary>
public sealed record TargetArtifact(CompileReport Report, byte[] Model);

/// <summary>What the manifest says about the inputs.</summary>
public sealed record ManifestInputs(string ToolVersion, string ModelFile, string ModelHash, string DataHash, int Samples,
    IReadOnlyList<OptionEntry> Options);

/// <summary>
/// Writes the artifacts only after everything was computed: each model, then each report and report.html, then the manifest last
/// (each file atomically). One target goes straight into the output folder; several go into <c>bits-&lt;target&gt;/</c>.
/// </summary>
public static class ArtifactStage
{
    /// <summary>Checked before any work: the output folder must be a folder and must not overwrite the input.</summary>
    public static void CheckDestination(string modelPath, string outputDirectory, IReadOnlyList<double> targets)
    {
        if (File.Exists(outputDirectory))
            throw new CompileException($"{outputDirectory}: the output path is a file; -o names a folder");
        var modelFull = Path.GetFullPath(modelPath);
        if (targets.Select(t => Path.GetFullPath(ModelPath(outputDirectory, t, targets.Count == 1))).Contains(modelFull))
            throw new CompileException($"{modelPath}: the output would overwrite the input model; choose another -o folder");
    }

    public static string ModelPath(string outputDirectory, double target, bool single) =>
        Path.Combine(TargetDirectory(outputDirectory, target, single), "model.onnx");

    public static IReadOnlyList<TargetResult> WriteModels(string outputDirectory, IReadOnlyList<TargetArtifact> targets,
        out IReadOnlyList<ReportWriter.OutputFile> written)
    {
        Directory.CreateDirectory(outputDirectory);
        var single = targets.Count == 1;
        var results = new List<TargetResult>();
        var outputs = new List<ReportWriter.OutputFile>();
        foreach (var (report, bytes) in targets)
        {
            var dir = TargetDirectory(outputDirectory, report.TargetBits, single);
            var modelOut = Path.Combine(dir, "model.onnx");
            AtomicFile.Write(modelOut, s => s.Write(bytes));
            var relative = Path.GetRelativePath(outputDirectory, modelOut).Replace('\\', '/');
            outputs.Add(new ReportWriter.OutputFile(relative, Hashing.Sha256Hex(bytes), bytes.LongLength));
            results.Add(new TargetResult(report, modelOut, Path.Combine(dir, "report.json")));
        }
        written = outputs;
        return results;
    }

    /// <summary>Each report with the final timings, then the manifest.</summary>
    public static IReadOnlyList<TargetResult> WriteReports(string outputDirectory, IReadOnlyList<TargetResult> targets,
        IReadOnlyList<StageTime> timings, ManifestInputs inputs, IReadOnlyList<ReportWriter.OutputFile> outputs)
    {
        var results = targets.Select(t => t with { Report = t.Report with { Timings = timings } }).ToList();
        var reports = new List<(string, byte[])>();
        foreach (var r in results)
        {
            var json = ReportWriter.Report(r.Report);
            AtomicFile.Write(r.ReportPath, s => s.Write(json));
            reports.Add((Path.GetRelativePath(outputDirectory, r.ReportPath).Replace('\\', '/'), json));
        }
        var manifest = ReportWriter.Manifest(inputs.ToolVersion, inputs.ModelFile, inputs.ModelHash, inputs.DataHash,
            inputs.Samples, inputs.Options, outputs);
        // The page is rendered from the JSON bytes, as `onnxquant report` renders it from the files; the manifest stays last.
        HtmlReportWriter.Write(outputDirectory, manifest, reports);
        AtomicFile.Write(Path.Combine(outputDirectory, "manifest.json"), s => s.Write(manifest));
        return results;
    }

    private static string TargetDirectory(string outputDirectory, double target, bool single) =>
        single ? outputDirectory : Path.Combine(outputDirectory, $"bits-{AllocationOptions.FormatBits(target)}");
}
