using OnnxQuant.Frontend;
using OnnxQuant.Passes.Calibration;
using OnnxQuant.Passes.Curves;
using OnnxQuant.Passes.Pipeline;
using OnnxQuant.Passes.Quantization;
using OnnxQuant.Passes.Rewrite;
using OnnxQuant.Passes.Units;
using OnnxQuant.Runtime;

namespace OnnxQuant.Passes.Tests.Curves;

/// <summary>
/// The fast curve proxy P(b) = sum_i (w_i - Q_b(w_i))^2 E[x_c(i)^2] on a single MatMul whose feature is its output:
/// with independent zero-mean inputs the dropped cross terms vanish in expectation, so P(b) is the measured
/// per-sample output error up to sampling noise.
/// </summary>
public class FastCurveProxyTests
{
    private const int K = 16;
    private const int N = 12;
    private const int Samples = 4096;
    // Cross terms of the input covariance are O(1/sqrt(samples)) ~ 1.6 % here; 5 % leaves room.
    private const double ProxyTolerance = 0.05;

    private static Model SingleMatMul()
    {
        var net = new Net(opset: 17, seed: 9);
        var x = net.BatchInput("x", K);
        var y = net.Op("MatMul", [x, net.Random("w", [K, N], 0.5f)]);
        y.Producer!.Name = "fc";
        y.Name = "y";
        net.Output(y);
        return net.Model;
    }

    /// <summary>Independent uniform inputs, zero mean, channel c scaled by 0.3 + 0.15 c (different second moments).</summary>
    private static float[] Inputs(int seed)
    {
        var random = new Random(seed);
        var data = new float[Samples * K];
        for (var s = 0; s < Samples; s++)
            for (var c = 0; c < K; c++)
                data[s * K + c] = (0.3f + 0.15f * c) * (float)(random.NextDouble() * 2 - 1);
        return data;
    }

    private static double[] SecondMoments(float[] data)
    {
        var m = new double[K];
        for (var i = 0; i < data.Length; i++)
            m[i % K] += (double)data[i] * data[i];
        return m.Select(v => v / Samples).ToArray();
    }

    [Fact]
    public void ProxyEqualsMeasuredOutputErrorForUncorrelatedInputs()
    {
        var model = SingleMatMul();
        var layer = UnitDiscovery.Discover(model, ["y"], new UnitOptions()).Layers.Single();
        var weight = model.Graph.FindInitializer("w")!.Initializer!.ToFloatArray();
        var layout = new WeightLayout([K, N], channelAxis: 1);
        var data = Inputs(31);
        var bits = QuantMath.DefaultCandidateBits;
        var proxy = FastCurveProxy.Proxy(weight, layout, layer.InputChannelOfElements(), SecondMoments(data), bits);
        var reference = Net.Run(model, ("x", [Samples, K], data))[0];
        for (var k = 0; k < bits.Count; k++)
        {
            var fake = QuantMath.FakeQuantizeWeight(weight, layout, bits[k]);
            var quantized = Net.Run(TestCalibration.WithWeightAndOutputs(model, "w", fake, ["y"]), ("x", [Samples, K], data))[0];
            double error = 0;
            for (var i = 0; i < reference.Length; i++)
            {
                var d = (double)quantized[i] - reference[i];
                error += d * d;
            }
            var perSample = error / Samples;
            Assert.True(Math.Abs(proxy[k] - perSample) <= ProxyTolerance * perSample,
                $"{bits[k]} bits: proxy {proxy[k]:E4}, measured output error per sample {perSample:E4}");
        }
    }

    [Fact]
    public void ProxyOfChannelMasksAddsUpToTheLayer()
    {
        var weight = Net.RandomData(K * N, seed: 4);
        var layout = new WeightLayout([K, N], channelAxis: 1);
        var inputChannel = Enumerable.Range(0, K * N).Select(i => i / N).ToArray();
        var moments = Enumerable.Range(0, K).Select(c => 0.1 + c).ToArray();
        int[] bits = [2, 4, 8];
        var whole = FastCurveProxy.Proxy(weight, layout, inputChannel, moments, bits);
        var sum = new double[bits.Length];
        for (var start = 0; start < N; start += 4)
        {
            var mask = Enumerable.Range(0, K * N).Where(i => i % N >= start && i % N < start + 4).ToArray();
            var part = FastCurveProxy.Proxy(weight, layout, inputChannel, moments, bits, mask);
            for (var k = 0; k < bits.Length; k++)
                sum[k] += part[k];
        }
        for (var k = 0; k < bits.Length; k++)
            Assert.True(Math.Abs(sum[k] - whole[k]) <= 1e-12 * whole[k], $"{bits[k]} bits: groups {sum[k]:R}, layer {whole[k]:R}");
    }

