using OnnxQuant.Frontend;
using OnnxQuant.Passes.Allocate;
using OnnxQuant.Passes.Pipeline;

namespace OnnxQuant.Passes.Artifact;

/// <summary>One compiled target: its report and where its model went.</summary>
public sealed record TargetResult(CompileReport Report, string ModelPath, string ReportPath)
{
    /// <inheritdoc cref="TargetArtifact.WithWeights"/>
    public Model? WithWeights { get; init; }
}

/// <summary>A target ready to be written: its report (without timings) and its model's bytes.</summary>
public sealed record TargetArtifact(CompileReport Report, byte[] Model)
{
    /// <summary>The model as rewritten before what it computes from its weights alone was stored computed (null when
    /// nothing was): the same computation, with every quantized layer's weight, which a QAT student starts from.</summary>
    public Model? WithWeights { get; init; }
}

/// <summary>What the manifest says about the inputs.</summary>
public sealed record ManifestInputs(string ToolVersion, string ModelFile, string ModelHash, string DataHash, int Samples,
    IReadOnlyList<OptionEntry> Options);

/// <summary>
/// Writes the artifacts only after everything was computed, all into the staging folder of an
/// <see cref="OutputFolder"/>: each model, then each report and report.html, then the manifest; the caller then publishes the folder
/// as one unit. One target goes straight into the output folder; several go into <c>bits-&lt;target&gt;/</c>.
/// </summary>
public static class ArtifactStage
{
    /// <summary>The inputs a compile reads; the output folder and every file output are checked against them.</summary>
    public static IReadOnlyList<InputPath> Inputs(string modelPath, string calibPath, string? verifyData, string? curvesFile,
        string? evalData, string? evalAnnotations, string? taskData = null, string? taskAnnotations = null) =>
        new (string Label, string? Path)[]
        {
            ("input model", modelPath), ("calibration data", calibPath), ("verification data", verifyData),
            ("curves file", curvesFile), ("evaluation data", evalData), ("evaluation annotations", evalAnnotations),
            ("task data", taskData), ("task annotations", taskAnnotations),
        }.Where(p => !string.IsNullOrWhiteSpace(p.Path)).Select(p => new InputPath(p.Label, p.Path!)).ToList();

    public static string ModelPath(string outputDirectory, double target, bool single) =>
        Path.Combine(TargetDirectory(outputDirectory, target, single), "model.onnx");

    public static IReadOnlyList<TargetResult> WriteModels(OutputFolder folder, IReadOnlyList<TargetArtifact> targets,
        out IReadOnlyList<ReportWriter.OutputFile> written)
    {
        var single = targets.Count == 1;
        var results = new List<TargetResult>();
        var outputs = new List<ReportWriter.OutputFile>();
        foreach (var target in targets)
        {
            var (report, bytes) = (target.Report, target.Model);
            var dir = TargetDirectory("", report.TargetBits, single);
            var relative = Path.Combine(dir, "model.onnx").Replace('\\', '/');
            FaultPoints.Reach("write:model", folder.FinalPath(relative));
            folder.WriteFile(relative, bytes);
            outputs.Add(new ReportWriter.OutputFile(relative, Hashing.Sha256Hex(bytes), bytes.LongLength));
            results.Add(new TargetResult(report, folder.FinalPath(relative), folder.FinalPath(Path.Combine(dir, "report.json"))) { WithWeights = target.WithWeights });
        }
        written = outputs;
        return results;
    }

    /// <summary>
    /// Each report with the final timings, then the manifest. Every report file of the artifact is written here, into
    /// the staging folder, so it is published with the models; another report format belongs beside report.json.
    /// </summary>
    public static IReadOnlyList<TargetResult> WriteReports(OutputFolder folder, IReadOnlyList<TargetResult> targets,
        IReadOnlyList<StageTime> timings, ManifestInputs inputs, IReadOnlyList<ReportWriter.OutputFile> outputs)
    {
        var results = targets.Select(t => t with { Report = t.Report with { Timings = timings } }).ToList();
        var reports = new List<(string, byte[])>();
        foreach (var r in results)
        {
            var relative = Path.GetRelativePath(folder.Requested, r.ReportPath);
            FaultPoints.Reach("write:report", r.ReportPath);
            var json = ReportWriter.Report(r.Report);
            folder.WriteFile(relative, json);
            reports.Add((relative.Replace('\\', '/'), json));
        }
        var manifest = ReportWriter.Manifest(inputs.ToolVersion, inputs.ModelFile, inputs.ModelHash, inputs.DataHash,
            inputs.Samples, inputs.Options, outputs);
        // The page is rendered from the JSON bytes, as `onnxquant report` renders it from the files; the manifest stays last.
        folder.WriteFile(HtmlReportWriter.FileName, HtmlReportWriter.Render(manifest, reports));
        FaultPoints.Reach("write:manifest", folder.FinalPath("manifest.json"));
        folder.WriteFile("manifest.json", manifest);
        return results;
    }

    private static string TargetDirectory(string outputDirectory, double target, bool single) =>
        single ? outputDirectory : Path.Combine(outputDirectory, $"bits-{AllocationOptions.FormatBits(target)}");
}
