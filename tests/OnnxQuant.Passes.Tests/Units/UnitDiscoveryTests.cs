using OnnxQuant.Frontend;
using OnnxQuant.Passes.Units;
using OnnxQuant.Runtime;
using Attribute = OnnxQuant.Frontend.Attribute;

namespace OnnxQuant.Passes.Tests.Units;

/// <summary>
/// The axis mapping of discovered layers: which weight axis holds the output channels, which the input channels, and
/// for every weight element which output channel it produces and which activation channel it multiplies. Each
/// mapping is checked against a hand computation and against ONNX Runtime: with a one-hot weight (element i = 1) and
/// an input whose channel c holds the constant c + 1, the only non-zero output channel is element i's output channel
/// and its value is (input channel of i) + 1.
/// </summary>
public class UnitDiscoveryTests
{
    /// <summary>A one-layer model; the weight is a constant, or a graph input "w" for the one-hot runs.</summary>
    private static Model OneLayer(string op, long[] input, long[] weight, bool weightAsInput, params Attribute[] attributes)
    {
        var net = new Net(opset: 17, seed: 2);
        var x = net.Input("x", input);
        var w = weightAsInput ? net.Input("w", weight) : net.Random("w", weight);
        var y = net.Op(op, [x, w], attributes);
        y.Producer!.Name = "layer";
        y.Name = "y";
        net.Output(y);
        return net.Model;
    }

    private static QuantLayer Discover(string op, long[] input, long[] weight, params Attribute[] attributes) =>
        UnitDiscovery.Discover(OneLayer(op, input, weight, false, attributes), ["y"], new UnitOptions()).Layers.Single();

    /// <summary>Runs the one-hot probe for every weight element and checks both maps of <paramref name="layer"/>.</summary>
    private static void AssertMapsMatchRuntime(QuantLayer layer, string op, long[] input, long[] outputShape, int channelAxisOfOutput,
        params Attribute[] attributes)
    {
        var model = OneLayer(op, input, layer.WeightShape, true, attributes);
        using var session = InferenceSession.Create(ModelIO.ToBytes(model), SessionOptions.Calibration);
        var inputChannelAxis = op == "Conv" ? 1 : input.Length - 1;
        var transA = op == "Gemm" && attributes.Any(a => a.Name == "transA" && a.AsInt() != 0);
        if (transA)
            inputChannelAxis = 0;
        var x = new float[input.Aggregate(1L, (a, b) => a * b)];
        var xStride = input.Skip(inputChannelAxis + 1).Aggregate(1L, (a, b) => a * b);
        for (var i = 0; i < x.Length; i++)
            x[i] = i / xStride % input[inputChannelAxis] + 1;
        var inputs = layer.InputChannelOfElements();
        var outputs = layer.OutputChannelOfElements();
        var yStride = outputShape.Skip(channelAxisOfOutput + 1).Aggregate(1L, (a, b) => a * b);
        var n = (int)layer.Size;
        for (var i = 0; i < n; i++)
        {
            var w = new float[n];
            w[i] = 1f;
            var y = session.Run([new NamedTensor("x", TensorData.FromFloats(x, input)), new NamedTensor("w", TensorData.FromFloats(w, layer.WeightShape))])[0].Data.ToFloats();
            var channels = Enumerable.Range(0, y.Length).Where(k => y[k] != 0).Select(k => (int)(k / yStride % outputShape[channelAxisOfOutput])).Distinct().ToList();
            Assert.True(channels.Count == 1 && channels[0] == outputs[i], $"element {i}: ORT output channels {string.Join(",", channels)}, map {outputs[i]}");
            var value = y.First(v => v != 0);
            Assert.True(value == inputs[i] + 1, $"element {i}: ORT reads input channel {value - 1}, map {inputs[i]}");
        }
    }

