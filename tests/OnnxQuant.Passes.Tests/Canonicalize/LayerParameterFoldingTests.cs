using OnnxQuant.Frontend;
using OnnxQuant.Passes.Canonicalize;
using OnnxQuant.Passes.Compile;
using OnnxQuant.Passes.Pipeline;
using OnnxQuant.Passes.Quantization;
using OnnxQuant.Runtime;
using Attribute = OnnxQuant.Frontend.Attribute;

namespace OnnxQuant.Passes.Tests.Canonicalize;

/// <summary>
/// Layer parameters an export computes in the graph (no constant folding: a frozen batch normalization's scale, a
/// weight-normalized convolution's weight) become constants, and a per-channel scale and shift after a layer (a frozen
/// batch normalization) become part of the layer, with the same outputs.
/// </summary>
public sealed class LayerParameterFoldingTests : IDisposable
{
    private readonly string _root = Path.Combine(Path.GetTempPath(), $"onnxquant-paramfold-{Guid.NewGuid():N}");

    public void Dispose()
    {
        if (Directory.Exists(_root))
            Directory.Delete(_root, true);
    }

    private static readonly long[] Shape = [2, 3, 16, 16];
    private static readonly float[] Data = Net.RandomData(2 * 3 * 16 * 16, 8);

    /// <summary>Conv(bias-free) -> x * scale + shift, the scale computed as w * (var + eps)^-0.5 and the shift as
    /// b - mean * scale in the graph (a frozen batch normalization exported without constant folding) -> Relu ->
    /// a weight-normalized Conv (weight g * v / ||v|| per output channel, computed in the graph).</summary>
    private static Net FrozenNormAndWeightNorm()
    {
        var net = new Net(seed: 12);
        var x = net.BatchInput("images", 3, 16, 16);
        var c1 = net.Op("Conv", [x, net.Random("c1.weight", [8, 3, 3, 3], 0.4f)], Attribute.FromInts("pads", [1, 1, 1, 1]));
        c1.Producer!.Name = "c1";
        var gamma = net.Random("bn.weight", [8], 0.5f, 1f);
        var variance = net.Random("bn.running_var", [8], 0.4f, 1f);
        var mean = net.Random("bn.running_mean", [8], 0.2f);
        var beta = net.Random("bn.bias", [8], 0.2f);
        var scale = net.Op("Mul", [gamma, net.Op("Pow", [net.Op("Add", [variance, net.Init("eps", [], [1e-5f])]), net.Init("half", [], [-0.5f])])]);
        var shift = net.Op("Sub", [beta, net.Op("Mul", [mean, scale])]);
        var shape = net.Ints("channel_shape", 1, -1, 1, 1);
        var normed = net.Op("Add", [net.Op("Mul", [c1, net.Op("Reshape", [scale, shape])]), net.Op("Reshape", [shift, shape])]);
        var v = net.Random("c2.weight_v", [6, 8, 3, 3], 0.3f);
        var g = net.Random("c2.weight_g", [6, 1, 1, 1], 0.3f, 1f);
        var norm = net.Op("ReduceL2", [v], Attribute.FromInts("axes", [1, 2, 3]), Attribute.FromInt("keepdims", 1));
        var w = net.Op("Mul", [g, net.Op("Div", [v, norm])]);
        var c2 = net.Op("Conv", [net.Op("Relu", [normed]), w, net.Random("c2.bias", [6], 0.1f)], Attribute.FromInts("pads", [1, 1, 1, 1]));
        c2.Producer!.Name = "c2";
        c2.Name = "out";
        net.Output(c2);
        return net;
    }

    private static float[] Run(Model model)
    {
        using var session = InferenceSession.Create(ModelIO.ToBytes(model), SessionOptions.Calibration);
        return session.Run([new NamedTensor("images", TensorData.FromFloats(Data, Shape))])[0].Data.ToFloats();
    }

    [Fact]
    public void ParametersComputedFromConstantsBecomeConstantsAndTheScaleAndShiftJoinTheConvolution()
    {
        var net = FrozenNormAndWeightNorm();
        var before = Run(net.Model);
        new PassManager(Canonicalization.Passes()).Run(net.Model);
        // Two convolutions and the Relu between them: nothing else is left.
        Assert.Equal(["Conv", "Relu", "Conv"], net.Graph.Nodes.Select(n => n.OpType));
        Assert.All(net.Graph.Nodes.Where(n => n.OpType == "Conv"), c =>
        {
            Assert.True(c.Inputs[1]!.IsInitializer);
            Assert.True(c.Inputs[2]!.IsInitializer);
        });
        // Float rounding of the folded products: relative to the output's largest magnitude.
        Net.AssertClose(before, Run(net.Model), 2e-6f);
    }

