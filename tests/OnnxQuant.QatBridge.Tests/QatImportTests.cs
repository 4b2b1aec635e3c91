using OnnxQuant.Cli;
using OnnxQuant.Runtime;

namespace OnnxQuant.QatBridge.Tests;

/// <summary>Generates one quantized tiny-DETR student with the Python exporter for all tests of the class.</summary>
public sealed class StudentFixture : IDisposable
{
    public TempDir Dir { get; } = new();

    public StudentFixture() => Repo.RunPython("-W", "ignore", "-m", "onnxquant_qat.fixture", Dir.Path);

    public string Student => Dir.File("student.onnx");

    public float[] Floats(string name)
    {
        var bytes = File.ReadAllBytes(Dir.File(name));
        var values = new float[bytes.Length / 4];
        Buffer.BlockCopy(bytes, 0, values, 0, bytes.Length);
        return values;
    }

    public void Dispose() => Dir.Dispose();
}

public class QatImportTests(StudentFixture fixture) : IClassFixture<StudentFixture>
{
    [Fact]
    public void Exported_student_runs_in_onnx_runtime_and_matches_pytorch()
    {
        using var session = InferenceSession.Create(fixture.Student);
        var input = new NamedTensor("images", TensorData.FromFloats(fixture.Floats("input.bin"), [1, 3, 64, 64]));
        var outputs = session.Run([input]);
        var boxes = outputs.Single(o => o.Name == "pred_boxes").Data.ToFloats();
        var logits = outputs.Single(o => o.Name == "pred_logits").Data.ToFloats();
        var expectedBoxes = fixture.Floats("pred_boxes.bin");
        var expectedLogits = fixture.Floats("pred_logits.bin");
        Assert.Equal(expectedBoxes.Length, boxes.Length);
        // Same integer grid on both sides; only float summation order differs, which can flip a rounding of an
        // activation that sits on a .5 boundary, so the bound is one activation step's worth, not 1e-6.
        Assert.All(expectedBoxes.Zip(boxes), p => Assert.InRange(Math.Abs(p.First - p.Second), 0, 2e-2));
        Assert.All(expectedLogits.Zip(logits), p => Assert.InRange(Math.Abs(p.First - p.Second), 0, 5e-2));
        var meanBoxDiff = expectedBoxes.Zip(boxes).Average(p => Math.Abs(p.First - p.Second));
        Assert.True(meanBoxDiff < 5e-3, $"mean |box difference| {meanBoxDiff}");
    }

    [Fact]
    public void Import_writes_model_report_and_manifest()
    {
        using var outDir = new TempDir();
        var result = QatImporter.Import(new QatImportRequest(fixture.Student, outDir.Path), "test");
        Assert.Equal(File.ReadAllBytes(fixture.Student), File.ReadAllBytes(result.ModelPath));
        Assert.True(result.Report.QuantizeLinearNodes > 20);
        Assert.True(result.Report.DequantizeLinearNodes > result.Report.QuantizeLinearNodes);
        Assert.NotNull(result.Report.Learned);
        Assert.Contains(result.Report.Learned!.Layers, l => l is { Name: "input_proj", WeightBits: 2, ActBits: 8 });
        Assert.Contains(result.Report.Learned.Attention, a => a is { Name: "decoder.0.cross_attn", Aligned: true, AttentionBits: 8 });
        Assert.Equal(["pred_logits", "pred_boxes"], result.Report.Check.Outputs.Select(o => o.Name));
        var manifest = File.ReadAllText(result.ManifestPath);
        Assert.Contains("onnxquant.qat-manifest/1", manifest);
        Assert.Contains("model.onnx", manifest);
        Assert.Contains("onnxquant.qat-import-report/1", File.ReadAllText(result.ReportPath));
    }

    [Fact]
    public void Import_is_deterministic()
    {
        using var a = new TempDir();
        using var b = new TempDir();
        var ra = QatImporter.Import(new QatImportRequest(fixture.Student, a.Path), "test");
        var rb = QatImporter.Import(new QatImportRequest(fixture.Student, b.Path), "test");
        Assert.Equal(File.ReadAllBytes(ra.ManifestPath), File.ReadAllBytes(rb.ManifestPath));
    }

    [Fact]
    public void A_truncated_student_is_refused_and_nothing_is_written()
    {
        using var dir = new TempDir();
        var bytes = File.ReadAllBytes(fixture.Student);
        File.WriteAllBytes(dir.File("broken.onnx"), bytes[..(bytes.Length / 2)]);
        var outDir = dir.File("out");
        var e = Assert.ThrowsAny<Exception>(() => QatImporter.Import(new QatImportRequest(dir.File("broken.onnx"), outDir), "test"));
        Assert.True(e is OnnxQuant.Frontend.FrontendException or QatBridgeException, e.ToString());
        Assert.False(Directory.Exists(outDir));
    }

    [Fact]
    public void A_float_model_is_not_an_artifact()
    {
        using var dir = new TempDir();
        var e = Assert.Throws<QatBridgeException>(() => QatImporter.Import(new QatImportRequest(fixture.Dir.File("float.onnx"), dir.File("o")), "test"));
        Assert.Contains("no DequantizeLinear", e.Message);
        Assert.False(Directory.Exists(dir.File("o")));
    }

    [Fact]
    public void A_named_scales_file_must_exist()
    {
        using var dir = new TempDir();
        Assert.Throws<FileNotFoundException>(() => QatImporter.Import(new QatImportRequest(fixture.Student, dir.File("o"), dir.File("none.json")), "test"));
        Assert.False(Directory.Exists(dir.File("o")));
    }

    [Fact]
    public void Cli_round_trip_and_user_errors()
    {
        using var dir = new TempDir();
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        var code = CliApp.Run(["qat-import", fixture.Student, "-o", dir.File("out")], stdout, stderr);
        Assert.True(code == 0, stderr.ToString());
        Assert.Contains("student runs in ONNX Runtime", stdout.ToString());
        Assert.True(File.Exists(dir.File("out/manifest.json")));

        stderr = new StringWriter();
        Assert.Equal(2, CliApp.Run(["qat-import", dir.File("missing.onnx"), "-o", dir.File("out2")], new StringWriter(), stderr));
        Assert.StartsWith("error:", stderr.ToString());
        Assert.DoesNotContain("   at ", stderr.ToString());

        Assert.Equal(0, CliApp.Run(["qat-recipe", "--bits", "2-2-8", "--float", "class_heads", "--layer", "input_proj=8/8",
            "-o", dir.File("r.json")], new StringWriter(), new StringWriter()));
        var recipe = QatRecipeJson.Read(dir.File("r.json"));
        Assert.Equal(new BitWidths(2, 2, 8), recipe.Defaults);
        Assert.Equal(8, recipe.Layer("input_proj")!.WeightBits);
        stderr = new StringWriter();
        Assert.Equal(2, CliApp.Run(["qat-recipe", "--bits", "2-2", "-o", dir.File("r2.json")], new StringWriter(), stderr));
        Assert.Contains("W-A-Attention", stderr.ToString());
        Assert.False(File.Exists(dir.File("r2.json")));
    }
}
