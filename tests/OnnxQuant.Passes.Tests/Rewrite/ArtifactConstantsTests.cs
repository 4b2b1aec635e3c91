using OnnxQuant.Frontend;
using OnnxQuant.Passes.Compile;
using OnnxQuant.Passes.Rewrite;
using OnnxQuant.Runtime;
using Attribute = OnnxQuant.Frontend.Attribute;

namespace OnnxQuant.Passes.Tests.Rewrite;

/// <summary>
/// What a quantized model computes from its weights alone (a quantized layer over learned constants) is stored
/// computed: the same outputs in ONNX Runtime, and the integer kernels that read it still fuse.
/// </summary>
public sealed class ArtifactConstantsTests : IDisposable
{
    private readonly string _root = Path.Combine(Path.GetTempPath(), $"onnxquant-artconst-{Guid.NewGuid():N}");

    public void Dispose()
    {
        if (Directory.Exists(_root))
            Directory.Delete(_root, true);
    }

    private const int Queries = 4, Width = 8;
    private static readonly long[] XShape = [1, Queries, Width];
    private static readonly float[] X = Net.RandomData(Queries * Width, 41);

    private static Value QuantDequant(Net net, Value x, string name, float scale)
    {
        var s = net.Init(name + ".scale", [], [scale]);
        var zero = net.Graph.AddInitializer(net.Graph.UniqueName(name + ".zero"), Tensor.FromRaw(name + ".zero", DataType.UInt8, [], [(byte)128]));
        return net.Op("DequantizeLinear", [net.Op("QuantizeLinear", [x, s, zero]), s, zero]);
    }

    /// <summary>A QDQ model: learned anchors through a quantized MatMul (an INT8 weight, per-column scales) whose float
    /// output a residual Add reads and whose quantized output a product with the input reads.</summary>
    private static Net QuantizedChain()
    {
        var net = new Net(seed: 42);
        var x = net.Input("x", XShape);
        var anchors = QuantDequant(net, net.Random("anchors", [1, Queries, Width], 1f), "anchors", 1f / 64);
        var random = new Random(43);
        var integers = Enumerable.Range(0, Width * Width).Select(_ => (byte)(sbyte)random.Next(-127, 128)).ToArray();
        var weight = net.Graph.AddInitializer("w_quantized", Tensor.FromRaw("w_quantized", DataType.Int8, [Width, Width], integers));
        var scales = net.Init("w_scale", [Width], Enumerable.Range(0, Width).Select(i => 0.002f + 0.001f * i).ToArray());
        var projected = net.Op("MatMul", [anchors, net.Op("DequantizeLinear", [weight, scales], Attribute.FromInt("axis", 1))]);
        projected.Producer!.Name = "mlp";
        var scores = net.Op("MatMul", [QuantDequant(net, projected, "projected", 1f / 256),
            net.Op("Transpose", [QuantDequant(net, x, "x", 1f / 64)], Attribute.FromInts("perm", [0, 2, 1]))]);
        scores.Name = "scores";
        net.Output(scores);
        var sum = net.Op("Add", [projected, x]);
        sum.Name = "sum";
        net.Output(sum);
        return net;
    }

    private static float[][] Run(Model model)
    {
        using var session = InferenceSession.Create(ModelIO.ToBytes(model), SessionOptions.Default);
        return session.Run([new NamedTensor("x", TensorData.FromFloats(X, XShape))]).Select(o => o.Data.ToFloats()).ToArray();
    }

    [Fact]
    public void AQuantizedLayerOverConstantsIsStoredComputedWithTheSameOutputs()
    {
        var net = QuantizedChain();
        var before = Run(net.Model);

        Assert.Equal(2, ArtifactConstants.Fold(net.Model, SessionOptions.Calibration));

        // The layer and its weight are gone; the product with the input reads the stored integers through their
        // DequantizeLinear, as it reads a weight; the residual Add reads the float value.
        Assert.DoesNotContain(net.Graph.Nodes, n => n.Name == "mlp");
        Assert.Null(net.Graph.FindInitializer("w_quantized"));
        var product = net.Graph.Nodes.Single(n => n.OpType == "MatMul");
        Assert.True(product.Inputs[0]!.Producer is { OpType: "DequantizeLinear" } dq && dq.Inputs[0] is { IsInitializer: true } stored
            && stored.Initializer!.DataType == DataType.UInt8);
        Assert.True(net.Graph.Nodes.Single(n => n.OpType == "Add").Inputs[0]!.IsInitializer);
        var after = Run(net.Model);
        // The stored values are the QDQ graph's own float semantics; ONNX Runtime runs the rest as before: float rounding only.
        for (var i = 0; i < before.Length; i++)
            Net.AssertClose(before[i], after[i], 1e-5f);
    }

