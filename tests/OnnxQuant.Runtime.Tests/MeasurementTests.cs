namespace OnnxQuant.Runtime.Tests;

public class MeasurementTests
{
    [Fact]
    public void PercentilesInterpolateBetweenOrderStatistics()
    {
        var stats = LatencyStats.From([4.0, 1.0, 3.0, 2.0]);
        Assert.Equal(4, stats.Runs);
        Assert.Equal(2.5, stats.MedianMs, 12);
        Assert.Equal(3.7, stats.P90Ms, 12); // position 0.9 * 3 = 2.7 between 3 and 4
        Assert.Equal(2.5, stats.MeanMs, 12);
        Assert.Equal(1.0, stats.MinMs);
        Assert.Equal(4.0, stats.MaxMs);
        Assert.Equal(7.0, LatencyStats.From([7.0]).P90Ms);
        Assert.Throws<ArgumentException>(() => LatencyStats.From([]));
    }

    [Fact]
    public void AlternatingTimerTimesTurnsAfterUntimedSettleRuns()
    {
        var calls = new List<char>();
        var samples = AlternatingTimer.Time([() => calls.Add('a'), () => calls.Add('b')], warmup: 1, runs: 5, block: 3, settle: 2);
        Assert.Equal([5, 5], samples.Select(s => s.Count));
        // Warm-up a, b; then turns of (2 untimed + 3 timed) per model, the last turn 2 timed.
        Assert.Equal("ab" + "aaaaa" + "bbbbb" + "aaaa" + "bbbb", new string(calls.ToArray()));
        Assert.All(samples.SelectMany(s => s), ms => Assert.True(ms >= 0));

        calls.Clear();
        AlternatingTimer.Time([() => calls.Add('a'), () => calls.Add('b')], warmup: 0, runs: 3, block: 1, settle: 0);
        Assert.Equal("ababab", new string(calls.ToArray()));

        // One model has nothing to recover from: no settle runs.
        calls.Clear();
        Assert.Equal(4, AlternatingTimer.Time([() => calls.Add('a')], warmup: 0, runs: 4, block: 2, settle: 7)[0].Count);
        Assert.Equal(4, calls.Count);
        Assert.Throws<ArgumentOutOfRangeException>(() => AlternatingTimer.Time([() => { }], 0, 1, block: 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => AlternatingTimer.Time([() => { }], 0, 1, settle: -1));
    }

    [Fact]
    public void ReadsResidentMemory()
    {
        var current = ProcessMemory.CurrentResidentBytes();
        Assert.True(current > 1 << 20);
        Assert.True(ProcessMemory.PeakResidentBytes() >= current);
    }

    [Fact]
    public void RandomInputsFollowDeclaredShapesAndSeeds()
    {
        using var session = InferenceSession.Create(TestGraphs.ConvRelu(exposeConv: false), NodeModels.Options);
        var missing = Assert.Throws<ArgumentException>(() => RandomInputs.ResolveShapes(session.Inputs, new Dictionary<string, long[]>()));
        Assert.Contains("--shape x=1x3x8x8", missing.Message);
        var contradicting = Assert.Throws<ArgumentException>(() =>
            RandomInputs.ResolveShapes(session.Inputs, new Dictionary<string, long[]> { ["x"] = [2, 3, 9, 8] }));
        Assert.Contains("does not fit", contradicting.Message);
        var resolved = RandomInputs.ResolveShapes(session.Inputs, new Dictionary<string, long[]> { ["x"] = [2, 3, 8, 8] });
        var a = RandomInputs.Create(resolved, seed: 5);
        var b = RandomInputs.Create(resolved, seed: 5);
        Assert.Equal([2L, 3, 8, 8], a[0].Data.Shape);
        Assert.Equal(a[0].Data.GetArray<float>(), b[0].Data.GetArray<float>());
        Assert.All(a[0].Data.GetArray<float>(), v => Assert.InRange(v, 0f, 1f));
        Assert.Equal([2L, 4, 8, 8], session.Run(a)[0].Data.Shape);
    }

    [Fact]
    public void NormalInputsAreStandardNormalAndSeeded()
    {
        var a = RandomInputs.Normal([3, 101, 101], new Random(0)).GetArray<float>();
        var b = RandomInputs.Normal([3, 101, 101], new Random(0)).GetArray<float>();
        Assert.Equal(3 * 101 * 101, a.Length); // odd: the last Box-Muller pair is half used
        Assert.Equal(a, b);
        Assert.All(a, v => Assert.True(float.IsFinite(v)));
        var mean = a.Average(v => (double)v);
        var variance = a.Average(v => (v - mean) * (v - mean));
        Assert.InRange(mean, -0.03, 0.03);
        Assert.InRange(variance, 0.95, 1.05);
    }
}
