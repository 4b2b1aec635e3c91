using OnnxQuant.Frontend;
using OnnxQuant.Passes.Compile;
using OnnxQuant.Passes.Quantization;
using OnnxQuant.Runtime;
using Attribute = OnnxQuant.Frontend.Attribute;

namespace OnnxQuant.Passes.Tests.Compile;

/// <summary>
/// 1-D convolutions (audio and sequence heads, temporal blocks) and 3-D ones (video, volumes) form input rows like 2-D
/// ones: second-order rounding, closed-form local errors and the activations' price reach them, where they used to get
/// rounding to nearest and curves measured at every width.
/// </summary>
public sealed class ConvRankTests : IDisposable
{
    private readonly string _root = Path.Combine(Path.GetTempPath(), $"onnxquant-convrank-{Guid.NewGuid():N}");

    public void Dispose()
    {
        if (Directory.Exists(_root))
            Directory.Delete(_root, true);
    }

    /// <summary>images [N,3,16,16] reshaped to a sequence [N,48,16] or a volume [N,3,4,4,16], then two convolutions of
    /// that rank (padded, strided, dilated) with a ReLU between them.</summary>
    private static Model Net(int rank)
    {
        var net = new Net(seed: 21);
        var x = net.BatchInput("images", 3, 16, 16);
        Value c1, c2;
        if (rank == 1)
        {
            var seq = net.Op("Reshape", [x, net.Ints("seq.shape", 0, 48, 16)]);
            c1 = net.Op("Conv", [seq, net.Random("c1.weight", [24, 48, 3], 0.15f), net.Random("c1.bias", [24], 0.1f)],
                Attribute.FromInts("pads", [1, 1]));
            c2 = net.Op("Conv", [net.Op("Relu", [c1]), net.Random("c2.weight", [16, 24, 5], 0.2f), net.Random("c2.bias", [16], 0.1f)],
                Attribute.FromInts("pads", [3, 1]), Attribute.FromInts("strides", [2]), Attribute.FromInts("dilations", [2]));
        }
        else
        {
            var volume = net.Op("Reshape", [x, net.Ints("volume.shape", 0, 3, 4, 4, 16)]);
            c1 = net.Op("Conv", [volume, net.Random("c1.weight", [8, 3, 3, 3, 3], 0.3f), net.Random("c1.bias", [8], 0.1f)],
                Attribute.FromInts("pads", [1, 1, 1, 1, 1, 1]));
            c2 = net.Op("Conv", [net.Op("Relu", [c1]), net.Random("c2.weight", [6, 4, 1, 3, 3], 0.3f)], Attribute.FromInt("group", 2),
                Attribute.FromInts("pads", [0, 1, 1, 0, 1, 1]), Attribute.FromInts("strides", [1, 1, 2]));
        }
        c1.Producer!.Name = "c1";
        c2.Producer!.Name = "c2";
        c2.Name = "out";
        net.Output(c2);
        return net.Model;
    }

    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    public void ConvolutionsOfAnyRankAreCompensatedAndPriced(int rank)
    {
        var result = TestModels.CompileImages(Net(rank), _root, $"conv{rank}d", new CompileOptions
        {
            Allocation = new() { TargetBits = [8, 4] }, Rewrite = new() { Compensation = Compensation.All },
        });
        foreach (var target in result.Targets)
        {
            var report = target.Report;
            Assert.Equal(["c1", "c2"], report.Units.Select(u => u.Layer).Order().ToArray());
            // Every convolution went through second-order rounding, none fell back to the diagonal proxy.
            Assert.Equal(["c1", "c2"], report.Compensated.Where(c => c.Gptq).Select(c => c.Layer).Order().ToArray());
            Assert.DoesNotContain(report.Notes, n => n.Contains("no closed-form local error", StringComparison.Ordinal));
            Assert.NotNull(report.Activations);
            Assert.True(report.Activations!.Priced);
            Assert.Empty(report.Activations.Unpriced);

            using var session = InferenceSession.Create(target.ModelPath);
            var outputs = session.Run([new NamedTensor("images", TensorData.FromFloats(TestModels.Images(2, 5), [2, 3, 16, 16]))]);
            Assert.All(outputs[0].Data.ToFloats(), v => Assert.True(float.IsFinite(v)));
        }
        var w8 = result.Targets[0].Report.Distortion;
        Assert.InRange(w8.Measured, 1e-7, 1e-2);
        // With the activations priced the prediction holds the measured W8A8 distortion within 3x either way.
        Assert.InRange(w8.Predicted / w8.Measured, 1 / 3.0, 3.0);
        Assert.True(result.Targets[1].Report.Distortion.Measured > w8.Measured);
    }
}
