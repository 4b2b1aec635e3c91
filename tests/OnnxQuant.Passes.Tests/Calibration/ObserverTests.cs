using OnnxQuant.Passes.Calibration;

namespace OnnxQuant.Passes.Tests.Calibration;

public class ObserverTests
{
    private static float[] Gaussian(int n, int seed)
    {
        var random = new Random(seed);
        return Enumerable.Range(0, n).Select(_ =>
            (float)(Math.Sqrt(-2 * Math.Log(1.0 - random.NextDouble())) * Math.Cos(2 * Math.PI * random.NextDouble()))).ToArray();
    }

    [Fact]
    public void HistogramGrowsAndKeepsEveryCount()
    {
        var h = new StreamingHistogram(64);
        h.Add([0f, 1f]);
        h.Add([-100f, 500f, 0.5f]);
        Assert.Equal(5, h.Count);
        Assert.Equal(5, h.Counts.ToArray().Sum());
        Assert.True(h.Low <= -100 && h.High > 500);
        Assert.Equal(-100f, h.Min);
        Assert.Equal(500f, h.Max);
        Assert.Equal(64, h.Counts.Length);
    }

    [Fact]
    public void MinMaxIsExact()
    {
        var o = new MinMaxObserver();
        o.Observe([1f, 2f, 3f]);
        o.Observe([7f]);
        Assert.Equal((0f, 7f), o.ComputeRange());
    }

    [Fact]
    public void PercentileClipsOutliers()
    {
        var o = new PercentileObserver(99.9);
        var data = Gaussian(100_000, 1);
        data[0] = 1000f;
        o.Observe(data);
        var (min, max) = o.ComputeRange();
        // 99.9th percentile of N(0,1) is 3.09; bin width at this range is ~0.5.
        Assert.InRange(max, 2.5f, 4.5f);
        Assert.InRange(min, -4.5f, -2.5f);
    }

    [Theory]
    [InlineData(CalibrationMethod.Entropy)]
    [InlineData(CalibrationMethod.Mse)]
    public void SearchClipsALongTail(CalibrationMethod method)
    {
        var o = Observers.Create(method, bits: 4);
        var data = Gaussian(50_000, 2);
        data[0] = 40f;
        foreach (var chunk in data.Chunk(5000))
            o.Observe(chunk);
        var (min, max) = o.ComputeRange();
        Assert.True(max < 20f, $"{method} kept the outlier: max {max}");
        Assert.True(max > 1.5f, $"{method} clipped too much: max {max}");
        Assert.True(min < -1.5f, $"{method} clipped the lower side: min {min}");
    }

    /// <summary>
    /// Values spread evenly over [-1, 1] (and ReLU-like: half of them exactly 0, the rest even over [0, 1]): every
    /// window that clips loses mass that no level represents, so entropy keeps (nearly) the whole range. Pricing the
    /// clipped mass as if the edge level held it clipped the ReLU-like spread.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void EntropyDoesNotClipAnEvenSpread(bool relu)
    {
        var random = new Random(3);
        var data = Enumerable.Range(0, 200_000).Select(i => relu
            ? (i % 2 == 0 ? 0f : (float)random.NextDouble())
            : (float)(2 * random.NextDouble() - 1)).ToArray();
        foreach (var bits in new[] { 8, 4 })
        {
            var o = Observers.Create(CalibrationMethod.Entropy, bits);
            foreach (var chunk in data.Chunk(10_000))
                o.Observe(chunk);
            var (min, max) = o.ComputeRange();
            // Tolerance: the search moves each end in steps of 1/128 of the range.
            Assert.InRange(max, 0.95f, 1f);
            if (relu)
                Assert.Equal(0f, min);
            else
                Assert.InRange(min, -1f, -0.95f);
        }
    }

    [Fact]
    public void MemoryIsBoundedByBins()
    {
        var h = new StreamingHistogram();
        for (var i = 0; i < 50; i++)
            h.Add(Gaussian(10_000, i));
        Assert.Equal(2048, h.Counts.Length);
        Assert.Equal(500_000, h.Count);
    }

    [Fact]
    public void NothingObservedThrows()
    {
        Assert.Throws<InvalidOperationException>(() => new MseObserver(8).ComputeRange());
    }
}
