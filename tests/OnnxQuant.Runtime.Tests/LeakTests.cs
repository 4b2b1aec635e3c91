using Xunit.Abstractions;

namespace OnnxQuant.Runtime.Tests;

/// <summary>
/// 10,000 runs must not grow the process: every input and output value, name and status is released each run. The
/// tensors are 64 KiB so that a single value leaked per run would add 625 MiB, far beyond the bound.
/// </summary>
public class LeakTests(ITestOutputHelper output)
{
    private const int Runs = 10_000;
    private const long BoundBytes = 24L << 20;

    [Fact]
    public void TenThousandRunsKeepResidentMemoryFlat()
    {
        using var session = InferenceSession.Create(TestGraphs.Add(128, 128), NodeModels.Options);
        var x = TensorData.FromFloats(Enumerable.Range(0, 128 * 128).Select(i => i * 1e-3f).ToArray(), [128, 128]);
        NamedTensor[] feed = [new("x", x), new("y", x)];
        // Warm-up: ORT's arena and the GC heaps reach their working size first.
        for (var i = 0; i < 500; i++)
            session.Run(feed);
        var before = Settle();
        for (var i = 0; i < Runs; i++)
            session.Run(feed);
        var after = Settle();
        output.WriteLine($"resident memory before {before >> 20} MiB, after {Runs} runs {after >> 20} MiB");
        Assert.True(after - before < BoundBytes,
            $"resident memory grew by {(after - before) / 1048576.0:F1} MiB over {Runs} runs (bound {BoundBytes >> 20} MiB)");
        Assert.Equal(2f * x.GetArray<float>()[5], session.Run(feed)[0].Data.GetArray<float>()[5]);
    }

    private static long Settle()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        // Aggressive: the collector gives its free regions back to the system, so what stays resident is what is
        // alive (native values included), not the managed heap's working size, which depends on the machine's caches.
        GC.Collect(2, GCCollectionMode.Aggressive, blocking: true, compacting: true);
        return ProcessMemory.CurrentResidentBytes();
    }
}
