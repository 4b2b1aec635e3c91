using System.Diagnostics;
using OnnxQuant.Data;
using OnnxQuant.Frontend;
using OnnxQuant.Passes.Compile;
using OnnxQuant.Passes.Curves;
using OnnxQuant.Passes.Pipeline;
using OnnxQuant.Runtime;
using Attribute = OnnxQuant.Frontend.Attribute;

namespace OnnxQuant.Passes.Tests.Compile;

/// <summary>
/// Models as older exporters wrote them compile end to end: IR version 3, opset 8, every initializer also listed as a
/// graph input, an input without a batch axis; and a compile that cannot succeed stops before calibration.
/// </summary>
public sealed class IntakeCompileTests(Xunit.Abstractions.ITestOutputHelper log) : IDisposable
{
    private readonly string _root = Path.Combine(Path.GetTempPath(), $"onnxquant-intake-{Guid.NewGuid():N}");
    private const int Samples = 8;

    public void Dispose() => Directory.Delete(_root, true);

    /// <summary>
    /// A small CNN for a [3, 12, 12] image (no batch axis): Unsqueeze, Conv, BatchNormalization, Relu, MaxPool, Conv,
    /// Add (residual), Relu, Flatten, Gemm, Softmax, at opset 8 and IR 3 with its initializers listed as inputs.
    /// </summary>
    private static Model OldCnn(Func<Net, Value, Value>? tail = null)
    {
        var net = new Net(opset: 8, seed: 5);
        net.Model.IrVersion = 3;
        net.Model.ProducerName = "old-exporter";
        var x = net.Input("x", 3, 12, 12);
        var batched = net.Op("Unsqueeze", [x], Attribute.FromInts("axes", [0]));
        var c1 = net.Op("Conv", [batched, net.Random("w1", [8, 3, 3, 3], 0.4f), net.Random("b1", [8], 0.1f)],
            Attribute.FromInts("pads", [1, 1, 1, 1]), Attribute.FromInts("kernel_shape", [3, 3]));
        var bn = net.OpMulti("BatchNormalization", [c1, net.Random("gamma", [8], 0.2f, 1f), net.Random("beta", [8], 0.1f),
            net.Random("mean", [8], 0.1f), net.Random("var", [8], 0.2f, 1f)], 1, Attribute.FromFloat("epsilon", 1e-5f))[0];
        var r1 = net.Op("Relu", [bn]);
        var p = net.OpMulti("MaxPool", [r1], 1, Attribute.FromInts("kernel_shape", [2, 2]), Attribute.FromInts("strides", [2, 2]))[0];
        var c2 = net.Op("Conv", [p, net.Random("w2", [8, 8, 3, 3], 0.2f), net.Random("b2", [8], 0.1f)],
            Attribute.FromInts("pads", [1, 1, 1, 1]), Attribute.FromInts("kernel_shape", [3, 3]));
        var sum = net.Op("Add", [c2, p]);
        var r2 = net.Op("Relu", [sum]);
        if (tail is not null)
            r2 = tail(net, r2);
        var flat = net.Op("Flatten", [r2], Attribute.FromInt("axis", 1));
        var logits = net.Op("Gemm", [flat, net.Random("wg", [10, 288], 0.1f), net.Random("bg", [10], 0.1f)], Attribute.FromInt("transB", 1));
        net.Output(net.Op("Softmax", [logits], Attribute.FromInt("axis", 1)));
        foreach (var init in net.Graph.Initializers.ToList())
            net.Graph.AddInput(init);
        return net.Model;
    }

    private (string Model, string Data) Write(Model model)
    {
        Directory.CreateDirectory(_root);
        var modelPath = Path.Combine(_root, "old.onnx");
        ModelIO.Save(model, modelPath);
        var dataPath = Path.Combine(_root, "calib.npz");
        // Samples stacked on a new first axis: [N, 3, 12, 12] for the input [3, 12, 12].
        Npz.Write(dataPath, [new NamedArray("x", NpyArray.FromFloats(Net.RandomData(Samples * 3 * 12 * 12, 9), Samples, 3, 12, 12))]);
        return (modelPath, dataPath);
    }

    private CompileResult Compile(string modelPath, string dataPath, string name, CompileOptions options) =>
        Compiler.Run(modelPath, dataPath, Path.Combine(_root, name),
            options with { Curves = options.Curves with { CacheDir = Path.Combine(_root, "cache") }, Data = options.Data with { CalibSamples = Samples } },
            "test", SilentProgress.Instance);

    private static float[] RunFile(string path, float[] sample)
    {
        using var session = InferenceSession.Create(path, new SessionOptions { IntraOpThreads = 1 });
        var inputs = new List<NamedTensor> { new("x", TensorData.FromFloats(sample, [3, 12, 12])) };
        return session.Run(inputs, [session.Outputs[0].Name])[0].Data.ToFloats();
    }