    [Fact]
    public void FastCurvesPassThroughTheExactReferencePointAndTrackExactCurves()
    {
        var model = SingleMatMul();
        var data = TestCalibration.Single("x", Inputs(32), K);
        var units = UnitDiscovery.Discover(model, ["y"], new UnitOptions()).Units;
        var calibration = Calibrator.Run(model, data, Samples, [new CalibrationTarget("x", -1)], CalibrationMethod.MinMax, 8,
            SessionOptions.Calibration, 256);
        CurveSet Curves(CurveMode mode) => CurveMeasurer.Measure(model, units, ["y"], data, Samples, calibration,
            new CurveOptions { Mode = mode }, new RewriteOptions(), 256, SessionOptions.Calibration, SilentProgress.Instance);
        var exact = Curves(CurveMode.Exact).Curves.Single();
        var fastSet = Curves(CurveMode.Fast);
        var fast = fastSet.Curves.Single();
        // One measured width (4 bits) instead of six.
        Assert.Equal(CurveMode.Fast, fastSet.Mode);
        Assert.Equal(Samples / 256, fastSet.Runs);
        var reference = exact.Bits.ToList().IndexOf(CurveMeasurer.ReferenceBits(exact.Bits));
        Assert.Equal(4, exact.Bits[reference]);
        // Both are rounded to 6 significant digits, so the reference point agrees exactly.
        Assert.Equal(exact.Distortion[reference], fast.Distortion[reference]);
        for (var k = 0; k < exact.Bits.Count; k++)
            Assert.True(Math.Abs(fast.Distortion[k] - exact.Distortion[k]) <= ProxyTolerance * exact.Distortion[k],
                $"{exact.Bits[k]} bits: fast {fast.Distortion[k]:E4}, exact {exact.Distortion[k]:E4}");
        Assert.Equal(1.0, FastCurveProxy.RankCorrelation(fast.Distortion, exact.Distortion));
    }

    [Fact]
    public void CalibratePassesThroughTheMeasuredPointAndKeepsTheShape()
    {
        double[] proxy = [9.0, 3.0, 0.7, 0.05];
        const double measured = 0.123;
        var curve = FastCurveProxy.Calibrate(proxy, 1, measured);
        // p * (m / p) is m up to one rounding step (one ulp, 2.2e-16 relative).
        Assert.True(Math.Abs(curve[1] - measured) <= 2.3e-16 * measured, $"reference point {curve[1]:R}");
        for (var k = 0; k < proxy.Length; k++)
            Assert.True(Math.Abs(curve[k] - proxy[k] * measured / 3.0) <= 1e-15 * curve[k], $"point {k}: {curve[k]:R}");
        Assert.Equal([0.0, 0.0, 0.0], FastCurveProxy.Calibrate([2.0, 0.0, 1.0], 1, 0.5));
    }

    [Fact]
    public void RankCorrelationOfKnownSequences()
    {
        double[] a = [1, 2, 3, 4, 5];
        Assert.Equal(1.0, FastCurveProxy.RankCorrelation(a, [10, 20, 30, 40, 50]), 12);
        Assert.Equal(1.0, FastCurveProxy.RankCorrelation(a, a.Select(Math.Exp).ToArray()), 12); // monotone, not linear
        Assert.Equal(-1.0, FastCurveProxy.RankCorrelation(a, [50, 40, 30, 20, 10]), 12);
        // Ties get their mean rank: ranks (0, 1.5, 1.5, 3) against (0, 1, 2, 3) give 4.5 / sqrt(4.5 * 5).
        Assert.Equal(4.5 / Math.Sqrt(22.5), FastCurveProxy.RankCorrelation([1, 2, 2, 3], [1, 2, 3, 4]), 12);
        Assert.Equal(1.0, FastCurveProxy.RankCorrelation([1, 2, 2, 3], [5, 6, 6, 7]), 12);
        Assert.True(double.IsNaN(FastCurveProxy.RankCorrelation([1, 1, 1], [1, 2, 3])), "constant sequence");
        Assert.True(double.IsNaN(FastCurveProxy.RankCorrelation([1, 2], [1, 2, 3])), "different lengths");
        Assert.True(double.IsNaN(FastCurveProxy.RankCorrelation([1], [1])), "one element");
    }
}
