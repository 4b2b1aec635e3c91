using OnnxQuant.Frontend;

namespace OnnxQuant.Runtime.Tests;

public class OpProfileTests
{
    private static IReadOnlyList<NamedTensor> Input(int batch) =>
        [new NamedTensor("x", TensorData.FromFloats(Enumerable.Range(0, batch * 3 * 64).Select(i => i % 5 * 0.1f).ToArray(), [batch, 3, 8, 8]))];

    [Fact]
    public void ProfileCountsTheRunsAndTimesEveryOpType()
    {
        var dir = Directory.CreateTempSubdirectory("onnxquant-profile-").FullName;
        try
        {
            var path = Path.Combine(dir, "conv_relu.onnx");
            File.WriteAllBytes(path, TestGraphs.ConvRelu(exposeConv: true));
            // Optimizations off so both nodes survive as themselves (Conv + Relu would fuse into one FusedConv).
            var options = NodeModels.Options with { Optimization = GraphOptimization.Disabled };
            var profiles = OpProfile.Measure([path, path], options, [Input(2), Input(1)], runs: 4, warmup: 2);
            Assert.Equal(2, profiles.Count);
            foreach (var profile in profiles)
            {
                Assert.Equal(4, profile.Runs);
                Assert.Equal(["Conv", "Relu"], profile.Ops.Select(o => o.OpType).Order());
                Assert.All(profile.Ops, o => Assert.Equal(1.0, o.NodesPerRun));
                Assert.All(profile.Ops, o => Assert.True(o.MsPerRun > 0));
                // Kernel time is part of the run time.
                Assert.True(profile.Ops.Sum(o => o.MsPerRun) <= profile.MsPerRun, $"{profile.Ops.Sum(o => o.MsPerRun)} > {profile.MsPerRun}");
            }
            // The trace files are gone.
            Assert.Empty(Directory.GetFiles(Path.GetTempPath(), $"onnxquant-profile-{Environment.ProcessId}-*"));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void OptimizedModelFileShowsTheFusedGraph()
    {
        var dir = Directory.CreateTempSubdirectory("onnxquant-optimized-").FullName;
        try
        {
            var optimized = Path.Combine(dir, "optimized.onnx");
            using (InferenceSession.Create(TestGraphs.ConvRelu(exposeConv: false), NodeModels.Options with { OptimizedModelPath = optimized }))
            {
            }
            var ops = ModelIO.Load(optimized).Graph.Nodes.Select(n => n.OpType).ToList();
            // Conv + Relu become one fused kernel at the extended level.
            Assert.DoesNotContain("Relu", ops);
            Assert.Single(ops, op => op.Contains("Conv", StringComparison.Ordinal));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void EndProfilingNeedsAProfilingSession()
    {
        using var session = InferenceSession.Create(TestGraphs.ConvRelu(exposeConv: false), NodeModels.Options);
        Assert.Throws<InvalidOperationException>(() => session.EndProfiling());
    }
}