    [Fact]
    public void Ir3Opset8CnnWithInitializerInputsCompilesAt8And4BitsAndRunsInOnnxRuntime()
    {
        var (modelPath, dataPath) = Write(OldCnn());
        var result = Compile(modelPath, dataPath, "out", new CompileOptions { Allocation = new() { TargetBits = [8, 4] } });

        Assert.Equal(2, result.Targets.Count);
        var sample = Net.RandomData(3 * 12 * 12, 77);
        var reference = RunFile(modelPath, sample); // ONNX Runtime runs the IR 3 original as it is
        foreach (var (target, bound) in new[] { (8.0, 0.02), (4.0, 0.2) })
        {
            var t = result.Targets.Single(x => x.Report.TargetBits == target);
            Assert.Equal(3, t.Report.Layers.Count); // both Conv and the Gemm, though their weights were graph inputs
            Assert.Contains(t.Report.Notes, n => n.Contains("also graph inputs") && n.Contains("treated as weights"));
            Assert.Contains(t.Report.Notes, n => n.Contains("IR version 3 is written back"));
            var output = ModelIO.Load(t.ModelPath);
            Assert.True(output.IrVersion >= 10, $"IR {output.IrVersion}");
            Assert.True(output.OpsetImports.Default >= 13);
            Assert.Equal(["x"], output.Graph.Inputs.Select(v => v.Name));
            var quantized = RunFile(t.ModelPath, sample);
            var error = Math.Sqrt(reference.Zip(quantized, (a, b) => (double)(a - b) * (a - b)).Sum() / reference.Sum(a => (double)a * a));
            log.WriteLine($"{target} bits: relative L2 error {error:F4} of the class probabilities (bound {bound}), opset {output.OpsetImports.Default}");
            Assert.True(error < bound, $"{target} bits: relative error {error:F4} >= {bound}");
        }
    }

    [Fact]
    public void KeepInitializerInputsListsTheFloatInitializersAgain()
    {
        var (modelPath, dataPath) = Write(OldCnn());
        var result = Compile(modelPath, dataPath, "keep",
            new CompileOptions { Allocation = new() { TargetBits = [8] }, Rewrite = new() { KeepInitializerInputs = true }, Curves = new() { Mode = CurveMode.Fast } });
        var output = ModelIO.Load(result.Targets[0].ModelPath);
        var inputs = output.Graph.Inputs.Select(v => v.Name).ToList();
        Assert.Equal("x", inputs[0]);
        // The Gemm bias stays float and is again overridable; quantized weights are not inputs any more.
        Assert.Contains("bg", inputs);
        Assert.DoesNotContain("wg", inputs);
        Assert.All(inputs.Skip(1), name => Assert.NotNull(output.Graph.FindInitializer(name)));
        Assert.Equal(10, RunFile(result.Targets[0].ModelPath, Net.RandomData(3 * 12 * 12, 3)).Length);
    }

    [Fact]
    public void ModelThatOnnxRuntimeCannotRunIsRefusedBeforeCalibration()
    {
        // Unsqueeze then Squeeze of axis 0 fine; a Reshape to 7 elements cannot run on 288.
        var model = OldCnn();
        var flatten = model.Graph.Nodes.Single(n => n.OpType == "Flatten");
        var shape = model.Graph.AddInitializer("bad_shape", Tensor.FromInt64s("bad_shape", [2], [1, 7]));
        var reshape = new Node("Reshape", [flatten.Inputs[0], shape], ["bad"], name: "bad_reshape");
        model.Graph.InsertBefore(flatten, reshape);
        flatten.ReplaceInput(0, reshape.Outputs[0]);
        var (modelPath, dataPath) = Write(model);
        var clock = Stopwatch.StartNew();
        var ex = Assert.Throws<CompileException>(() => Compile(modelPath, dataPath, "refused", new CompileOptions { Allocation = new() { TargetBits = [4] } }));
        Assert.Contains("does not run in ONNX Runtime on the first calibration sample", ex.Message);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(20), $"took {clock.Elapsed}");
        Assert.False(Directory.Exists(Path.Combine(_root, "refused")));
    }

    /// <summary>An exporter's own operator (no kernel in ONNX Runtime) is refused naming it, and what to do.</summary>
    [Fact]
    public void AnOperatorOfAnotherDomainIsRefusedNamingItAndWhatToDo()
    {
        var model = OldCnn();
        model.OpsetImports["com.example"] = 1;
        var relu = model.Graph.Nodes.Last(n => n.OpType == "Relu");
        relu.OpType = "MyRelu";
        relu.Domain = "com.example";
        var (modelPath, dataPath) = Write(model);
        var ex = Assert.Throws<CompileException>(() => Compile(modelPath, dataPath, "custom", new CompileOptions { Allocation = new() { TargetBits = [4] } }));
        Assert.Contains("does not run in ONNX Runtime", ex.Message);
        Assert.Contains("operators ONNX Runtime does not ship: com.example:MyRelu", ex.Message);
        Assert.Contains("export them as standard ONNX operators", ex.Message);
        Assert.False(Directory.Exists(Path.Combine(_root, "custom")));
    }

    [Fact]
    public void OperatorTheConverterCannotRaiseIsRefusedBeforeCalibrationNamingIt()
    {
        // A Dropout whose mask is used: ONNX Runtime runs it at opset 8, but the mask's type changes at opset 10.
        var (modelPath, dataPath) = Write(OldCnn((net, x) =>
        {
            var outputs = net.OpMulti("Dropout", [x], 2, Attribute.FromFloat("ratio", 0.5f));
            return net.Op("Add", [outputs[0], outputs[1]]);
        }));
        var clock = Stopwatch.StartNew();
        var ex = Assert.Throws<CompileException>(() => Compile(modelPath, dataPath, "unconvertible", new CompileOptions { Allocation = new() { TargetBits = [4] } }));
        Assert.Contains("Dropout", ex.Message);
        Assert.Contains("uses its mask", ex.Message);
        Assert.Contains("opset 8", ex.Message);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(20), $"took {clock.Elapsed}");
        Assert.False(Directory.Exists(Path.Combine(_root, "unconvertible")));
    }
}
