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
    public void ProfilesAModelWithAnInt4InputThroughTheCApiSession()
    {
        // An INT4 graph input makes the session open through the C API (the managed API has no INT4 element type):
        // its profiler is switched on by the same options and stopped through SessionEndProfiling.
        var g = new Graph("int4_in");
        var q = new Value("q", new TensorType(DataType.Int4, Shape.Of(4, 4)));
        g.AddInput(q);
        var scale = g.AddInitializer("scale", Tensor.FromFloats("scale", [], [0.5f]));
        var dq = new Node("DequantizeLinear", [q, scale], ["x"], name: "dq");
        g.AddNode(dq);
        var relu = new Node("Relu", [dq.Outputs[0]], ["y"], name: "relu");
        g.AddNode(relu);
        dq.Outputs[0].Type = new TensorType(DataType.Float, Shape.Of(4, 4));
        relu.Outputs[0].Type = new TensorType(DataType.Float, Shape.Of(4, 4));
        g.AddOutput(relu.Outputs[0]);
        var model = new Model(g) { IrVersion = 10 };
        model.OpsetImports.Default = 21;
        var dir = Directory.CreateTempSubdirectory("onnxquant-profile-int4-").FullName;
        try
        {
            var path = Path.Combine(dir, "int4_in.onnx");
            ModelIO.Save(model, path);
            var input = new NamedTensor("q", TensorData.FromBytes(DataType.Int4, Enumerable.Range(0, 8).Select(i => (byte)(i * 37)).ToArray(), [4, 4]));
            var options = NodeModels.Options with { Optimization = GraphOptimization.Disabled };
            var profile = Assert.Single(OpProfile.Measure([path], options, [[input]], runs: 3, warmup: 1));
            Assert.Equal(3, profile.Runs);
            Assert.Equal(["DequantizeLinear", "Relu"], profile.Ops.Select(o => o.OpType).Order());
            Assert.All(profile.Ops, o => Assert.Equal(1.0, o.NodesPerRun));
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
