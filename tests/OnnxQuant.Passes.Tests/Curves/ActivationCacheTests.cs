using OnnxQuant.Frontend;
using OnnxQuant.Passes.Curves;
using OnnxQuant.Runtime;

namespace OnnxQuant.Passes.Tests.Curves;

public class ActivationCacheTests
{
    /// <summary>Values over the in-memory budget go to disk and come back bit for bit, with their type and shape.</summary>
    [Fact]
    public void ValuesOverTheBudgetAreSpilledAndReadBackExactly()
    {
        var rng = new Random(5);
        var first = Enumerable.Range(0, 1000).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        var second = Enumerable.Range(0, 3000).Select(_ => (float)rng.NextDouble()).Append(float.NaN).Append(-0f).ToArray();
        using var cache = new ActivationCache(4000 + 100);
        cache.Put("a", 0, TensorData.FromFloats(first, [10, 100]));
        cache.Put("b", 1, TensorData.FromFloats(second, [3002]));
        Assert.Equal(4000, cache.MemoryBytes);
        Assert.Equal(3002 * 4, cache.SpilledBytes);
        Assert.True(cache.Contains("b", 1));
        Assert.False(cache.Contains("b", 0));
        var (type, shape) = cache.Describe("b", 1);
        Assert.Equal(DataType.Float, type);
        Assert.Equal([3002L], shape);
        var back = cache.Get("b", 1).ToFloats();
        Assert.Equal(second.Select(BitConverter.SingleToInt32Bits), back.Select(BitConverter.SingleToInt32Bits));
        Assert.Equal(first, cache.Get("a", 0).ToFloats());
    }
}
