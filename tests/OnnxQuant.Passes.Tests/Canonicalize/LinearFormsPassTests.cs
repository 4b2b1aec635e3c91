using OnnxQuant.Frontend;
using OnnxQuant.Passes.Canonicalize;
using OnnxQuant.Passes.Compile;
using OnnxQuant.Passes.Quantization;
using OnnxQuant.Passes.Rewrite;
using OnnxQuant.Runtime;
using Attribute = OnnxQuant.Frontend.Attribute;

namespace OnnxQuant.Passes.Tests.Canonicalize;

/// <summary>
/// Linear layers written as a MatMul with a [1, K, N] weight or as an Einsum with a constant weight become MatMuls with
/// a 2-D weight, computing the same values in the same shapes, so that they are quantized like any linear layer.
/// </summary>
public sealed class LinearFormsPassTests : IDisposable
{
    private readonly string _root = Path.Combine(Path.GetTempPath(), $"onnxquant-linearforms-{Guid.NewGuid():N}");

    public void Dispose()
    {
        if (Directory.Exists(_root))
            Directory.Delete(_root, true);
    }

    /// <summary>Runs the model without optimizations; every output with its shape.</summary>
    private static (long[] Shape, float[] Data)[] Run(Model model, string input, long[] shape, float[] data)
    {
        using var session = InferenceSession.Create(ModelIO.ToBytes(model), SessionOptions.Calibration);
        return session.Run([new NamedTensor(input, TensorData.FromFloats(data, shape))])
            .Select(o => (o.Data.Shape, o.Data.ToFloats())).ToArray();
    }

    private static void AssertSame((long[] Shape, float[] Data)[] before, (long[] Shape, float[] Data)[] after, float tolerance)
    {
        Assert.Equal(before.Length, after.Length);
        for (var i = 0; i < before.Length; i++)
        {
            Assert.Equal(before[i].Shape, after[i].Shape);
            Net.AssertClose(before[i].Data, after[i].Data, tolerance);
        }
    }

    private static Value Weight(Node matmul) => matmul.Inputs[1]!;

    [Fact]
    public void AWeightWithLeadingOnesReadByATokenTensorBecomesTwoDimensional()
    {
        var net = new Net();
        var x = net.Input("x", 2, 12);
        // [2, 12] -> [1, 2, 12] (rank known from the Reshape's constant shape), then [1, 1, 12, 5] weight.
        var tokens = net.Op("Reshape", [x, net.Ints("s", 1, 2, 12)]);
        var y = net.Op("MatMul", [tokens, net.Random("w", [1, 1, 12, 5])]);
        net.Output(y);
        var data = Net.RandomData(24, 3);
        var before = Run(net.Model, "x", [2, 12], data);
        Assert.Equal([1L, 1, 2, 5], before[0].Shape);

        Assert.Equal(1, new LinearFormsPass().Run(net.Model).Rewrites);
        var matmul = net.Graph.Nodes.Single(n => n.OpType == "MatMul");
        Assert.Equal([12L, 5L], Weight(matmul).Initializer!.Dims);
        // The activation has 3 axes, the weight 4: the output keeps its leading 1 through an Add of a zero.
        Assert.Equal(1, net.Count("Add"));
        AssertSame(before, Run(net.Model, "x", [2, 12], data), 0f);
    }

    [Fact]
    public void ARankTheGraphStatesNeedsNothingMore()
    {
        var net = new Net();
        var x = net.Input("x", 1, 4, 12);
        var y = net.Op("Add", [net.Op("MatMul", [net.Op("Relu", [x]), net.Random("w", [1, 12, 5])]), net.Random("b", [5])]);
        net.Output(y);
        var data = Net.RandomData(48, 4);
        var before = Run(net.Model, "x", [1, 4, 12], data);

        new LinearFormsPass().Run(net.Model);
        Assert.Equal(["Relu", "MatMul", "Add"], net.Graph.Nodes.Select(n => n.OpType));
        Assert.Equal([12L, 5L], Weight(net.Graph.Nodes[1]).Initializer!.Dims);
        Assert.Equal([5L], net.Graph.Nodes[2].Inputs[1]!.Initializer!.Dims);
        AssertSame(before, Run(net.Model, "x", [1, 4, 12], data), 0f);
    }

