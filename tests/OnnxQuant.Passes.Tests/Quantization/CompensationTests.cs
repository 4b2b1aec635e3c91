using OnnxQuant.Passes.Compile;
using OnnxQuant.Passes.Quantization;
using OnnxQuant.Passes.Rewrite;
using OnnxQuant.Passes.Units;

namespace OnnxQuant.Passes.Tests.Quantization;

public class CompensationTests
{
    /// <summary>Rows with correlated channels and a non-zero mean: x = A z + m, z standard normal.</summary>
    private static float[][] CorrelatedRows(int rows, int k, int seed)
    {
        var mix = Net.RandomData(k * k, seed, 0.3f);
        var mean = Net.RandomData(k, seed + 1, 0.5f);
        var result = new float[rows][];
        for (var r = 0; r < rows; r++)
        {
            var z = Net.RandomData(k, seed + 100 + r);
            var x = new float[k];
            for (var i = 0; i < k; i++)
            {
                double s = mean[i] + z[i];
                for (var j = 0; j < k; j++)
                    s += mix[i * k + j] * z[j];
                x[i] = (float)s;
            }
            result[r] = x;
        }
        return result;
    }

    [Theory]
    [InlineData(3)]
    [InlineData(4)]
    public void SecondOrderRoundingLowersTheLayerOutputError(int bits)
    {
        const int k = 64, n = 32;
        var rows = CorrelatedRows(1024, k, 5);
        var statistics = InputStatistics.FromRows(rows, k, k, n);
        var weight = Net.RandomData(k * n, 9);
        var layout = new WeightLayout([k, n], channelAxis: 1); // MatMul [K, N]
        var rtn = Compensator.FakeQuantize(weight, layout, bits, null, gptq: false);
        var gptq = Compensator.FakeQuantize(weight, layout, bits, statistics, gptq: true);
        var rtnError = Compensator.LocalError(weight, rtn, layout, statistics, centered: false);
        var gptqError = Compensator.LocalError(weight, gptq, layout, statistics, centered: false);
        // GPTQ trades weight error for output error: tr(dW S dW^T) at least 30 % lower than rounding to nearest.
        Assert.True(gptqError < 0.7 * rtnError, $"GPTQ {gptqError} vs RTN {rtnError}");
        // Still b-bit values on the per-channel grid.
        var q = Compensator.Quantize(weight, layout, Enumerable.Repeat(bits, n).ToArray(), statistics, gptq: true);
        Assert.All(q.Values, v => Assert.InRange(v, QuantMath.SignedMin(bits), QuantMath.SignedMax(bits)));
    }

    /// <summary>
    /// The memo the curves fill and the rewrites read gives exactly what quantizing directly gives, for one width and
    /// for a mix (bit for bit), with second-order rounding and without, and blocked; after the first call nothing is
    /// recomputed (the statistics are not asked for again).
    /// </summary>
    [Theory]
    [InlineData(true, 0)]
    [InlineData(false, 0)]
    [InlineData(true, 16)]
    public void CompensationMemoEqualsDirectQuantization(bool gptq, int blockSize)
    {
        const int k = 48, n = 8;
        var rows = CorrelatedRows(256, k, 4);
        var statistics = InputStatistics.FromRows(rows, k, k, n);
        var weight = Net.RandomData(k * n, 6);
        var layout = blockSize > 0 ? new WeightLayout([k, n], channelAxis: 1, blockAxis: 0, blockSize: blockSize) : new WeightLayout([n, k], channelAxis: 0);
        var memo = new CompensationMemo(1 << 20);
        var asked = 0;
        InputStatistics Statistics() { asked++; return statistics; }
        foreach (var bits in new[] { new[] { 4, 4, 4, 4, 4, 4, 4, 4 }, new[] { 2, 2, 3, 3, 4, 4, 8, 8 }, new[] { 8, 3, 2, 4, 4, 2, 3, 8 } })
        {
            var direct = Compensator.Quantize(weight, layout, bits, statistics, gptq);
            var memoized = memo.Quantize("layer", weight, layout, bits, Statistics, gptq);
            Assert.Equal(direct.Values, memoized.Values);
            Assert.Equal(direct.Scales, memoized.Scales);
            Assert.Equal(direct.Bits, memoized.Bits);
        }
        // Widths 2, 3, 4 and 8 were each computed once.
        Assert.Equal(gptq ? 4 : 0, asked);
    }

    [Fact]
    public void SecondOrderRoundingKeepsEachChannelsWidthAndIsDeterministic()
    {
        const int k = 48, n = 8;
        var rows = CorrelatedRows(256, k, 2);
        var statistics = InputStatistics.FromRows(rows, k, k, n);
        var weight = Net.RandomData(k * n, 3);
        var layout = new WeightLayout([n, k], channelAxis: 0); // Gemm transB [N, K]
        var bits = new[] { 2, 2, 3, 3, 4, 4, 8, 8 };
        var a = Compensator.Quantize(weight, layout, bits, statistics, gptq: true);
        var b = Compensator.Quantize(weight, layout, bits, InputStatistics.FromRows(rows, k, k, n), gptq: true);
        Assert.Equal(a.Values, b.Values);
        Assert.Equal(a.Scales, b.Scales);
        for (var c = 0; c < n; c++)
            for (var i = 0; i < k; i++)
                Assert.InRange(a.Values[c * k + i], QuantMath.SignedMin(bits[c]), QuantMath.SignedMax(bits[c]));
        // A channel quantized alone at its width equals the same channel in the mixed layer (channels are independent).
        var alone = Compensator.Quantize(weight, layout, Enumerable.Repeat(3, n).ToArray(), statistics, gptq: true);
        Assert.Equal(alone.Values.AsSpan(2 * k, 2 * k).ToArray(), a.Values.AsSpan(2 * k, 2 * k).ToArray());
    }