    [Fact]
    public void ConstantsThatAreNotLayerParametersStayInTheGraph()
    {
        var net = new Net(seed: 3);
        var x = net.Input("x", 2, 8);
        // A constant computed from constants and added to the input (not after a layer), and a random generator.
        var offset = net.Op("Mul", [net.Random("a", [8]), net.Random("b", [8])]);
        var noise = net.Op("RandomNormal", [], Attribute.FromInts("shape", [2, 8]), Attribute.FromFloat("scale", 0f));
        net.Output(net.Op("Add", [net.Op("Add", [x, offset]), noise]));
        Assert.False(new ConstantExpressionPass().Run(net.Model).Modified);
    }

    [Theory]
    [InlineData("Mul", new long[] { 1, 8, 1, 1 }, false)]
    [InlineData("Div", new long[] { 8, 1, 1 }, false)]
    [InlineData("Add", new long[] { 1, 8, 1, 1 }, true)]
    [InlineData("Sub", new long[] { 1 }, false)]
    [InlineData("Mul", new long[] { }, true)]
    public void APerChannelScaleOrShiftAfterAConvolutionJoinsIt(string op, long[] constantShape, bool constantFirst)
    {
        var net = new Net(seed: 4);
        var x = net.BatchInput("images", 3, 16, 16);
        var y = net.Op("Conv", [x, net.Random("w", [8, 3, 3, 3], 0.4f), net.Random("b", [8], 0.1f)]);
        var constant = net.Random("k", constantShape, 0.5f, 1f);
        var z = net.Op(op, constantFirst ? [constant, y] : [y, constant]);
        z.Name = "z";
        net.Output(z);
        var before = Run(net.Model);
        Assert.Equal(1, new FoldOutputAffinePass().Run(net.Model).Rewrites);
        Assert.Equal(["Conv"], net.Graph.Nodes.Select(n => n.OpType));
        Assert.Equal("z", net.Graph.Outputs[0].Name);
        Net.AssertClose(before, Run(net.Model), 1e-6f);
    }

    [Fact]
    public void AScaleAndShiftAfterAGemmAndADeconvolutionJoinThem()
    {
        var net = new Net(seed: 5);
        var x = net.BatchInput("images", 3, 16, 16);
        var up = net.Op("ConvTranspose", [x, net.Random("up.w", [3, 4, 2, 2], 0.4f)], Attribute.FromInts("strides", [2, 2]));
        var scaled = net.Op("Mul", [up, net.Random("up.k", [1, 4, 1, 1], 0.5f, 1f)]);
        var pooled = net.Op("Flatten", [net.Op("GlobalAveragePool", [scaled])]);
        var gemm = net.Op("Gemm", [pooled, net.Random("fc.w", [5, 4], 0.4f), net.Random("fc.b", [5], 0.1f)],
            Attribute.FromInt("transB", 1), Attribute.FromFloat("alpha", 0.5f), Attribute.FromFloat("beta", 2f));
        var y = net.Op("Sub", [net.Op("Div", [gemm, net.Random("fc.k", [5], 0.5f, 1.5f)]), net.Random("fc.d", [1, 5], 0.3f)]);
        y.Name = "y";
        net.Output(y);
        var before = Run(net.Model);
        Assert.Equal(3, new FoldOutputAffinePass().Run(net.Model).Rewrites);
        Assert.Equal(["ConvTranspose", "GlobalAveragePool", "Flatten", "Gemm"], net.Graph.Nodes.Select(n => n.OpType));
        Net.AssertClose(before, Run(net.Model), 1e-6f);
    }

    [Fact]
    public void ABatchNormalizationAfterADeconvolutionOrAGemmJoinsIt()
    {
        // A decoder's upsampling (ConvTranspose -> BatchNormalization -> Relu) and BatchNorm1d after a Linear.
        var net = new Net(seed: 9);
        var x = net.BatchInput("images", 3, 16, 16);
        Value Norm(Value input, int channels, string name) => net.Op("BatchNormalization", [input,
            net.Random(name + ".weight", [channels], 0.5f, 1f), net.Random(name + ".bias", [channels], 0.2f),
            net.Random(name + ".running_mean", [channels], 0.2f), net.Random(name + ".running_var", [channels], 0.4f, 1f)],
            Attribute.FromFloat("epsilon", 1e-3f));
        var up = net.Op("ConvTranspose", [x, net.Random("up.w", [3, 4, 2, 2], 0.4f)], Attribute.FromInts("strides", [2, 2]));
        var pooled = net.Op("Flatten", [net.Op("GlobalAveragePool", [net.Op("Relu", [Norm(up, 4, "up.bn")])])]);
        var fc = net.Op("Gemm", [pooled, net.Random("fc.w", [6, 4], 0.4f), net.Random("fc.b", [6], 0.1f)], Attribute.FromInt("transB", 1));
        var y = Norm(fc, 6, "fc.bn");
        y.Name = "y";
        net.Output(y);
        var before = Run(net.Model);
        Assert.Equal(2, new FoldOutputAffinePass().Run(net.Model).Rewrites);
        Assert.Equal(0, net.Count("BatchNormalization"));
        Assert.Equal("y", net.Graph.Outputs[0].Name);
        Net.AssertClose(before, Run(net.Model), 1e-6f);
    }

