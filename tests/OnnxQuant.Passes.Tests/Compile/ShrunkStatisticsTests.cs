using OnnxQuant.Passes.Compile;
using OnnxQuant.Passes.Quantization;
using OnnxQuant.Runtime;
using Attribute = OnnxQuant.Frontend.Attribute;

namespace OnnxQuant.Passes.Tests.Compile;

/// <summary>
/// A layer whose input rows are longer than the rows calibration keeps (24 samples: 528 rows; a 3x3 convolution over
/// 64 channels reads 576 values) has its second-order rounding statistics shrunk, says by how much in report.json and
/// names the remedy in a note; a layer with enough rows is not shrunk.
/// </summary>
public sealed class ShrunkStatisticsTests : IDisposable
{
    private readonly string _root = Path.Combine(Path.GetTempPath(), $"onnxquant-shrunk-{Guid.NewGuid():N}");

    public void Dispose()
    {
        if (Directory.Exists(_root))
            Directory.Delete(_root, true);
    }

    [Fact]
    public void AWideLayerWithFewerRowsThanInputsIsShrunkAndSaysSo()
    {
        var net = new Net(seed: 31);
        var x = net.BatchInput("images", 3, 16, 16);
        var narrow = net.Op("Conv", [x, net.Random("narrow.weight", [64, 3, 3, 3], 0.3f), net.Random("narrow.bias", [64], 0.1f)],
            Attribute.FromInts("pads", [1, 1, 1, 1]));
        narrow.Producer!.Name = "narrow";
        var wide = net.Op("Conv", [net.Op("Relu", [narrow]), net.Random("wide.weight", [32, 64, 3, 3], 0.05f), net.Random("wide.bias", [32], 0.1f)],
            Attribute.FromInts("pads", [1, 1, 1, 1]), Attribute.FromInts("strides", [2, 2]));
        wide.Producer!.Name = "wide";
        wide.Name = "features";
        net.Output(wide);

        var result = TestModels.CompileImages(net.Model, _root, "wide", new CompileOptions
        {
            Allocation = new() { TargetBits = [4] }, Rewrite = new() { Compensation = Compensation.All },
        });
        var report = result.Targets[0].Report;
        var compensated = report.Compensated.ToDictionary(c => c.Layer);
        Assert.Equal(0, compensated["narrow"].Shrinkage);
        Assert.InRange(compensated["wide"].Shrinkage!.Value, 1e-3, 1.0);
        Assert.Contains(report.Notes, n => n.StartsWith("second-order rounding: 1 of 2 layer(s)", StringComparison.Ordinal)
            && n.Contains("'wide'", StringComparison.Ordinal) && n.Contains("--calib-samples, 24 now", StringComparison.Ordinal));
        var json = File.ReadAllText(Path.Combine(_root, "out-wide", "report.json"));
        Assert.Contains("\"shrinkage\"", json, StringComparison.Ordinal);
        using var session = InferenceSession.Create(result.Targets[0].ModelPath);
        var outputs = session.Run([new NamedTensor("images", TensorData.FromFloats(TestModels.Images(1, 5), [1, 3, 16, 16]))]);
        Assert.All(outputs[0].Data.ToFloats(), v => Assert.True(float.IsFinite(v)));
    }
}