    [Theory]
    [InlineData(1, 0, 1)]
    [InlineData(0, 1, 0)]
    public void GemmTransBSelectsTheChannelAxes(int transB, int channelAxis, int inputChannelAxis)
    {
        long[] weight = transB == 1 ? [8, 16] : [16, 8]; // 16 inputs, 8 outputs either way
        var attribute = Attribute.FromInt("transB", transB);
        var layer = Discover("Gemm", [3, 16], weight, attribute);
        Assert.Equal(channelAxis, layer.ChannelAxis);
        Assert.Equal(inputChannelAxis, layer.InputChannelAxis);
        Assert.Equal(8, layer.Channels);
        Assert.Equal(1, layer.ActivationChannelAxis);
        // Hand: element i of [8,16] is (out i / 16, in i % 16); of [16,8] it is (in i / 8, out i % 8).
        var expectedIn = Enumerable.Range(0, 128).Select(i => transB == 1 ? i % 16 : i / 8);
        var expectedOut = Enumerable.Range(0, 128).Select(i => transB == 1 ? i / 16 : i % 8);
        Assert.Equal(expectedIn, layer.InputChannelOfElements());
        Assert.Equal(expectedOut, layer.OutputChannelOfElements());
        AssertMapsMatchRuntime(layer, "Gemm", [3, 16], [3, 8], 1, attribute);
    }

    [Fact]
    public void GemmTransAReadsChannelsFromTheFirstActivationAxis()
    {
        var transA = Attribute.FromInt("transA", 1);
        var layer = Discover("Gemm", [16, 3], [16, 8], transA);
        Assert.Equal(0, layer.ActivationChannelAxis);
        Assert.Equal(1, layer.ChannelAxis);
        AssertMapsMatchRuntime(layer, "Gemm", [16, 3], [3, 8], 1, transA);
    }

    [Fact]
    public void ALayerWhoseWeightIsAlreadyDequantizedIsSkippedWithItsReason()
    {
        // One layer quantized by another tool (INT8 weight through DequantizeLinear), one float.
        var net = new Net(opset: 17, seed: 3);
        var x = net.Input("x", 2, 16);
        var q = net.Graph.AddInitializer("w1_q", Tensor.FromRaw("w1_q", DataType.Int8, [16, 8], Enumerable.Range(0, 128).Select(i => (byte)(i % 7)).ToArray()));
        var w1 = net.Op("DequantizeLinear", [q, net.Init("w1_scale", [], [0.02f])]);
        var h = net.Op("MatMul", [x, w1]);
        h.Producer!.Name = "quantized";
        var y = net.Op("MatMul", [h, net.Random("w2", [8, 8])]);
        y.Producer!.Name = "float";
        y.Name = "y";
        net.Output(y);
        var found = UnitDiscovery.Discover(net.Model, ["y"], new UnitOptions());
        Assert.Equal(["float"], found.Layers.Select(l => l.Name));
        var skipped = Assert.Single(found.Skipped);
        Assert.Equal("quantized", skipped.Name);
        Assert.StartsWith("already quantized", skipped.Reason, StringComparison.Ordinal);
    }

    [Fact]
    public void MatMulWeightHasOutputChannelsOnItsLastAxis()
    {
        var layer = Discover("MatMul", [2, 3, 16], [16, 8]);
        Assert.Equal("MatMul", layer.OpType);
        Assert.Equal(1, layer.ChannelAxis);
        Assert.Equal(0, layer.InputChannelAxis);
        Assert.Equal(-1, layer.ActivationChannelAxis);
        Assert.Equal(8, layer.Channels);
        Assert.Equal(Enumerable.Range(0, 128).Select(i => i / 8), layer.InputChannelOfElements());
        Assert.Equal(Enumerable.Range(0, 128).Select(i => i % 8), layer.OutputChannelOfElements());
        AssertMapsMatchRuntime(layer, "MatMul", [2, 3, 16], [2, 3, 8], 2);
    }