    [Theory]
    [InlineData(true, "Mul", new long[] { })]  // q_proj(x) * scaling
    [InlineData(true, "Mul", new long[] { 6 })] // a layer scale after a Linear
    [InlineData(false, "Div", new long[] { 1 })]
    public void AScaleAfterAMatMulJoinsItsWeightAndBias(bool withBias, string op, long[] constantShape)
    {
        var net = new Net(seed: 10);
        var x = net.Input("x", 2, 4, 12);
        var product = net.Op("MatMul", [x, net.Random("w", [12, 6], 0.4f)]);
        var linear = withBias ? net.Op("Add", [product, net.Random("b", [6], 0.2f)]) : product;
        var y = net.Op(op, [linear, net.Random("k", constantShape, 0.5f, 1f)]);
        y.Name = "y";
        net.Output(y);
        var data = Net.RandomData(96, 11);
        float[] Output()
        {
            using var session = InferenceSession.Create(ModelIO.ToBytes(net.Model), SessionOptions.Calibration);
            return session.Run([new NamedTensor("x", TensorData.FromFloats(data, [2, 4, 12]))])[0].Data.ToFloats();
        }
        var before = Output();
        Assert.Equal(1, new FoldOutputAffinePass().Run(net.Model).Rewrites);
        Assert.Equal(withBias ? ["MatMul", "Add"] : ["MatMul"], net.Graph.Nodes.Select(n => n.OpType));
        Assert.Equal("y", net.Graph.Outputs[0].Name);
        Net.AssertClose(before, Output(), 1e-6f);
    }

    [Theory]
    [InlineData(new long[] { 8 })]            // broadcasts over the width, not the channels
    [InlineData(new long[] { 1, 8, 14, 14 })] // differs between positions
    [InlineData(new long[] { 1, 1, 8, 1, 1 })] // would give the output another axis
    public void AConstantThatIsNotPerChannelStaysOutside(long[] constantShape)
    {
        var net = new Net(seed: 6);
        var x = net.BatchInput("images", 3, 16, 16);
        var y = net.Op("Conv", [x, net.Random("w", [8, 3, 3, 3], 0.4f)]);
        net.Output(net.Op("Mul", [y, net.Random("k", constantShape, 0.5f, 1f)]));
        Assert.False(new FoldOutputAffinePass().Run(net.Model).Modified);
    }

    [Fact]
    public void AShiftSubtractedFromOrReadBesideTheLayerStaysOutside()
    {
        var net = new Net(seed: 7);
        var x = net.BatchInput("images", 3, 16, 16);
        var y = net.Op("Conv", [x, net.Random("w", [8, 3, 3, 3], 0.4f)]);
        net.Output(net.Op("Sub", [net.Random("d", [1, 8, 1, 1], 0.2f), y]));
        var z = net.Op("Conv", [x, net.Random("w2", [8, 3, 3, 3], 0.4f)]);
        net.Output(net.Op("Mul", [z, net.Random("k", [1, 8, 1, 1], 0.5f, 1f)]));
        net.Output(z);
        Assert.False(new FoldOutputAffinePass().Run(net.Model).Modified);
    }

    [Fact]
    public void AnExportWithoutConstantFoldingCompilesLikeOneWithIt()
    {
        // The same network with its parameters computed in the graph and folded by hand: the same units, every
        // convolution compensated, and the same bytes written.
        var computed = FrozenNormAndWeightNorm().Model;
        var folded = FrozenNormAndWeightNorm().Model;
        new PassManager(Canonicalization.Passes()).Run(folded);
        var options = new CompileOptions { Allocation = new() { TargetBits = [8, 4] }, Rewrite = new() { Compensation = Compensation.All } };
        var a = TestModels.CompileImages(computed, _root, "computed", options);
        var b = TestModels.CompileImages(folded, _root, "folded", options);
        // The report says what canonicalization changed: the computed parameters, the folded scale and shift, and
        // the normalization folded into the second convolution.
        var note = Assert.Single(a.Targets[0].Report.Notes, n => n.StartsWith("canonicalization rewrote", StringComparison.Ordinal));
        foreach (var pass in new[] { "fold-constant-expressions", "fold-output-affine" })
            Assert.Contains(pass, note, StringComparison.Ordinal);
        for (var t = 0; t < a.Targets.Count; t++)
        {
            Assert.Equal(["c1", "c2"], a.Targets[t].Report.Units.Select(u => u.Layer).Order().ToArray());
            Assert.Equal(["c1", "c2"], a.Targets[t].Report.Compensated.Where(c => c.Gptq).Select(c => c.Layer).Order().ToArray());
            Assert.Equal(a.Targets[t].Report.Distortion.Measured, b.Targets[t].Report.Distortion.Measured);
        }
    }
}
