using System.Diagnostics;
using System.Text.Json;
using OnnxQuant.Frontend;
using OnnxQuant.Runtime;

namespace OnnxQuant.QatBridge;

/// <summary>What to import: the trained student (QDQ ONNX from the trainer), its learned-scales sidecar (optional;
/// scales.json beside the student is used when present), the output folder, and optional inputs for the ORT check
/// (otherwise a fixed-seed normal input of the model's static shape, dynamic dimensions set to 1).</summary>
public sealed record QatImportRequest(
    string StudentPath,
    string OutputDirectory,
    string? ScalesPath = null,
    IReadOnlyList<NamedTensor>? CheckInputs = null,
    SessionOptions? Session = null);

/// <summary>Summary of one output of the ORT check.</summary>
public sealed record OutputCheck(string Name, IReadOnlyList<long> Shape, float Min, float Max, float MeanAbs);

/// <summary>The student ran in ONNX Runtime on the check input and every output was finite. No timings here: the
/// report must be byte-identical for identical inputs (they are in <see cref="QatImportResult"/>).</summary>
public sealed record RuntimeCheck(string Provider, IReadOnlyList<OutputCheck> Outputs);

/// <summary>report.json of an imported student.</summary>
public sealed record QatImportReport(
    string Student,
    string StudentSha256,
    int QuantizeLinearNodes,
    int DequantizeLinearNodes,
    LearnedScales? Learned,
    RuntimeCheck Check);

public sealed record QatImportResult(string ModelPath, string ReportPath, string ManifestPath, QatImportReport Report,
    double CheckMilliseconds);

/// <summary>
/// Turns a trained student into the artifact form `compile` writes: out/model.onnx (the QDQ model), report.json and
/// manifest.json (file sizes and SHA-256). The student is loaded and run in ONNX Runtime first; nothing is written
/// unless it loads, runs and gives finite outputs.
/// </summary>
public static class QatImporter
{
    public const string ReportSchema = "onnxquant.qat-import-report/1";
    public const string ManifestSchema = "onnxquant.qat-manifest/1";

