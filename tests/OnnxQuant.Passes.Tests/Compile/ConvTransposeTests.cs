using OnnxQuant.Frontend;
using OnnxQuant.Passes.Compile;
using OnnxQuant.Passes.Quantization;
using OnnxQuant.Passes.Rewrite;
using OnnxQuant.Runtime;
using Attribute = OnnxQuant.Frontend.Attribute;

namespace OnnxQuant.Passes.Tests.Compile;

/// <summary>
/// Upsampling deconvolutions (a Mask R-CNN's mask head, a segmentation decoder, CenterNet's neck) are layers: their
/// weight [C_in, C_out, k, k] is quantized per output channel (axis 1) in the size artifact, with curves measured at
/// every width (no closed-form rows) and rounding to nearest; a speed artifact keeps them float (no integer kernel).
/// </summary>
public sealed class ConvTransposeTests : IDisposable
{
    private readonly string _root = Path.Combine(Path.GetTempPath(), $"onnxquant-deconv-{Guid.NewGuid():N}");

    public void Dispose()
    {
        if (Directory.Exists(_root))
            Directory.Delete(_root, true);
    }

    /// <summary>images -> Conv -> Relu -> ConvTranspose (x2) -> Relu -> Conv, the deconvolution grouped or not.</summary>
    private static Model Decoder(int group = 1, bool overlapping = true)
    {
        var net = new Net(seed: 12);
        var x = net.BatchInput("images", 3, 16, 16);
        var c1 = net.Op("Relu", [net.Op("Conv", [x, net.Random("enc.weight", [8, 3, 3, 3], 0.4f), net.Random("enc.bias", [8], 0.1f)],
            Attribute.FromInts("pads", [1, 1, 1, 1]), Attribute.FromInts("strides", [2, 2]))]);
        // 4x4 stride 2 padded 1 (taps overlap), or 2x2 stride 2 (Mask R-CNN's mask head: they do not).
        var k = overlapping ? 4 : 2;
        var up = net.Op("ConvTranspose", [c1, net.Random("up.weight", [8, 6 / group, k, k], 0.3f), net.Random("up.bias", [6], 0.1f)],
            Attribute.FromInts("pads", overlapping ? [1, 1, 1, 1] : [0, 0, 0, 0]), Attribute.FromInts("strides", [2, 2]), Attribute.FromInt("group", group));
        up.Producer!.Name = "up";
        var head = net.Op("Conv", [net.Op("Relu", [up]), net.Random("head.weight", [4, 6, 3, 3], 0.3f)], Attribute.FromInts("pads", [1, 1, 1, 1]));
        head.Name = "map";
        net.Output(head);
        return net.Model;
    }

    [Fact]
    public void ADeconvolutionIsQuantizedPerOutputChannelAndRunsInOnnxRuntime()
    {
        var result = TestModels.CompileImages(Decoder(), _root, "size", new CompileOptions { Allocation = new() { TargetBits = [8, 4] } });
        foreach (var target in result.Targets)
        {
            var report = target.Report;
            Assert.Contains(report.Units, u => u.Layer == "up" && u.OpType == "ConvTranspose");
            Assert.Contains(report.Notes, n => n.Contains("'up'", StringComparison.Ordinal) && n.Contains("measured at every width", StringComparison.Ordinal));
            var model = ModelIO.Load(target.ModelPath);
            var deconv = model.Graph.Nodes.Single(n => n.OpType == "ConvTranspose");
            var dq = deconv.Inputs[1]!.Producer!;
            Assert.Equal("DequantizeLinear", dq.OpType);
            Assert.Equal(1, dq.GetInt("axis", 1));
            Assert.Equal([6], dq.Inputs[1]!.ConstantValue!.GetDims());  // a scale per output channel
            using var session = InferenceSession.Create(target.ModelPath);
            var outputs = session.Run([new NamedTensor("images", TensorData.FromFloats(TestModels.Images(2, 5), [2, 3, 16, 16]))]);
            Assert.All(outputs[0].Data.ToFloats(), v => Assert.True(float.IsFinite(v)));
        }
        // 8-bit weights and activations stay close to float; 4 bits cost more.
        Assert.InRange(result.Targets[0].Report.Distortion.Measured, 0, 1e-2);
        Assert.True(result.Targets[1].Report.Distortion.Measured > result.Targets[0].Report.Distortion.Measured);
    }

    /// <summary>
    /// Taps that never overlap give the deconvolution a closed form: its curve comes from its input rows (no
    /// measurement at every width) and its input is priced; it is still rounded to nearest (no compensation).
    /// </summary>
    [Fact]
    public void ANonOverlappingDeconvolutionHasAClosedFormAndAPricedInput()
    {
        var result = TestModels.CompileImages(Decoder(overlapping: false), _root, "taps", new CompileOptions
        {
            Allocation = new() { TargetBits = [8, 4] }, Rewrite = new() { Compensation = Compensation.All },
        });
        foreach (var target in result.Targets)
        {
            var report = target.Report;
            Assert.Contains(report.Units, u => u.Layer == "up" && u.OpType == "ConvTranspose");
            Assert.DoesNotContain(report.Notes, n => n.Contains("'up'", StringComparison.Ordinal));
            Assert.Contains(report.CurveGains, g => g.Unit == "up" && g.Local == "full" && g.MeasuredOverPredicted is > 0.7 and < 1.4);
            Assert.Contains(report.Activations!.Tensors, t => t.Layers.Contains("up"));
            Assert.DoesNotContain(report.Activations.Unpriced, u => u.Layer == "up");
            Assert.DoesNotContain(report.Compensated, c => c.Layer == "up");
            using var session = InferenceSession.Create(target.ModelPath);
            var outputs = session.Run([new NamedTensor("images", TensorData.FromFloats(TestModels.Images(2, 5), [2, 3, 16, 16]))]);
            Assert.All(outputs[0].Data.ToFloats(), v => Assert.True(float.IsFinite(v)));
        }
        Assert.True(result.Targets[1].Report.Distortion.Measured > result.Targets[0].Report.Distortion.Measured);
    }

    [Fact]
    public void ASpeedArtifactKeepsTheDeconvolutionFloatAndAGroupedOneIsSkipped()
    {
        var speed = TestModels.CompileImages(Decoder(), _root, "speed", new CompileOptions
        {
            Allocation = new() { TargetBits = [8] }, Rewrite = new() { Deploy = DeployTarget.Speed },
        });
        var report = speed.Targets[0].Report;
        Assert.DoesNotContain(report.Units, u => u.OpType == "ConvTranspose");
        Assert.Contains(report.Skipped, s => s.Name == "up" && s.Reason.Contains("no integer ConvTranspose kernel", StringComparison.Ordinal));
        var deconv = ModelIO.Load(speed.Targets[0].ModelPath).Graph.Nodes.Single(n => n.OpType == "ConvTranspose");
        Assert.NotNull(deconv.Inputs[1]!.ConstantValue);

        var grouped = TestModels.CompileImages(Decoder(group: 2), _root, "grouped", new CompileOptions { Allocation = new() { TargetBits = [8] } });
        Assert.Contains(grouped.Targets[0].Report.Skipped, s => s.Name == "up" && s.Reason.Contains("grouped ConvTranspose", StringComparison.Ordinal));
    }
}
