using OnnxQuant.Passes.Quantization;

namespace OnnxQuant.Passes.Tests.Quantization;

public class QuantMathTests
{
    private static float[] Gaussian(int n, int seed, float sigma = 1f)
    {
        var random = new Random(seed);
        var result = new float[n];
        for (var i = 0; i < n; i++)
        {
            var u1 = 1.0 - random.NextDouble();
            var u2 = random.NextDouble();
            result[i] = sigma * (float)(Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
        }
        return result;
    }

    [Theory]
    [InlineData(2, -2, 1)]
    [InlineData(4, -8, 7)]
    [InlineData(8, -128, 127)]
    public void SignedRangeIsTwosComplement(int bits, int min, int max)
    {
        Assert.Equal(min, QuantMath.SignedMin(bits));
        Assert.Equal(max, QuantMath.SignedMax(bits));
    }

    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    [InlineData(8)]
    public void ValuesStayInRangeAndDequantizeWithinHalfStep(int bits)
    {
        var weight = Gaussian(8 * 3 * 3 * 3, 1);
        var layout = new WeightLayout([8, 3, 3, 3], channelAxis: 0);
        var q = QuantMath.QuantizeWeight(weight, layout, bits);
        Assert.All(q.Values, v => Assert.InRange(v, QuantMath.SignedMin(bits), QuantMath.SignedMax(bits)));
        Assert.Equal(8, q.Scales.Length);
        var deq = q.Dequantize();
        for (var i = 0; i < weight.Length; i++)
        {
            var scale = q.Scales[i / 27];
            var clip = scale * QuantMath.SignedMax(bits);
            // Inside the clipping range the error is at most half a step; outside it is the clipping error.
            if (Math.Abs(weight[i]) <= clip)
                Assert.True(Math.Abs(weight[i] - deq[i]) <= scale / 2 + 1e-6f, $"element {i}");
        }
    }

    [Fact]
    public void ErrorShrinksAsBitsGrow()
    {
        var weight = Gaussian(4096, 2);
        var layout = new WeightLayout([64, 64], channelAxis: 1);
        double previous = double.PositiveInfinity;
        foreach (var bits in QuantMath.DefaultCandidateBits)
        {
            var deq = QuantMath.FakeQuantizeWeight(weight, layout, bits);
            var mse = weight.Zip(deq, (a, b) => (double)(a - b) * (a - b)).Average();
            Assert.True(mse < previous, $"{bits} bits: {mse} not below {previous}");
            previous = mse;
        }
        // 8-bit per-channel on a unit Gaussian: about (range/255)^2/12 ~ 1e-4; allow 3x.
        Assert.InRange(previous, 0, 3e-4);
    }

    [Fact]
    public void MseSearchBeatsMaxScaling()
    {
        var weight = Gaussian(1024, 3);
        weight[0] = 12f; // one outlier makes max-scaling waste the grid
        var best = QuantMath.MseOptimalScale(weight, 3);
        var maxScale = 12f / QuantMath.SignedMax(3);
        Assert.True(best < maxScale);
        Assert.True(QuantMath.SquaredError(weight, best, -4, 3) < QuantMath.SquaredError(weight, maxScale, -4, 3));
    }

    [Fact]
    public void ChannelAxisOneUsesColumns()
    {
        // [K=2, N=3] MatMul weight: column j scaled by its own max.
        float[] weight = [1, 10, 100, -1, -10, -100];
        var q = QuantMath.QuantizeWeight(weight, new WeightLayout([2, 3], channelAxis: 1), 8);
        Assert.Equal(3, q.Scales.Length);
        Assert.Equal(1f / 127, q.Scales[0], 1e-6f);
        Assert.Equal(100f / 127, q.Scales[2], 1e-4f);
        Assert.Equal(weight, q.Dequantize(), (a, b) => Math.Abs(a - b) < 1e-4f * Math.Max(1, Math.Abs(a)));
    }

    [Fact]
    public void BlockedScalesPerBlock()
    {
        // [K=8, N=2] with blocks of 4 along K: 2 channels x 2 blocks.
        var weight = Gaussian(16, 4);
        for (var k = 4; k < 8; k++)
            weight[k * 2] *= 100;
        var q = QuantMath.QuantizeWeight(weight, new WeightLayout([8, 2], channelAxis: 1, blockAxis: 0, blockSize: 4), 4);
        Assert.Equal(4, q.Scales.Length);
        Assert.True(q.Scales[1] > 20 * q.Scales[0], "the scaled block of channel 0 has its own scale");
    }

    [Fact]
    public void ZeroChannelIsExact()
    {
        var q = QuantMath.QuantizeWeight(new float[6], new WeightLayout([2, 3], 0), 4);
        Assert.All(q.Scales, s => Assert.Equal(1f, s));
        Assert.All(q.Dequantize(), v => Assert.Equal(0f, v));
    }

    [Theory]
    [InlineData(-1f, 3f)]
    [InlineData(0.5f, 3f)]
    [InlineData(-4f, -1f)]
    [InlineData(0f, 0f)]
    public void ActivationZeroPointInRangeAndZeroExact(float min, float max)
    {
        var p = QuantMath.ActivationParameters(min, max, 8);
        Assert.InRange(p.ZeroPoint, 0, 255);
        Span<float> values = [0f, min, max];
        QuantMath.FakeQuantizeActivation(values, p);
        Assert.Equal(0f, values[0]);
        Assert.Equal(min, values[1], p.Scale / 2 + 1e-6f);
        Assert.Equal(max, values[2], p.Scale / 2 + 1e-6f);
    }

    [Fact]
    public void ActivationSaturatesOutsideRange()
    {
        var p = QuantMath.ActivationParameters(-1f, 1f, 8);
        Span<float> values = [5f, -5f];
        QuantMath.FakeQuantizeActivation(values, p);
        Assert.Equal(1f, values[0], 0.01f);
        Assert.Equal(-1f, values[1], 0.01f);
    }
}
