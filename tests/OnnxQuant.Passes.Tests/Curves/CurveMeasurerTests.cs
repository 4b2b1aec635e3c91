using OnnxQuant.Frontend;
using OnnxQuant.Passes.Curves;
using OnnxQuant.Passes.Pipeline;
using OnnxQuant.Passes.Quantization;
using OnnxQuant.Passes.Rewrite;
using OnnxQuant.Passes.Units;
using OnnxQuant.Runtime;
using OnnxQuant.Solvers;
using Attribute = OnnxQuant.Frontend.Attribute;

namespace OnnxQuant.Passes.Tests.Curves;

/// <summary>
/// Exact error curves against an independent computation: the layer's weight fake-quantized here, substituted into
/// the full model, run in ONNX Runtime, and the relative squared error summed over the features in double.
/// </summary>
public class CurveMeasurerTests
{
    private const int Samples = 32;
    private const int RunBatch = 8;
    // The curve values keep 6 significant digits (at most 5e-6 relative); the rest is float noise.
    private const double RelativeTolerance = 1e-5;

    /// <summary>x[N,16] -> MatMul fc1 [16,32] -> Relu "hidden" -> MatMul fc2 [32,8] "y".</summary>
    private static Model Mlp()
    {
        var net = new Net(opset: 17, seed: 3);
        var x = net.BatchInput("x", 16);
        var h = net.Op("MatMul", [x, net.Random("w1", [16, 32], 0.5f)]);
        h.Producer!.Name = "fc1";
        var hidden = net.Op("Relu", [h]);
        hidden.Name = "hidden";
        var y = net.Op("MatMul", [hidden, net.Random("w2", [32, 8], 0.3f)]);
        y.Producer!.Name = "fc2";
        y.Name = "y";
        net.Output(y);
        return net.Model;
    }

    /// <summary>x[N,4,8,8] -> Conv conv1 [8,4,3,3] pad 1 + bias -> Relu -> Conv conv2 [6,8,3,3] stride 2 "y".</summary>
    private static Model ConvNet()
    {
        var net = new Net(opset: 17, seed: 5);
        var x = net.BatchInput("x", 4, 8, 8);
        var c1 = net.Op("Conv", [x, net.Random("w1", [8, 4, 3, 3], 0.4f), net.Random("b1", [8], 0.1f)], Attribute.FromInts("pads", [1, 1, 1, 1]));
        c1.Producer!.Name = "conv1";
        var r = net.Op("Relu", [c1]);
        var y = net.Op("Conv", [r, net.Random("w2", [6, 8, 3, 3], 0.2f)], Attribute.FromInts("strides", [2, 2]));
        y.Producer!.Name = "conv2";
        y.Name = "y";
        net.Output(y);
        return net.Model;
    }

    private static CurveSet Measure(Model model, IReadOnlyList<QuantUnit> units, string[] features, long[] sampleShape, float[] data) =>
        CurveMeasurer.Measure(model, units, features, TestCalibration.Single("x", data, sampleShape), Samples, null,
            new CurveOptions { Mode = CurveMode.Exact }, new RewriteOptions(), RunBatch, SessionOptions.Calibration, SilentProgress.Instance);

    /// <summary>
    /// The independent value of D_u(b): the unit's output channels of the weight replaced by their fake-quantized
    /// values (per output channel along <paramref name="channelAxis"/>), the full model run on all samples at once.
    /// </summary>
    private static double Independent(Model model, string weightName, int channelAxis, int bits, int channelStart, int channelCount,
        string[] features, long[] inputShape, float[] data)
    {
        var init = model.Graph.FindInitializer(weightName)!.Initializer!;
        var weight = init.ToFloatArray();
        var shape = init.GetDims();
        var fake = QuantMath.FakeQuantizeWeight(weight, new WeightLayout(shape, channelAxis), bits);
        var stride = shape.Skip(channelAxis + 1).Aggregate(1L, (a, b) => a * b);
        var replaced = (float[])weight.Clone();
        for (var i = 0; i < replaced.Length; i++)
        {
            var channel = i / stride % shape[channelAxis];
            if (channel >= channelStart && channel < channelStart + channelCount)
                replaced[i] = fake[i];
        }
        var reference = Net.Run(TestCalibration.WithWeightAndOutputs(model, null, null, features), ("x", inputShape, data));
        var perturbed = Net.Run(TestCalibration.WithWeightAndOutputs(model, weightName, replaced, features), ("x", inputShape, data));
        return TestCalibration.RelativeError(reference, perturbed);
    }