    /// <exception cref="FileNotFoundException">The student or the named scales file does not exist.</exception>
    /// <exception cref="FrontendException">The student is not a valid ONNX model.</exception>
    /// <exception cref="QatBridgeException">ONNX Runtime refuses the student, an input cannot be synthesized, an
    /// output is not finite, or the scales file is malformed.</exception>
    public static QatImportResult Import(QatImportRequest request, string toolVersion)
    {
        if (!File.Exists(request.StudentPath))
            throw new FileNotFoundException($"student model not found: {request.StudentPath}", request.StudentPath);
        var bytes = File.ReadAllBytes(request.StudentPath);
        var scalesPath = request.ScalesPath;
        if (scalesPath is null)
        {
            var beside = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(request.StudentPath))!, "scales.json");
            scalesPath = File.Exists(beside) ? beside : null;
        }
        else if (!File.Exists(scalesPath))
            throw new FileNotFoundException($"learned-scales file not found: {scalesPath}", scalesPath);
        var learned = scalesPath is null ? null : LearnedScales.Read(scalesPath);
        // The output folder is checked and locked before the runtime check, and published as one unit at the end.
        using var output = OnnxQuant.Passes.Artifact.OutputFolder.Open(request.OutputDirectory,
            [new("student model", request.StudentPath), .. scalesPath is null ? Array.Empty<OnnxQuant.Passes.Artifact.InputPath>() : [new("learned-scales file", scalesPath)]]);

        // The frontend validates the file first, so a malformed student gets its message rather than ORT's.
        var model = ModelIO.Load(bytes, Path.GetDirectoryName(Path.GetFullPath(request.StudentPath)));
        var nodes = model.Graph.AllNodes().Where(n => n.Domain is "" or "ai.onnx").ToList();
        var quantize = nodes.Count(n => n.OpType == "QuantizeLinear");
        var dequantize = nodes.Count(n => n.OpType == "DequantizeLinear");
        var clock = Stopwatch.StartNew();
        var check = CheckInRuntime(bytes, request);
        var checkMs = clock.Elapsed.TotalMilliseconds;
        if (dequantize == 0)
            throw new QatBridgeException($"{request.StudentPath}: has no DequantizeLinear node; export the student with " +
                "onnxquant_qat.export (a float model is not a quantized artifact)");

        var report = new QatImportReport(Path.GetFileName(request.StudentPath), Hashing.Sha256Hex(bytes), quantize, dequantize, learned, check);
        var reportBytes = SerializeReport(report, toolVersion);
        var outDir = Path.GetFullPath(request.OutputDirectory);
        var modelPath = Path.Combine(outDir, "model.onnx");
        var reportPath = Path.Combine(outDir, "report.json");
        var manifestPath = Path.Combine(outDir, "manifest.json");
        var manifestBytes = SerializeManifest(toolVersion, [("model.onnx", bytes), ("report.json", reportBytes)]);
        output.WriteFile("model.onnx", bytes);
        output.WriteFile("report.json", reportBytes);
        output.WriteFile("manifest.json", manifestBytes);
        output.Publish();
        return new QatImportResult(modelPath, reportPath, manifestPath, report, Math.Round(checkMs, 1));
    }

    private static RuntimeCheck CheckInRuntime(byte[] model, QatImportRequest request)
    {
        InferenceSession session;
        try
        {
            session = InferenceSession.Create(model, request.Session ?? SessionOptions.Default);
        }
        catch (OrtException e)
        {
            throw new QatBridgeException($"{request.StudentPath}: ONNX Runtime cannot load the student ({e.Message})", e);
        }
        using (session)
        {
            var inputs = request.CheckInputs ?? SynthesizeInputs(session, request.StudentPath);
            IReadOnlyList<NamedTensor> outputs;
            try
            {
                outputs = session.Run(inputs);
            }
            catch (OrtException e)
            {
                throw new QatBridgeException($"{request.StudentPath}: ONNX Runtime cannot run the student ({e.Message})", e);
            }
            var checks = new List<OutputCheck>();
            foreach (var output in outputs)
            {
                if (output.Data.DataType is not (DataType.Float or DataType.Double or DataType.Float16 or DataType.BFloat16))
                    continue;
                var values = output.Data.ToFloats();
                var bad = Array.FindIndex(values, v => !float.IsFinite(v));
                if (bad >= 0)
                    throw new QatBridgeException($"{request.StudentPath}: output '{output.Name}' has a non-finite value " +
                        $"({values[bad]}) at flat index {bad}; the student is broken (check its learned scales)");
                var min = values.Length == 0 ? 0 : values.Min();
                var max = values.Length == 0 ? 0 : values.Max();
                var meanAbs = values.Length == 0 ? 0 : (float)values.Average(v => Math.Abs((double)v));
                checks.Add(new OutputCheck(output.Name, output.Data.Shape, min, max, meanAbs));
            }
            return new RuntimeCheck(session.ActiveProvider.ToString(), checks);
        }
    }

    private static IReadOnlyList<NamedTensor> SynthesizeInputs(InferenceSession session, string where)
    {
        var rng = new Random(0);
        var inputs = new List<NamedTensor>();
        foreach (var info in session.Inputs)
        {
            if (info.DataType != DataType.Float)
                throw new QatBridgeException($"{where}: input '{info.Name}' is {info.DataType}; only float inputs can be " +
                    "synthesized for the check, pass check inputs instead");
            var shape = info.Dims.Select(d => d < 0 ? 1L : d).ToArray();
            // A normal input resembles normalized images better than uniform noise.
            inputs.Add(new NamedTensor(info.Name, RandomInputs.Normal(shape, rng)));
        }
        return inputs;
    }

    private static readonly JsonSerializerOptions JsonOptions = new()
    {
        WriteIndented = true,
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
    };

    private static byte[] SerializeReport(QatImportReport report, string toolVersion)
    {
        var doc = new { Schema = ReportSchema, Tool = $"onnxquant {toolVersion}", Command = "qat-import", Report = report };
        return JsonSerializer.SerializeToUtf8Bytes(doc, JsonOptions);
    }

    private static byte[] SerializeManifest(string toolVersion, IReadOnlyList<(string Name, byte[] Bytes)> files)
    {
        var doc = new
        {
            Schema = ManifestSchema,
            Tool = $"onnxquant {toolVersion}",
            Command = "qat-import",
            Files = files.Select(f => new { Path = f.Name, Bytes = f.Bytes.LongLength, Sha256 = Hashing.Sha256Hex(f.Bytes) }).ToList(),
        };
        return JsonSerializer.SerializeToUtf8Bytes(doc, JsonOptions);
    }
}
