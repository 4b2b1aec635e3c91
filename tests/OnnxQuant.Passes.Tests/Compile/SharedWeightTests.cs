using OnnxQuant.Data;
using OnnxQuant.Frontend;
using OnnxQuant.Passes.Canonicalize;
using OnnxQuant.Passes.Compile;
using OnnxQuant.Passes.Pipeline;
using OnnxQuant.Passes.Rewrite;
using OnnxQuant.Passes.Units;
using OnnxQuant.Passes.Verify;
using OnnxQuant.Runtime;
using Xunit;
using Attribute = OnnxQuant.Frontend.Attribute;

namespace OnnxQuant.Passes.Tests.Compile;

/// <summary>
/// One weight applied by several nodes, as one-stage detector heads apply theirs at every pyramid level: the nodes
/// are quantized with one width, compensated together, and the artifact stores the quantized weight once.
/// </summary>
public sealed class SharedWeightTests : IDisposable
{
    private readonly string _root = Path.Combine(Path.GetTempPath(), $"onnxquant-shared-{Guid.NewGuid():N}");

    public void Dispose()
    {
        if (Directory.Exists(_root))
            Directory.Delete(_root, true);
    }

    private const int HeadWeights = 16 * 16 * 3 * 3;

    /// <summary>
    /// A stem Conv (level 3, 16x16) and a strided Conv (level 4, 8x8); one head Conv weight applied to both levels,
    /// Relu, one output Conv weight applied to both: two graph outputs, one per level.
    /// </summary>
    private static Model PyramidWithSharedHead()
    {
        var net = new Net(17, seed: 11);
        var x = net.BatchInput("images", 3, 16, 16);
        var pads = Attribute.FromInts("pads", [1, 1, 1, 1]);
        var stem = net.Op("Conv", [x, net.Random("stem.weight", [16, 3, 3, 3], 0.4f)], pads);
        stem.Producer!.Name = "stem";
        var p3 = net.Op("Relu", [stem]);
        var down = net.Op("Conv", [p3, net.Random("down.weight", [16, 16, 3, 3], 0.15f)], pads, Attribute.FromInts("strides", [2, 2]));
        down.Producer!.Name = "down";
        var p4 = net.Op("Relu", [down]);
        var head = net.Random("head.weight", [16, 16, 3, 3], 0.15f);
        var headBias = net.Random("head.bias", [16], 0.1f);
        var cls = net.Random("cls.weight", [8, 16, 3, 3], 0.15f);
        var level = 3;
        foreach (var p in new[] { p3, p4 })
        {
            var h = net.Op("Relu", [net.Op("Conv", [p, head, headBias], pads)]);
            h.Producer!.Inputs[0]!.Producer!.Name = $"head.p{level}";
            var o = net.Op("Conv", [h, cls], pads);
            o.Producer!.Name = $"cls.p{level}";
            o.Name = $"logits_p{level++}";
            net.Output(o);
        }
        return net.Model;
    }

    /// <summary>Candidates 2, 4 and 8 bits, 16 calibration and 8 verification samples; float activations unless the
    /// target is speed (8-bit).</summary>
    private CompileResult Compile(string name, double target = 4, DeployTarget deploy = DeployTarget.Size, UnitOptions? units = null) =>
        TestModels.CompileImages(PyramidWithSharedHead(), _root, name, new CompileOptions
        {
            Allocation = new() { TargetBits = [target] },
            Curves = new() { CandidateBits = [2, 4, 8], CacheDir = null },
            Data = new() { CalibSamples = 16, VerifySamples = 8 },
            Rewrite = new() { Deploy = deploy },
            Units = units ?? new(),
            Calibration = new() { ActBits = deploy == DeployTarget.Speed ? 8 : 0 },
        });

    [Fact]
    public void EveryLayerUseOfASharedWeightGetsItsOwnInitializerWithTheSameData()
    {
        var net = new Net(17, seed: 3);
        var x = net.BatchInput("x", 8);
        var w = net.Random("w", [8, 8]);
        var a = net.Op("MatMul", [x, w]);
        var b = net.Op("MatMul", [a, w]);
        net.Output(b);
        var alsoRead = net.Op("Transpose", [w]);
        net.Output(alsoRead);
        var model = net.Model;

        var changed = new UnshareWeightsPass().Run(model);

        Assert.Equal(2, changed.Rewrites);
        var matmuls = model.Graph.Nodes.Where(n => n.OpType == "MatMul").ToList();
        Assert.All(matmuls, m => Assert.Single(m.Inputs[1]!.Uses));
        Assert.NotSame(matmuls[0].Inputs[1], matmuls[1].Inputs[1]);
        // The Transpose keeps the original; the copies share its data.
        var original = model.Graph.FindInitializer("w")!;
        Assert.Equal("Transpose", original.Uses.Single().Node.OpType);
        Assert.All(matmuls, m => Assert.True(m.Inputs[1]!.Initializer!.RawData.Span.SequenceEqual(original.Initializer!.RawData.Span)));
    }