    [Fact]
    public void DequantizedWeightsOfLayersThatReadTheInputStay()
    {
        // Only chains that run a layer over constants are stored: a weight's DequantizeLinear is not one.
        var net = new Net(seed: 44);
        var x = net.Input("x", XShape);
        var weight = net.Graph.AddInitializer("w_quantized", Tensor.FromRaw("w_quantized", DataType.Int8, [Width, Width], new byte[Width * Width]));
        var y = net.Op("MatMul", [QuantDequant(net, x, "x", 1f / 64), net.Op("DequantizeLinear", [weight, net.Init("s", [Width], new float[Width].Select(_ => 0.01f).ToArray())],
            Attribute.FromInt("axis", 1))]);
        net.Output(y);
        Assert.Equal(0, ArtifactConstants.Fold(net.Model, SessionOptions.Calibration));
        Assert.Equal(["QuantizeLinear", "DequantizeLinear", "DequantizeLinear", "MatMul"], net.Graph.Nodes.Select(n => n.OpType));
    }

    [Fact]
    public void ACompiledModuleCalledOverLearnedAnchorsComputesThatCallOnce()
    {
        // DAB-style: one MLP weight applied to learned anchors, then to queries refined by attention over the image.
        var net = new Net(seed: 45);
        var images = net.BatchInput("images", 3, 16, 16);
        var features = net.Op("Relu", [net.Op("Conv", [images, net.Random("stem.weight", [Width, 3, 3, 3], 0.4f)],
            Attribute.FromInts("strides", [2, 2]), Attribute.FromInts("pads", [1, 1, 1, 1]))]);
        features.Producer!.Inputs[0]!.Producer!.Name = "stem";
        var memory = net.Op("Transpose", [net.Op("Reshape", [features, net.Ints("tokens", 0, Width, 64)])], Attribute.FromInts("perm", [0, 2, 1]));
        var mlp = net.Random("mlp.weight", [Width, Width], 0.4f);
        var first = net.Op("MatMul", [net.Op("Sin", [net.Random("anchors", [1, Queries, Width], 1f)]), mlp]);
        first.Producer!.Name = "mlp";
        var q = net.Op("MatMul", [first, net.Random("q.weight", [Width, Width], 0.4f)]);
        q.Producer!.Name = "q";
        var scores = net.Op("MatMul", [q, net.Op("Transpose", [memory], Attribute.FromInts("perm", [0, 2, 1]))]);
        var refined = net.Op("MatMul", [net.Op("Softmax", [scores], Attribute.FromInt("axis", -1)), memory]);
        var second = net.Op("MatMul", [refined, mlp]);
        second.Producer!.Name = "mlp_1";
        second.Name = "decoded";
        net.Output(second);

        foreach (var deploy in new[] { DeployTarget.Size, DeployTarget.Speed })
        {
            var result = TestModels.CompileImages(net.Model, _root, deploy.ToString(), new CompileOptions
            {
                Allocation = new() { TargetBits = [8] },
                Curves = new() { CandidateBits = [4, 8], CacheDir = null },
                Data = new() { CalibSamples = 16, VerifySamples = 8 },
                Rewrite = new() { Deploy = deploy },
                Calibration = new() { ActBits = 8 },
            });
            var report = result.Targets.Single().Report;
            // The two calls are one tied unit and the projection between them another; the first call and the
            // projection run once.
            Assert.Equal(["stem", "mlp", "q"], report.Units.Select(u => u.Layer));
            Assert.Contains(report.Notes, n => n.Contains("stored computed"));
            var artifact = ModelIO.Load(Path.Combine(result.OutputDirectory, "model.onnx"));
            var names = artifact.Graph.Nodes.Select(n => n.Name).ToList();
            Assert.DoesNotContain("mlp", names);
            Assert.DoesNotContain("q", names);
            Assert.Contains("mlp_1", names);
            // The tied weight is still stored once, for the call over the input; the projection's is not stored, and
            // the report counts the bytes that are.
            Assert.Single(artifact.Graph.Initializers, i => i.Initializer!.DataType == DataType.Int8 && i.Initializer.ElementCount == Width * Width);
            Assert.Equal(0, report.Layers.Single(l => l.Layer == "q").Bytes);
            Assert.True(report.Layers.Single(l => l.Layer == "mlp").Bytes >= Width * Width);
            if (deploy == DeployTarget.Speed)
                Assert.Equal(0, report.Deploy!.WeightDequantizeLeft);
            // What the verification measured is the stored model's: small at 8 bits.
            Assert.InRange(report.Distortion.Measured, 0, 0.01);
        }
    }
}
