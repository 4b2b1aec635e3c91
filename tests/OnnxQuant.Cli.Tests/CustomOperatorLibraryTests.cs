using OnnxQuant.Data;
using OnnxQuant.Frontend;
using Attribute = OnnxQuant.Frontend.Attribute;

namespace OnnxQuant.Cli.Tests;

/// <summary>
/// A model with an operator ONNX Runtime does not ship (ai.onnx.contrib's NegPos, from ONNX Runtime Extensions'
/// library, between two convolution stages): refused without its library, naming the option; compiled with
/// --custom-op-library, the custom node kept in the artifact and every session (calibration, curves, verification,
/// bench) registering the library.
/// </summary>
public sealed class CustomOperatorLibraryTests : IDisposable
{
    private readonly string _root = Path.Combine(Path.GetTempPath(), $"onnxquant-customop-{Guid.NewGuid():N}");

    public CustomOperatorLibraryTests() => Directory.CreateDirectory(_root);

    public void Dispose() => Directory.Delete(_root, true);

    /// <summary>The package's native library, copied beside the tests by the build.</summary>
    private static string Library
    {
        get
        {
            var path = Path.Combine(AppContext.BaseDirectory, "runtimes", "linux-x64", "native", "libortextensions.so");
            Assert.True(File.Exists(path), $"{path} is missing: the test project references Microsoft.ML.OnnxRuntime.Extensions, rebuild it");
            return path;
        }
    }

    private (string Model, string Data) Write()
    {
        var g = new Graph("negpos");
        var model = new Model(g) { IrVersion = 8 };
        model.OpsetImports[""] = 17;
        model.OpsetImports["ai.onnx.contrib"] = 1;
        var random = new Random(5);
        float[] Values(int n, float scale) => Enumerable.Range(0, n).Select(_ => scale * (float)(random.NextDouble() * 2 - 1)).ToArray();
        Value Weight(string name, long[] dims) => g.AddInitializer(name, Tensor.FromFloats(name, dims, Values((int)dims.Aggregate(1L, (a, b) => a * b), 0.4f)));
        var x = new Value("x", new TensorType(DataType.Float, new Shape([1, 3, 16, 16])));
        g.AddInput(x);
        var pads = Attribute.FromInts("pads", [1, 1, 1, 1]);
        var conv1 = new Node("Conv", [x, Weight("w1", [8, 3, 3, 3])], ["c1"], name: "conv1", attributes: [pads]);
        g.AddNode(conv1);
        var negPos = new Node("NegPos", [conv1.Outputs[0]], ["neg", "pos"], domain: "ai.onnx.contrib", name: "negpos");
        negPos.Outputs[0].Type = new TensorType(DataType.Float, null);
        negPos.Outputs[1].Type = new TensorType(DataType.Float, null);
        g.AddNode(negPos);
        var conv2 = new Node("Conv", [negPos.Outputs[1], Weight("w2", [4, 8, 3, 3])], ["c2"], name: "conv2", attributes: [pads]);
        var conv3 = new Node("Conv", [negPos.Outputs[0], Weight("w3", [4, 8, 3, 3])], ["c3"], name: "conv3", attributes: [pads]);
        g.AddNode(conv2);
        g.AddNode(conv3);
        var add = new Node("Add", [conv2.Outputs[0], conv3.Outputs[0]], ["y"], name: "add");
        add.Outputs[0].Type = new TensorType(DataType.Float, new Shape([1, 4, 16, 16]));
        g.AddNode(add);
        g.AddOutput(add.Outputs[0]);
        var modelPath = Path.Combine(_root, "negpos.onnx");
        ModelIO.Save(model, modelPath);
        var dataPath = Path.Combine(_root, "calib.npz");
        Npz.Write(dataPath, [new NamedArray("x", NpyArray.FromFloats(Values(24 * 3 * 16 * 16, 1f), 24, 1, 3, 16, 16))]);
        return (modelPath, dataPath);
    }

    [Fact]
    public void AModelWithAnotherDomainsOperatorCompilesWithItsLibrary()
    {
        var (model, data) = Write();
        string[] common = ["compile", model, "--calib", data, "--calib-samples", "16", "--target-bits", "8,4", "--no-cache", "--quiet"];

        var (code, _, stderr) = CliRunner.Run([.. common, "-o", Path.Combine(_root, "refused")]);
        Assert.Equal(2, code);
        Assert.Contains("ai.onnx.contrib:NegPos", stderr);
        Assert.Contains("--custom-op-library PATH", stderr);

        var output = Path.Combine(_root, "out");
        (code, var stdout, stderr) = CliRunner.Run([.. common, "-o", output, "--custom-op-library", Library]);
        Assert.True(code == 0, stderr);
        Assert.Contains("3 units", stdout);
        foreach (var bits in new[] { "8", "4" })
        {
            var artifact = ModelIO.Load(Path.Combine(output, $"bits-{bits}", "model.onnx"));
            Assert.Single(artifact.Graph.Nodes, n => n.OpType == "NegPos" && n.Domain == "ai.onnx.contrib");
            Assert.Equal(1, artifact.OpsetImports["ai.onnx.contrib"]);
            Assert.Equal(3, artifact.Graph.Nodes.Count(n => n.OpType == "DequantizeLinear" && n.Inputs[0]!.Initializer is not null));
        }
        using (var report = System.Text.Json.JsonDocument.Parse(File.ReadAllBytes(Path.Combine(output, "bits-8", "report.json"))))
        {
            // Verified in ONNX Runtime with the library: at 8 bits the measured distortion is small.
            var measured = report.RootElement.GetProperty("distortion").GetProperty("measured").GetDouble();
            Assert.InRange(measured, 1e-9, 1e-2);
        }

        // bench takes the library too, and so runs both models.
        (code, stdout, stderr) = CliRunner.Run("bench", model, "--vs", Path.Combine(output, "bits-8", "model.onnx"), "--runs", "3", "--warmup", "1",
            "--profile-runs", "0", "--custom-op-library", Library);
        Assert.True(code == 0, stderr);
        Assert.Contains("latency ratio", stdout);
    }

    [Fact]
    public void AMissingOrUnloadableLibraryIsAClearError()
    {
        var (model, data) = Write();
        var (code, _, stderr) = CliRunner.Run("compile", model, "--calib", data, "-o", Path.Combine(_root, "missing"), "--quiet",
            "--custom-op-library", Path.Combine(_root, "nope.so"));
        Assert.Equal(2, code);
        Assert.Contains("custom operator library", stderr);
        Assert.Contains("does not exist", stderr);
        (code, _, stderr) = CliRunner.Run("compile", model, "--calib", data, "-o", Path.Combine(_root, "not-a-library"), "--quiet",
            "--custom-op-library", data);
        Assert.Equal(2, code);
        Assert.Contains("could not be registered", stderr);
    }
}