    [Fact]
    public void KeepingOneTiedLayerOutOfInt2KeepsAllOfThemOut()
    {
        var int2 = new Int2Exclusions();
        int2.Tie([["head.p3", "head.p4", "head.p5"]]);

        Assert.True(int2.Add("head.p4"));
        Assert.False(int2.Add("head.p5"));
        Assert.Equal(["head.p3", "head.p4", "head.p5"], int2.Layers);
        Assert.True(int2.Allows("stem"));
    }

    [Fact]
    public void DiscoveryTiesTheLayersOfOneWeight()
    {
        var model = PyramidWithSharedHead();
        new PassManager(Canonicalization.Passes()).Run(model);

        var discovery = UnitDiscovery.Discover(model, ["logits_p3", "logits_p4"], new UnitOptions());

        Assert.Empty(discovery.Skipped);
        Assert.Equal(6, discovery.Layers.Count);
        Assert.Equal(2, discovery.Ties.Count);
        Assert.Equal(["head.p3", "head.p4"], discovery.Ties[0].Layers.Select(l => l.Name));
        Assert.Equal(["cls.p3", "cls.p4"], discovery.Ties[1].Layers.Select(l => l.Name));
    }

    [Fact]
    public void TiedLayersShareOneWidthAndTheArtifactStoresTheirWeightOnce()
    {
        var result = Compile("size");
        var report = result.Targets.Single().Report;

        // Four units: stem, down and one for each shared weight; the copy's curve is added to the representative's.
        Assert.Equal(["stem", "down", "head.p3", "cls.p3"], report.Units.Select(u => u.Layer));
        foreach (var name in new[] { "head", "cls" })
        {
            var unit = report.Units.Single(u => u.Layer == $"{name}.p3");
            var p3 = report.Curves.Single(c => c.Name == $"{name}.p3");
            var p4 = report.Curves.Single(c => c.Name == $"{name}.p4");
            var k = p3.Bits.ToList().IndexOf(unit.Bits);
            var sum = p3.Distortion[k] + p4.Distortion[k];
            Assert.True(Math.Abs(unit.PredictedDistortion - sum) <= 1e-5 * sum, $"{name}: unit distortion {unit.PredictedDistortion}, curves sum {sum}");
            Assert.Equal($"{name}.p3", p4.TiedTo);
            Assert.Null(p3.TiedTo);
            var copy = report.Layers.Single(l => l.Layer == $"{name}.p4");
            Assert.Equal($"{name}.p3", copy.SharesWeightOf);
            Assert.Equal(0, copy.FloatBytes);
            Assert.Equal(report.Layers.Single(l => l.Layer == $"{name}.p3").MaxBits, copy.MaxBits);
        }

        // The written model: one integer tensor per shared weight, read by both levels' DequantizeLinear.
        var model = ModelIO.Load(result.Targets[0].ModelPath);
        var graph = model.Graph;
        // Stem, down, head, cls: four integer weights for six Conv nodes (zero points have one value per channel).
        var integers = graph.Initializers.Where(v => v.Initializer!.DataType is DataType.Int2 or DataType.Int4 or DataType.Int8 or DataType.UInt2
            && v.Initializer.ElementCount > 16).ToList();
        Assert.Equal([16L * 3 * 9, 8 * 16 * 9, HeadWeights, HeadWeights], integers.Select(v => v.Initializer!.ElementCount).Order());
        Assert.DoesNotContain(graph.Initializers, v => v.Initializer!.DataType == DataType.Float && v.Initializer.ElementCount >= HeadWeights / 2);
        foreach (var conv in graph.Nodes.Where(n => n.OpType == "Conv"))
            Assert.Equal("DequantizeLinear", conv.Inputs[1]!.Producer?.OpType);

        // It runs, and each level's output is close to the float model's (a 4-bit budget on random weights).
        using var session = InferenceSession.Create(result.Targets[0].ModelPath);
        var image = new NamedTensor("images", TensorData.FromFloats(TestModels.Images(1, 9), [1, 3, 16, 16]));
        var outputs = session.Run([image]);
        Assert.Equal([1L, 8, 16, 16], outputs.Single(o => o.Name == "logits_p3").Data.Shape);
        Assert.Equal([1L, 8, 8, 8], outputs.Single(o => o.Name == "logits_p4").Data.Shape);
        Assert.InRange(report.Distortion.Measured, 1e-6, 0.1);
        Assert.True(report.Sizes.FloatWeightBytes == 4L * (16 * 3 * 9 + 16 * 16 * 9 * 2 + 8 * 16 * 9), $"float bytes {report.Sizes.FloatWeightBytes}");
    }

