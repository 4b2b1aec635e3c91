using OnnxQuant.Frontend;

namespace OnnxQuant.Runtime.Tests;

/// <summary>What calibration relies on: intermediate tensors fetched as outputs, unoptimized graphs, determinism.</summary>
public class CalibrationSupportTests
{
    private static TensorData Input(int batch, int seed)
    {
        var rng = new Random(seed);
        return TensorData.FromFloats(Enumerable.Range(0, batch * 3 * 64).Select(_ => rng.NextSingle() * 2 - 1).ToArray(), [batch, 3, 8, 8]);
    }

    /// <summary>A session built from a model serialized on demand serializes it once and runs as one built from the bytes.</summary>
    [Fact]
    public void SessionFromAModelSerializedOnDemandRunsAsFromItsBytes()
    {
        var calls = 0;
        using var onDemand = InferenceSession.Create(() => { calls++; return TestGraphs.ConvRelu(exposeConv: false); }, SessionOptions.Calibration);
        using var fromBytes = InferenceSession.Create(TestGraphs.ConvRelu(exposeConv: false), SessionOptions.Calibration);
        Assert.Equal(1, calls);
        var x = Input(2, 3);
        Assert.Equal(fromBytes.Run([new("x", x)], ["y"])[0].Data.GetArray<float>(), onDemand.Run([new("x", x)], ["y"])[0].Data.GetArray<float>());
    }

    [Fact]
    public void FetchesAnIntermediateTensorMadeAGraphOutput()
    {
        using var session = InferenceSession.Create(TestGraphs.ConvRelu(exposeConv: true), SessionOptions.Calibration);
        Assert.Equal(["y", "c"], session.Outputs.Select(o => o.Name));
        Assert.Equal([-1L, 4, 8, 8], session.Outputs[1].Dims);
        Assert.Equal("N", session.Outputs[1].SymbolicDims[0]);

        var outputs = session.Run([new("x", Input(2, 1))], ["c", "y"]);
        Assert.Equal(["c", "y"], outputs.Select(o => o.Name));
        var c = outputs[0].Data.GetArray<float>();
        var y = outputs[1].Data.GetArray<float>();
        Assert.Contains(c, v => v < 0); // the pre-activation really is the Conv output
        Assert.Equal(c.Select(v => Math.Max(v, 0f)).ToArray(), y);

        // The same outputs as the plain model's, so instrumenting changes nothing downstream.
        using var plain = InferenceSession.Create(TestGraphs.ConvRelu(exposeConv: false), SessionOptions.Calibration);
        Assert.Equal(y, plain.Run([new("x", Input(2, 1))])[0].Data.GetArray<float>());
    }

    [Fact]
    public void WithoutTheMemoryArenaRunsGiveTheSameBytes()
    {
        var withArena = SessionOptions.Default with { IntraOpThreads = 1 };
        using var arena = InferenceSession.Create(TestGraphs.ConvRelu(exposeConv: true), withArena);
        using var plain = InferenceSession.Create(TestGraphs.ConvRelu(exposeConv: true), withArena with { MemoryArena = false });
        // The memory settings of calibration and verification: no planned block per run, the arena shrunk after each.
        using var unplanned = InferenceSession.Create(TestGraphs.ConvRelu(exposeConv: true), withArena with { MemoryPattern = false });
        using var shrunk = InferenceSession.Create(TestGraphs.ConvRelu(exposeConv: true), withArena with { ReleaseArenaAfterRun = true });
        // Several runs of different batch sizes: buffers are allocated and given back between them.
        for (var i = 0; i < 4; i++)
        {
            var input = Input(1 + i % 3, 20 + i);
            var expected = arena.Run([new("x", input)], ["c", "y"]);
            foreach (var other in new[] { plain, unplanned, shrunk })
            {
                var actual = other.Run([new("x", input)], ["c", "y"]);
                for (var k = 0; k < 2; k++)
                    Assert.Equal(expected[k].Data.ToBytes(), actual[k].Data.ToBytes());
            }
        }
        // Handing free native memory back is allowed at any time, between runs and after sessions close.
        NativeHeap.Release();
        Assert.Equal(expected: arena.Run([new("x", Input(2, 7))], ["y"])[0].Data.ToBytes(), actual: shrunk.Run([new("x", Input(2, 7))], ["y"])[0].Data.ToBytes());
    }

    [Fact]
    public void StreamsCalibrationBatchesIntoARunningStatistic()
    {
        using var session = InferenceSession.Create(TestGraphs.ConvRelu(exposeConv: true), SessionOptions.Calibration);
        var batches = Enumerable.Range(0, 6).Select(i => (IReadOnlyList<NamedTensor>)[new NamedTensor("x", Input(1 + i % 3, 10 + i))]);
        float min = float.MaxValue, max = float.MinValue;
        long count = 0;
        foreach (var outputs in session.RunBatches(batches, ["c"]))
        {
            var c = outputs[0].Data;
            count += c.ElementCount;
            foreach (var v in c.GetArray<float>())
                (min, max) = (Math.Min(min, v), Math.Max(max, v));
        }
        Assert.Equal((1 + 2 + 3) * 2 * 4 * 64, count);
        Assert.True(min < 0 && max > 0);
    }

    [Fact]
    public void DeterministicSessionsGiveIdenticalBytes()
    {
        var input = Input(4, 3);
        var options = SessionOptions.Calibration;
        byte[] Run(SessionOptions o)
        {
            using var session = InferenceSession.Create(TestGraphs.ConvRelu(exposeConv: false), o);
            return session.Run([new("x", input)])[0].Data.ToBytes();
        }
        var first = Run(options);
        Assert.Equal(first, Run(options));
        Assert.Equal(first, Run(options with { IntraOpThreads = 1 }));
        // Deterministic with the thread count left open means one thread, whatever the machine has.
        var optimized = options with { Optimization = GraphOptimization.All };
        Assert.Equal(Run(optimized with { IntraOpThreads = 1 }), Run(optimized with { IntraOpThreads = 0 }));
    }

    [Fact]
    public void RejectsBadOptions()
    {
        var model = TestGraphs.ConvRelu(exposeConv: false);
        Assert.Throws<ArgumentException>(() => InferenceSession.Create(model, new SessionOptions { IntraOpThreads = -1 }));
        var badLevel = Assert.Throws<OrtException>(() => InferenceSession.Create(model, new SessionOptions { Optimization = (GraphOptimization)5 }));
        Assert.Contains("SetSessionGraphOptimizationLevel", badLevel.Message);
    }
}