    private static void AssertMatches(double expected, double actual, string what)
    {
        Assert.True(expected > 0, $"{what}: the independent value is {expected}");
        Assert.True(Math.Abs(actual - expected) <= RelativeTolerance * expected,
            $"{what}: curve {actual:R}, independent {expected:R} (relative difference {Math.Abs(actual - expected) / expected:E2})");
    }

    /// <summary>Strictly decreasing in bits: every extra bit lowers the distortion of these well-conditioned layers.</summary>
    private static void AssertDecreasing(UnitCurve curve)
    {
        for (var k = 1; k < curve.Distortion.Count; k++)
            Assert.True(curve.Distortion[k] < curve.Distortion[k - 1],
                $"{curve.Name}: D({curve.Bits[k]}) = {curve.Distortion[k]} is not below D({curve.Bits[k - 1]}) = {curve.Distortion[k - 1]}");
        Assert.True(curve.Distortion[^1] > 0, $"{curve.Name}: D at the widest width is 0");
    }

    [Fact]
    public void MlpExactCurvesEqualIndependentMeasurementOverTwoFeatures()
    {
        var model = Mlp();
        string[] features = ["hidden", "y"];
        var data = Net.RandomData(Samples * 16, seed: 21);
        var units = UnitDiscovery.Discover(model, features, new UnitOptions()).Units;
        Assert.Equal(["fc1", "fc2"], units.Select(u => u.Name));
        var set = Measure(model, units, features, [16], data);
        Assert.Equal(CurveMode.Exact, set.Mode);
        Assert.False(set.FromCache);
        // units x widths x runs per measurement (32 samples in runs of 8).
        Assert.Equal(2 * QuantMath.DefaultCandidateBits.Count * (Samples / RunBatch), set.Runs);
        string[] weights = ["w1", "w2"];
        for (var u = 0; u < units.Count; u++)
        {
            var curve = set.Curves[u];
            Assert.Equal(units[u].Name, curve.Name);
            Assert.Equal(QuantMath.DefaultCandidateBits, curve.Bits);
            for (var k = 0; k < curve.Bits.Count; k++)
                AssertMatches(Independent(model, weights[u], 1, curve.Bits[k], 0, units[u].Layer.Channels, features, [Samples, 16], data),
                    curve.Distortion[k], $"{curve.Name} at {curve.Bits[k]} bits");
            AssertDecreasing(curve);
        }
    }

    [Fact]
    public void ConvExactCurvesEqualIndependentMeasurement()
    {
        var model = ConvNet();
        string[] features = ["y"];
        var data = Net.RandomData(Samples * 4 * 8 * 8, seed: 22);
        var units = UnitDiscovery.Discover(model, features, new UnitOptions()).Units;
        Assert.Equal(["conv1", "conv2"], units.Select(u => u.Name));
        var set = Measure(model, units, features, [4, 8, 8], data);
        string[] weights = ["w1", "w2"];
        for (var u = 0; u < units.Count; u++)
        {
            var curve = set.Curves[u];
            for (var k = 0; k < curve.Bits.Count; k++)
                AssertMatches(Independent(model, weights[u], 0, curve.Bits[k], 0, units[u].Layer.Channels, features, [Samples, 4, 8, 8], data),
                    curve.Distortion[k], $"{curve.Name} at {curve.Bits[k]} bits");
            AssertDecreasing(curve);
        }
    }

    [Fact]
    public void ChannelGroupCurvesQuantizeOnlyTheirChannels()
    {
        var model = Mlp();
        string[] features = ["y"];
        var data = Net.RandomData(Samples * 16, seed: 23);
        var units = UnitDiscovery.Discover(model, features, new UnitOptions { Granularity = Granularity.Group, GroupSize = 8 }).Units;
        // fc1 has 32 output channels (4 groups of 8), fc2 has 8 (one whole-layer unit).
        Assert.Equal(["fc1[0:8]", "fc1[8:16]", "fc1[16:24]", "fc1[24:32]", "fc2"], units.Select(u => u.Name));
        var set = Measure(model, units, features, [16], data);
        for (var u = 0; u < units.Count; u++)
        {
            var unit = units[u];
            var curve = set.Curves[u];
            Assert.Equal(unit.Size, curve.Size);
            var weight = unit.Layer.WeightName;
            foreach (var k in new[] { 0, 2, 5 }) // 2, 4 and 8 bits
                AssertMatches(Independent(model, weight, 1, curve.Bits[k], unit.ChannelStart, unit.ChannelCount, features, [Samples, 16], data),
                    curve.Distortion[k], $"{curve.Name} at {curve.Bits[k]} bits");
            AssertDecreasing(curve);
        }
    }
}