    [Fact]
    public void BlockedSecondOrderRoundingBeatsRoundToNearest()
    {
        const int k = 64, n = 16;
        var rows = CorrelatedRows(512, k, 7);
        var statistics = InputStatistics.FromRows(rows, k, k, n);
        var weight = Net.RandomData(k * n, 11);
        var layout = new WeightLayout([k, n], channelAxis: 1, blockAxis: 0, blockSize: 16);
        var rtn = Compensator.FakeQuantize(weight, layout, 4, null, gptq: false);
        var gptq = Compensator.FakeQuantize(weight, layout, 4, statistics, gptq: true);
        Assert.True(Compensator.LocalError(weight, gptq, layout, statistics, false) < 0.8 * Compensator.LocalError(weight, rtn, layout, statistics, false));
    }

    [Fact]
    public void BiasCorrectionZeroesTheMeanOutputShiftInOrt()
    {
        const int k = 32, n = 16, samples = 64;
        var net = new Net(opset: 17);
        var x = net.Input("x", samples, k);
        var w = net.Random("w", [k, n]);
        var y = net.Op("Add", [net.Op("MatMul", [x, w]), net.Random("b", [n])]);
        net.Output(y);
        var rows = CorrelatedRows(samples, k, 13);
        var data = rows.SelectMany(r => r).ToArray();
        var input = ("x", new long[] { samples, k }, data);
        var reference = Net.Run(net.Model, input)[0];
        var options = new CompileOptions { Calibration = new() { ActBits = 0 } };
        var layer = UnitDiscovery.Discover(net.Model, [y.Name], options.Units).Layers.Single();
        var statistics = new Dictionary<string, InputStatistics> { [layer.Name] = InputStatistics.FromRows(rows, k, k, n) };

        double[] MeanShift(Compensation compensation)
        {
            var model = net.Model.Clone();
            var result = QdqRewriter.Apply(model, [new LayerPlan(layer, Enumerable.Repeat(3, n).ToArray())], null,
                options.Rewrite with { Compensation = compensation }, 0, statistics: statistics.GetValueOrDefault);
            Assert.Equal(compensation.HasFlag(Compensation.Bias), result.Compensated!.SingleOrDefault()?.BiasCorrected ?? false);
            var output = Net.Run(model, input)[0];
            var shift = new double[n];
            for (var s = 0; s < samples; s++)
                for (var c = 0; c < n; c++)
                    shift[c] += (output[s * n + c] - reference[s * n + c]) / samples;
            return shift;
        }

        var none = MeanShift(Compensation.None);
        var corrected = MeanShift(Compensation.Bias);
        var scale = reference.Select(v => Math.Abs((double)v)).Average();
        // Without correction 3-bit rounding shifts the mean output visibly; with it the shift is float noise.
        Assert.True(none.Max(Math.Abs) > 1e-2 * scale, $"uncorrected shift {none.Max(Math.Abs)} (scale {scale})");
        Assert.All(corrected, v => Assert.True(Math.Abs(v) < 1e-4 * scale, $"corrected shift {v}"));
    }

    [Fact]
    public void BiasCorrectionAddsABiasToAConvWithout()
    {
        var net = new Net(opset: 17);
        var x = net.Input("x", 1, 4, 6, 6);
        var y = net.Op("Conv", [x, net.Random("w", [8, 4, 3, 3])], OnnxQuant.Frontend.Attribute.FromInts("pads", [1, 1, 1, 1]));
        net.Output(y);
        var options = new CompileOptions { Calibration = new() { ActBits = 0 } };
        var layer = UnitDiscovery.Discover(net.Model, [y.Name], options.Units).Layers.Single();
        var rows = CorrelatedRows(100, 36, 3);
        var statistics = new Dictionary<string, InputStatistics> { [layer.Name] = InputStatistics.FromRows(rows, 36, 36, 8) };
        var result = QdqRewriter.Apply(net.Model, [new LayerPlan(layer, Enumerable.Repeat(3, 8).ToArray())], null,
            options.Rewrite with { Compensation = Compensation.All }, 0, statistics: statistics.GetValueOrDefault);
        var conv = net.Graph.Nodes.Single(n => n.OpType == "Conv");
        Assert.Equal(3, conv.Inputs.Count);
        Assert.Equal(8, conv.Inputs[2]!.Initializer!.ElementCount);
        Assert.True(result.Compensated!.Single() is { Gptq: true, BiasCorrected: true });
    }

    [Fact]
    public void StatisticsCacheKeepsWithinItsBudgetAndRecomputesWhatItDropped()
    {
        var rows = CorrelatedRows(16, 8, 1);
        var computed = new List<string>();
        // One entry is 2 x 8 x 8 doubles = 1 KiB: a 2.5 KiB budget holds two.
        var cache = new InputStatisticsCache(name => { computed.Add(name); return InputStatistics.FromRows(rows, 8, 8, 4); }, 2560);
        var a = cache.Find("a");
        Assert.Same(a, cache.Find("a"));
        cache.Find("b");
        cache.Find("a"); // a is now the most recent
        cache.Find("c"); // drops b
        cache.Find("a");
        cache.Find("b");
        Assert.Equal(["a", "b", "c", "b"], computed);
    }
}
