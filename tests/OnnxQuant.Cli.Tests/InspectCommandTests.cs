using System.Text.Json;
using OnnxQuant.Frontend;

namespace OnnxQuant.Cli.Tests;

public class InspectCommandTests
{
    private const string SuiteRoot = "/usr/share/libonnx-testdata/data";

    private static (int Code, string Out, string Err) Run(params string[] args) => CliRunner.Run(args);

    [Fact]
    public void JsonWorksOnEverySuiteModelAndMatchesTheModel()
    {
        var paths = Directory.EnumerateFiles(SuiteRoot, "*.onnx", SearchOption.AllDirectories).Order(StringComparer.Ordinal).ToList();
        Assert.Equal(1072, paths.Count);
        var failures = new List<string>();
        foreach (var path in paths)
        {
            var (code, stdout, stderr) = Run("inspect", path, "--json");
            if (code != 0)
            {
                failures.Add($"{path}: exit {code}: {stderr}");
                continue;
            }
            using var doc = JsonDocument.Parse(stdout);
            var root = doc.RootElement;
            var model = ModelIO.Load(path);
            var opTypes = root.GetProperty("op_types").EnumerateObject().Sum(p => p.Value.GetInt32());
            var expectedOps = model.AllGraphs().Sum(g => g.Nodes.Count);
            var parameters = model.AllGraphs().SelectMany(g => g.Initializers).Sum(v => v.Initializer!.ElementCount);
            if (root.GetProperty("ir_version").GetInt64() != model.IrVersion
                || root.GetProperty("nodes").GetInt32() != model.Graph.Nodes.Count
                || opTypes != expectedOps
                || root.GetProperty("parameters").GetInt64() != parameters
                || root.GetProperty("opsets").EnumerateObject().Count() != model.OpsetImports.Count
                || root.GetProperty("outputs").GetArrayLength() != model.Graph.Outputs.Count
                || root.GetProperty("inputs").EnumerateArray().Any(i => !i.TryGetProperty("name", out _) || !i.TryGetProperty("type", out _) || !i.TryGetProperty("shape", out _)))
                failures.Add($"{path}: JSON does not match the model");
        }
        Assert.True(failures.Count == 0, $"{failures.Count} failed:\n" + string.Join("\n", failures.Take(20)));
    }

    [Fact]
    public void JsonReportsWhatCompileWouldQuantize()
    {
        var (code, stdout, _) = Run("inspect", $"{SuiteRoot}/pytorch-converted/test_Conv2d_depthwise/model.onnx", "--json");
        Assert.Equal(0, code);
        var root = JsonDocument.Parse(stdout).RootElement;
        Assert.Equal(6, root.GetProperty("opsets").GetProperty("ai.onnx").GetInt32());
        Assert.Equal(1, root.GetProperty("op_types").GetProperty("Conv").GetInt32());
        Assert.Equal(40, root.GetProperty("parameters").GetInt64());
        var input = root.GetProperty("inputs")[0];
        Assert.Equal("FLOAT", input.GetProperty("type").GetString());
        Assert.Equal([2, 4, 6, 6], input.GetProperty("shape").EnumerateArray().Select(d => d.GetInt32()));
        // This IR 3 export lists its weight among the graph inputs too: inspect shows compile takes it as a weight
        // (kept in float only for its size), and says so.
        Assert.Empty(root.GetProperty("quantizable").EnumerateArray());
        var kept = root.GetProperty("not_quantized").EnumerateArray().Single();
        Assert.Contains("fewer than 64", kept.GetProperty("reason").GetString());
        var (code2, stdout2, _) = Run("inspect", $"{SuiteRoot}/pytorch-converted/test_Conv2d/model.onnx", "--json");
        Assert.Equal(0, code2);
        var layer = JsonDocument.Parse(stdout2).RootElement.GetProperty("quantizable").EnumerateArray().Single();
        Assert.Equal("1", layer.GetProperty("weight").GetString());
        var warnings = root.GetProperty("warnings").EnumerateArray().Select(w => w.GetString()!).ToList();
        Assert.Contains(warnings, w => w.Contains("also graph inputs") && w.Contains("treated as weights"));
        Assert.Contains(warnings, w => w.Contains("IR version 3 is written back as IR version 10"));
    }

    [Fact]
    public void SharedWeightsAreListedAsTiedLayers()
    {
        // The bundled DETR's reference-point MLP (two weights) is applied by each of its three decoder layers.
        var model = RepoPaths.File("models/fixtures/detr_small.onnx");
        var (code, stdout, _) = Run("inspect", model, "--json");
        Assert.Equal(0, code);
        var layers = JsonDocument.Parse(stdout).RootElement.GetProperty("quantizable").EnumerateArray().ToList();
        Assert.Equal(71, layers.Count);
        var tied = layers.Where(l => l.TryGetProperty("shares_weight_of", out _))
            .Select(l => (l.GetProperty("node").GetString(), l.GetProperty("shares_weight_of").GetString())).ToList();
        Assert.Equal(4, tied.Count);
        Assert.Contains(("/model/ref_point_head/layers.0_2/MatMul", "/model/ref_point_head/layers.0/MatMul"), tied);
        // What canonicalization changed, as the compile's report says it: the copies of the shared weights among it.
        var changed = JsonDocument.Parse(stdout).RootElement.GetProperty("canonicalization").GetString()!;
        Assert.Contains("unshare-weights 4", changed);
        var (code2, table, _) = Run("inspect", model);
        Assert.Equal(0, code2);
        Assert.Contains("shared weights: 2 weight(s) applied by 6 of these layers", table);
        Assert.Contains("canonicalization rewrote the graph", table);
    }

    [Fact]
    public void TablesNameTheSections()
    {
        var (code, stdout, _) = Run("inspect", $"{SuiteRoot}/node/test_loop11/model.onnx");
        Assert.Equal(0, code);
        foreach (var section in new[] { "IR version", "opsets", "inputs and outputs", "op types", "quantizable layers: 0", "Loop" })
            Assert.Contains(section, stdout);
    }

    [Fact]
    public void BadFileIsOneLineOnStderrAndExitTwo()
    {
        var dir = Path.Combine(Path.GetTempPath(), "onnxquant-cli-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        try
        {
            var good = File.ReadAllBytes($"{SuiteRoot}/pytorch-converted/test_Conv2d_depthwise/model.onnx");
            var truncated = Path.Combine(dir, "truncated.onnx");
            File.WriteAllBytes(truncated, good[..(good.Length / 2)]);
            var missing = Path.Combine(dir, "missing.onnx");
            foreach (var path in new[] { truncated, missing })
            {
                var (code, stdout, stderr) = Run("inspect", path);
                Assert.Equal(ExitCodes.BadInput, code);
                Assert.Equal("", stdout);
                var lines = stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
                Assert.Single(lines);
                Assert.StartsWith("error: ", lines[0]);
                Assert.Contains(Path.GetFileName(path), lines[0]);
            }
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
