namespace OnnxQuant.Frontend.Tests;

/// <summary>The ONNX backend test suite Debian installs (libonnx-testdata) and small models built in code.</summary>
internal static class TestModels
{
    public const string SuiteRoot = "/usr/share/libonnx-testdata/data";

    /// <summary>Every model of the suite, in a stable order.</summary>
    public static IReadOnlyList<string> Suite { get; } =
        Directory.EnumerateFiles(SuiteRoot, "*.onnx", SearchOption.AllDirectories).Order(StringComparer.Ordinal).ToArray();

    /// <summary>x -> Conv(w, b) -> Relu -> y, with float weights.</summary>
    public static Model ConvRelu()
    {
        var g = new Graph("conv_relu");
        var x = new Value("x", new TensorType(DataType.Float, new Shape([Dim.Symbolic("N"), 3, 8, 8])));
        g.AddInput(x);
        var w = g.AddInitializer("w", Tensor.FromFloats("w", [4, 3, 3, 3], Enumerable.Range(0, 108).Select(i => i * 0.01f).ToArray()));
        var b = g.AddInitializer("b", Tensor.FromFloats("b", [4], [0.1f, 0.2f, 0.3f, 0.4f]));
        var conv = new Node("Conv", [x, w, b], ["c"], name: "conv0",
            attributes: [Attribute.FromInts("pads", [1, 1, 1, 1]), Attribute.FromInts("kernel_shape", [3, 3])]);
        g.AddNode(conv);
        var relu = new Node("Relu", [conv.Outputs[0]], ["y"], name: "relu0");
        g.AddNode(relu);
        relu.Outputs[0].Type = new TensorType(DataType.Float, new Shape([Dim.Symbolic("N"), 4, 8, 8]));
        g.AddOutput(relu.Outputs[0]);
        var model = new Model(g) { ProducerName = "tests" };
        model.OpsetImports.Default = 17;
        return model;
    }

    public static string TempDir()
    {
        var dir = Path.Combine(Path.GetTempPath(), "onnxquant-frontend-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        return dir;
    }
}
