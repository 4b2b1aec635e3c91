using OnnxQuant.Data;
using OnnxQuant.Frontend;
using OnnxQuant.Passes.Compile;
using OnnxQuant.Runtime;
using Attribute = OnnxQuant.Frontend.Attribute;
using OnnxQuant.Passes.Pipeline;
using OnnxQuant.Passes.Curves;
using OnnxQuant.Passes.Units;
using OnnxQuant.Passes.Quantization;
using OnnxQuant.Passes.Artifact;

namespace OnnxQuant.Passes.Tests.Compile;

/// <summary>
/// INT2 containers need opset 25, where RoiAlign resolves to version 22, which ONNX Runtime 1.30 has no kernel for
/// (as in every torchvision Mask-RCNN export). The compile must still succeed: same 2-bit values, INT4 containers at
/// opset 21, and a note that says so. And ONNX Runtime 1.32 fuses DequantizeLinear(INT2) -> Conv -> QuantizeLinear
/// into QLinearConv, which takes no INT2, and refuses the model: only that layer moves to INT4.
/// </summary>
public sealed class Int2FallbackTests : IDisposable
{
    private readonly string _root = Path.Combine(Path.GetTempPath(), $"onnxquant-int2-{Guid.NewGuid():N}");

    public void Dispose() => Directory.Delete(_root, true);

    private static Model ConvThenRoiAlign()
    {
        var net = new Net(17, seed: 5);
        var x = net.BatchInput("images", 3, 16, 16);
        var conv = net.Op("Conv", [x, net.Random("backbone.conv.weight", [16, 3, 3, 3], 0.4f)], Attribute.FromInts("pads", [1, 1, 1, 1]));
        var relu = net.Op("Relu", [conv]);
        var rois = net.Init("rois", [2, 4], [0, 0, 8, 8, 4, 4, 15, 15]);
        var batch = net.Graph.AddInitializer("roi_batch", Tensor.FromInt64s("roi_batch", [2], [0, 0]));
        var pooled = net.Op("RoiAlign", [relu, rois, batch], Attribute.FromInt("output_height", 2), Attribute.FromInt("output_width", 2),
            Attribute.FromString("coordinate_transformation_mode", "output_half_pixel"));
        pooled.Name = "pooled";
        net.Output(pooled);
        return net.Model;
    }

    /// <summary>x -> Conv "first" -> Relu -> Conv "second" (graph output): the first's output is quantized for the
    /// second, so ONNX Runtime fuses the first into QLinearConv; the second's output stays float.</summary>
    private static Model TwoConvs()
    {
        var net = new Net(17, seed: 6);
        var x = net.BatchInput("images", 3, 16, 16);
        var first = net.Op("Conv", [x, net.Random("first.weight", [16, 3, 3, 3], 0.4f)], Attribute.FromInts("pads", [1, 1, 1, 1]));
        first.Producer!.Name = "first";
        var relu = net.Op("Relu", [first]);
        var second = net.Op("Conv", [relu, net.Random("second.weight", [8, 16, 3, 3], 0.2f)], Attribute.FromInts("pads", [1, 1, 1, 1]));
        second.Producer!.Name = "second";
        second.Name = "features";
        net.Output(second);
        return net.Model;
    }

    /// <summary>Every unit at 2 bits (candidates 2 and 4), 16 calibration and 8 verification samples of 3x16x16.</summary>
    private CompileResult CompileAtTwoBits(Model model, string name) =>
        TestModels.CompileImages(model, _root, name,
            new CompileOptions { Allocation = new() { TargetBits = [2] }, Curves = new() { CandidateBits = [2, 4], CacheDir = null }, Data = new() { CalibSamples = 16, VerifySamples = 8 } });

    /// <summary>Checks that the model's largest INT4 initializer (a 16x3x3x3 weight; its zero point is INT4 too) holds
    /// 2-bit values, runs the model on one image and returns the output's shape.</summary>
    private static long[] RunWithTwoBitValuesInInt4(string path)
    {
        var model = ModelIO.Load(path);
        var weight = model.Graph.Initializers.Where(v => v.Initializer!.DataType == DataType.Int4)
            .MaxBy(v => v.Initializer!.ElementCount)!.Initializer!.ToFloatArray();
        Assert.Equal(16 * 3 * 3 * 3, weight.Length);
        Assert.All(weight, v => Assert.InRange(v, -2, 1));
        using var session = InferenceSession.Create(path);
        return session.Run([new NamedTensor("images", TensorData.FromFloats(TestModels.Images(1, 9), [1, 3, 16, 16]))]).Single().Data.Shape;
    }

    [Fact]
    public void OnlyTheLayersTheRuntimeFusesIntoKernelsWithoutInt2MoveToInt4()
    {
        var result = CompileAtTwoBits(TwoConvs(), "convs");

        var report = result.Targets.Single().Report;
        Assert.All(report.Units, u => Assert.Equal(2, u.Bits));
        Assert.Equal(25, report.Opset);
        Assert.Equal(DataType.Int4, report.Layers.Single(l => l.Layer == "first").Container);
        Assert.Equal(DataType.Int2, report.Layers.Single(l => l.Layer == "second").Container);
        Assert.Contains(report.Notes, n => n.Contains("fuses 1 layer(s)") && n.Contains("first"));
        Assert.DoesNotContain(report.Notes, n => n.Contains("INT4 containers instead"));

        // The artifact runs, and the first layer's INT4 weight holds 2-bit values.
        Assert.Equal([1L, 8, 16, 16], RunWithTwoBitValuesInInt4(result.Targets[0].ModelPath));
    }

    [Fact]
    public void TwoBitLayersFallBackToInt4WhenTheRuntimeRefusesOpset25()
    {
        var result = CompileAtTwoBits(ConvThenRoiAlign(), "roi");

        var report = result.Targets.Single().Report;
        Assert.Equal(2, report.Units.Single().Bits);
        Assert.Equal(21, report.Opset);
        var layer = report.Layers.Single();
        Assert.Equal(DataType.Int4, layer.Container);
        Assert.Equal(2, layer.MaxBits);
        // Known before calibration (the float model raised to opset 25 does not load): said once, never tried.
        Assert.Single(report.Notes, n => n.Contains("INT4 containers") && n.Contains("RoiAlign"));

        // The written model holds 2-bit values in its INT4 weight and runs.
        Assert.Equal([2L, 16, 2, 2], RunWithTwoBitValuesInInt4(result.Targets[0].ModelPath));
        Assert.True(report.Distortion.Measured < 1, $"measured distortion {report.Distortion.Measured}");
    }
}