    [Fact]
    public void ASharedWeightKeptFloatIsStoredOnce()
    {
        var result = Compile("excluded", units: new() { Exclude = ["head.*"] });

        var report = result.Targets.Single().Report;
        Assert.Equal(["head.p3", "head.p4"], report.Skipped.Select(s => s.Name));
        // Both levels' head Convs read one float weight, as in the input model.
        var model = ModelIO.Load(result.Targets[0].ModelPath);
        var heads = model.Graph.Nodes.Where(n => n.Name is "head.p3" or "head.p4").ToList();
        Assert.Equal(2, heads.Count);
        Assert.Same(heads[0].Inputs[1], heads[1].Inputs[1]);
        Assert.Single(model.Graph.Initializers, v => v.Initializer!.DataType == DataType.Float && v.Initializer.ElementCount == HeadWeights);
        using var session = InferenceSession.Create(result.Targets[0].ModelPath);
        Assert.Equal(2, session.Run([new NamedTensor("images", TensorData.FromFloats(TestModels.Images(1, 9), [1, 3, 16, 16]))]).Count);
    }

    [Fact]
    public void ChannelGroupsOfTiedLayersAreTiedGroupByGroup()
    {
        var result = Compile("groups", target: 3, units: new() { Granularity = Granularity.Group, GroupSize = 8 });
        var report = result.Targets.Single().Report;

        // stem, down and head have 16 channels (2 groups each), cls 8 (1): 7 units; the p4 copies' groups are tied.
        Assert.Equal(7, report.Units.Count);
        Assert.DoesNotContain(report.Units, u => u.Layer.EndsWith(".p4", StringComparison.Ordinal));
        Assert.Equal(["head.p3[0:8]", "head.p3[8:16]"], report.Curves.Where(c => c.Name.StartsWith("head.p4", StringComparison.Ordinal)).Select(c => c.TiedTo));
        Assert.Equal("head.p3", report.Layers.Single(l => l.Layer == "head.p4").SharesWeightOf);
        Assert.Equal("cls.p3", report.Layers.Single(l => l.Layer == "cls.p4").SharesWeightOf);
        // Whatever containers the groups' widths need, the integers of the four weights are stored once.
        var model = ModelIO.Load(result.Targets[0].ModelPath);
        Assert.Equal(16L * 3 * 9 + HeadWeights * 2 + 8 * 16 * 9, model.Graph.Initializers
            .Where(v => v.Initializer!.DataType is not DataType.Float && v.Initializer.ElementCount > 16).Sum(v => v.Initializer!.ElementCount));
        using var session = InferenceSession.Create(result.Targets[0].ModelPath);
        Assert.Equal(2, session.Run([new NamedTensor("images", TensorData.FromFloats(TestModels.Images(1, 9), [1, 3, 16, 16]))]).Count);
    }

    [Fact]
    public void TheSpeedTargetRunsEverySharedApplicationOnIntegerKernels()
    {
        var result = Compile("speed", deploy: DeployTarget.Speed);
        var report = result.Targets.Single().Report;

        Assert.Equal(0, report.Deploy!.WeightDequantizeLeft);
        Assert.True(report.Deploy.IntegerKernels >= 4, $"integer kernels: {report.Deploy.IntegerKernels}");
        var model = ModelIO.Load(result.Targets[0].ModelPath);
        Assert.Equal([16L * 3 * 9, 8 * 16 * 9, HeadWeights, HeadWeights], model.Graph.Initializers
            .Where(v => v.Initializer!.DataType == DataType.Int8 && v.Initializer.ElementCount > 16).Select(v => v.Initializer!.ElementCount).Order());
        Assert.Equal("head.p3", report.Layers.Single(l => l.Layer == "head.p4").SharesWeightOf);
        using var session = InferenceSession.Create(result.Targets[0].ModelPath);
        Assert.Equal(2, session.Run([new NamedTensor("images", TensorData.FromFloats(TestModels.Images(1, 9), [1, 3, 16, 16]))]).Count);
        Assert.InRange(report.Distortion.Measured, 1e-6, 0.1);
    }
}