    [Fact]
    public void ALowerRankActivationKeepsItsOutputRankThroughTheBias()
    {
        var net = new Net();
        var x = net.Input("x", 4, 12);
        var y = net.Op("Add", [net.Op("MatMul", [x, net.Random("w", [1, 12, 5])]), net.Random("b", [5])]);
        net.Output(y);
        var data = Net.RandomData(48, 5);
        var before = Run(net.Model, "x", [4, 12], data);
        Assert.Equal([1L, 4, 5], before[0].Shape);

        new LinearFormsPass().Run(net.Model);
        Assert.Equal(["MatMul", "Add"], net.Graph.Nodes.Select(n => n.OpType));
        Assert.Equal([1L, 1, 5], net.Graph.Nodes[1].Inputs[1]!.Initializer!.Dims);
        AssertSame(before, Run(net.Model, "x", [4, 12], data), 0f);
    }

    [Fact]
    public void AnActivationOfUnknownRankWritingAGraphOutputKeepsTheOutputsName()
    {
        var net = new Net();
        var x = net.Input("x", 3, 12);
        // Sin tells nothing about its output's rank to the pass.
        var y = net.Op("MatMul", [net.Op("Sin", [x]), net.Random("w", [1, 12, 5])]);
        y.Name = "logits";
        net.Output(y);
        var data = Net.RandomData(36, 6);
        var before = Run(net.Model, "x", [3, 12], data);

        new LinearFormsPass().Run(net.Model);
        Assert.Equal("logits", net.Graph.Outputs[0].Name);
        Assert.Equal(["Sin", "MatMul", "Add"], net.Graph.Nodes.Select(n => n.OpType));
        AssertSame(before, Run(net.Model, "x", [3, 12], data), 0f);
    }

    [Fact]
    public void ABatchOfWeightsIsNotALinearLayer()
    {
        var net = new Net();
        var x = net.Input("x", 2, 4, 12);
        net.Output(net.Op("MatMul", [x, net.Random("w", [2, 12, 5])]));
        Assert.False(new LinearFormsPass().Run(net.Model).Modified);
    }

    [Theory]
    [InlineData("bnd,de->bne", false, false)]
    [InlineData("bnd,ed->bne", true, false)]
    [InlineData("de, bnd -> bne", false, true)]
    [InlineData("...d,ed->...e", true, false)]
    public void AnEinsumWithAConstantWeightIsAMatMul(string equation, bool transposed, bool weightFirst)
    {
        var net = new Net();
        var x = net.Input("x", 2, 4, 12);
        var w = net.Random("w", transposed ? [5, 12] : [12, 5]);
        var y = net.Op("Einsum", weightFirst ? [w, x] : [x, w], Attribute.FromString("equation", equation));
        y.Name = "y";
        net.Output(y);
        var data = Net.RandomData(96, 7);
        var before = Run(net.Model, "x", [2, 4, 12], data);

        Assert.Equal(1, new LinearFormsPass().Run(net.Model).Rewrites);
        var matmul = Assert.Single(net.Graph.Nodes);
        Assert.Equal("MatMul", matmul.OpType);
        Assert.Same(x, matmul.Inputs[0]);
        Assert.Equal([12L, 5L], Weight(matmul).Initializer!.Dims);
        Assert.Equal("y", net.Graph.Outputs[0].Name);
        AssertSame(before, Run(net.Model, "x", [2, 4, 12], data), 1e-5f);
    }

    [Theory]
    [InlineData("btc,chd->bthd", new long[] { 2, 4, 12 }, new long[] { 12, 3, 5 }, new long[] { 12, 15 })] // per-head query projection
    [InlineData("btc,hdc->bthd", new long[] { 2, 4, 12 }, new long[] { 3, 5, 12 }, new long[] { 12, 15 })] // its weight stored heads first
    [InlineData("bthd,hde->bte", new long[] { 2, 4, 3, 5 }, new long[] { 3, 5, 7 }, new long[] { 15, 7 })] // output projection over heads
    public void AnEinsumOverSeveralWeightAxesIsAMatMulBetweenReshapes(string equation, long[] xShape, long[] wShape, long[] matrix)
    {
        var net = new Net();
        var x = net.Input("x", xShape);
        var y = net.Op("Einsum", [x, net.Random("w", wShape)], Attribute.FromString("equation", equation));
        y.Name = "y";
        net.Output(y);
        var data = Net.RandomData((int)xShape.Aggregate(1L, (a, b) => a * b), 9);
        var before = Run(net.Model, "x", xShape, data);

        Assert.Equal(1, new LinearFormsPass().Run(net.Model).Rewrites);
        var matmul = net.Graph.Nodes.Single(n => n.OpType == "MatMul");
        Assert.Equal(matrix, Weight(matmul).Initializer!.Dims);
        Assert.Equal(0, net.Count("Einsum"));
        Assert.Equal("y", net.Graph.Outputs[0].Name);
        AssertSame(before, Run(net.Model, "x", xShape, data), 1e-5f);
    }