    [Theory]
    [InlineData(4, 8, 1)] // plain: every output channel reads all 4 input channels
    [InlineData(4, 8, 2)] // grouped: outputs 0-3 read inputs 0-1, outputs 4-7 read inputs 2-3
    [InlineData(8, 8, 8)] // depthwise: output c reads input c
    [InlineData(4, 8, 4)] // depthwise with multiplier 2: output c reads input c / 2
    public void ConvGroupsMapEveryElementToItsActivationChannel(int inChannels, int outChannels, int group)
    {
        var perGroupIn = inChannels / group;
        long[] input = [1, inChannels, 5, 5];
        long[] weight = [outChannels, perGroupIn, 3, 3];
        var attribute = Attribute.FromInt("group", group);
        var layer = Discover("Conv", input, weight, attribute);
        Assert.Equal(0, layer.ChannelAxis);
        Assert.Equal(1, layer.InputChannelAxis);
        Assert.Equal(1, layer.ActivationChannelAxis);
        Assert.Equal(group, layer.Groups);
        // Hand: element i = ((o * perGroupIn + j) * 3 + kh) * 3 + kw reads input channel (o / (out / group)) * perGroupIn + j.
        var n = outChannels * perGroupIn * 9;
        var expectedOut = Enumerable.Range(0, n).Select(i => i / (perGroupIn * 9)).ToArray();
        var expectedIn = Enumerable.Range(0, n).Select(i => expectedOut[i] / (outChannels / group) * perGroupIn + i / 9 % perGroupIn).ToArray();
        Assert.Equal(expectedOut, layer.OutputChannelOfElements());
        Assert.Equal(expectedIn, layer.InputChannelOfElements());
        AssertMapsMatchRuntime(layer, "Conv", input, [1, outChannels, 3, 3], 1, attribute);
    }

    /// <summary>Conv with 20 output channels, a transposed Gemm with 16 and a MatMul with 8.</summary>
    private static Model ThreeLayers()
    {
        var net = new Net(opset: 17, seed: 4);
        var x = net.BatchInput("x", 3, 6, 6);
        var c = net.Op("Conv", [x, net.Random("conv.w", [20, 3, 3, 3])]);
        c.Producer!.Name = "conv";
        var pooled = net.Op("Flatten", [net.Op("GlobalAveragePool", [net.Op("Relu", [c])])]);
        var g = net.Op("Gemm", [pooled, net.Random("gemm.w", [16, 20])], Attribute.FromInt("transB", 1));
        g.Producer!.Name = "gemm";
        var y = net.Op("MatMul", [net.Op("Relu", [g]), net.Random("matmul.w", [16, 8])]);
        y.Producer!.Name = "matmul";
        y.Name = "y";
        net.Output(y);
        return net.Model;
    }

    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    [InlineData(8)]
    [InlineData(16)]
    [InlineData(64)]
    public void ChannelGroupsCoverEveryChannelExactlyOnce(int groupSize)
    {
        var model = ThreeLayers();
        var result = UnitDiscovery.Discover(model, ["y"], new UnitOptions { Granularity = Granularity.Group, GroupSize = groupSize });
        Assert.Equal(["conv", "gemm", "matmul"], result.Layers.Select(l => l.Name));
        Assert.Equal([20, 16, 8], result.Layers.Select(l => l.Channels));
        foreach (var layer in result.Layers)
        {
            var units = result.Units.Where(u => u.Layer == layer).OrderBy(u => u.ChannelStart).ToList();
            Assert.Equal((layer.Channels + groupSize - 1) / groupSize, units.Count);
            var covered = new int[layer.Channels];
            foreach (var unit in units)
            {
                Assert.InRange(unit.ChannelCount, 1, groupSize);
                for (var ch = unit.ChannelStart; ch < unit.ChannelStart + unit.ChannelCount; ch++)
                    covered[ch]++;
                Assert.Equal(layer.Size / layer.Channels * unit.ChannelCount, unit.Size);
                Assert.Equal(units.Count == 1 ? layer.Name : $"{layer.Name}[{unit.ChannelStart}:{unit.ChannelStart + unit.ChannelCount}]", unit.Name);
            }
            Assert.All(covered, count => Assert.Equal(1, count));
            Assert.Equal(layer.Size, units.Sum(u => u.Size));
            // Only the last group may be short.
            Assert.All(units.SkipLast(1), u => Assert.Equal(Math.Min(groupSize, layer.Channels), u.ChannelCount));
            // Every weight element falls in exactly one unit through the output-channel map.
            var channelOf = layer.OutputChannelOfElements();
            Assert.All(channelOf, ch => Assert.Single(units, u => ch >= u.ChannelStart && ch < u.ChannelStart + u.ChannelCount));
            Assert.Equal(units.Count == 1, units[0].IsWholeLayer);
        }
    }
}