    [Theory]
    [InlineData("bdn,de->bne")]   // contracts an inner axis
    [InlineData("bnd,de->ben")]   // reorders the kept axes
    [InlineData("bnd,de->bn")]    // sums the weight's other axis away
    [InlineData("bnd,nd->bn")]    // a product per position, not a linear layer over channels
    public void AnEinsumThatIsNotALinearLayerIsLeftAlone(string equation)
    {
        var net = new Net();
        var x = net.Input("x", 2, 12, 12);
        net.Output(net.Op("Einsum", [x, net.Random("w", [12, 12])], Attribute.FromString("equation", equation)));
        Assert.False(new LinearFormsPass().Run(net.Model).Modified);
    }

    [Fact]
    public void AnEinsumWithAWeightPerHeadIsLeftAlone()
    {
        // h indexes both the activation and the weight: one weight per head, a batch of linear layers.
        var net = new Net();
        var x = net.Input("x", 2, 3, 4, 12);
        net.Output(net.Op("Einsum", [x, net.Random("w", [3, 12, 5])], Attribute.FromString("equation", "bhtc,hcd->bhtd")));
        Assert.False(new LinearFormsPass().Run(net.Model).Modified);
    }

    /// <summary>images [N,3,16,16] -> tokens [N,48,16] -> a [1,16,24] MatMul weight with its bias -> ReLU -> an Einsum
    /// per head with a [24,2,6] weight -> [N,48,12] -> ReLU -> an Einsum linear with a [10,12] weight.</summary>
    private static Model TokenNet()
    {
        var net = new Net(seed: 5);
        var x = net.BatchInput("images", 3, 16, 16);
        var tokens = net.Op("Reshape", [x, net.Ints("tokens.shape", 0, 48, 16)]);
        var h = net.Op("Add", [net.Op("MatMul", [tokens, net.Random("fc1.weight", [1, 16, 24], 0.3f)]), net.Random("fc1.bias", [24], 0.1f)]);
        h.Producer!.Inputs[0]!.Producer!.Name = "fc1";
        var heads = net.Op("Einsum", [net.Op("Relu", [h]), net.Random("heads.weight", [24, 2, 6], 0.3f)], Attribute.FromString("equation", "bnc,chd->bnhd"));
        heads.Producer!.Name = "heads";
        var merged = net.Op("Reshape", [heads, net.Ints("merged.shape", 0, 0, 12)]);
        var y = net.Op("Einsum", [net.Op("Relu", [merged]), net.Random("fc2.weight", [10, 12], 0.3f)], Attribute.FromString("equation", "bnc,kc->bnk"));
        y.Producer!.Name = "fc2";
        y.Name = "out";
        net.Output(y);
        return net.Model;
    }

    [Theory]
    [InlineData(DeployTarget.Size)]
    [InlineData(DeployTarget.Speed)]
    public void BothFormsAreQuantizedCompensatedAndRun(DeployTarget deploy)
    {
        var result = TestModels.CompileImages(TokenNet(), _root, $"tokens-{deploy}", new CompileOptions
        {
            Allocation = new() { TargetBits = [8, 4] }, Rewrite = new() { Compensation = Compensation.All, Deploy = deploy },
        });
        foreach (var target in result.Targets)
        {
            var report = target.Report;
            Assert.Equal(["fc1", "fc2", "heads"], report.Units.Select(u => u.Layer).Order().ToArray());
            Assert.Equal(["fc1", "fc2", "heads"], report.Compensated.Where(c => c.Gptq).Select(c => c.Layer).Order().ToArray());
            using var session = InferenceSession.Create(target.ModelPath);
            var outputs = session.Run([new NamedTensor("images", TensorData.FromFloats(TestModels.Images(2, 5), [2, 3, 16, 16]))]);
            Assert.Equal([2L, 48, 10], outputs[0].Data.Shape);
        }
        // Three linear layers at 8 bits with 8-bit activations: a small share of the output's variation.
        Assert.InRange(result.Targets[0].Report.Distortion.Measured, 1e-7, 1e-3);
    }
}
