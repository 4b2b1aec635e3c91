using OnnxQuant.Data;
using OnnxQuant.Runtime;

namespace OnnxQuant.Evaluation.Tests;

/// <summary>
/// The committed ONNX exports compute what PyTorch computed: each fixture ships the first eval image and PyTorch's
/// outputs under the graph's output names (models/fixtures/*.reference.npz, written by the export script), and
/// ONNX Runtime through our binding must reproduce every output. This is what catches exporter problems such as
/// RoiAlign's coordinate mode or attention ops traced differently.
/// </summary>
public sealed class ExportParityTests
{
    // Float32 kernels in PyTorch and ONNX Runtime sum in different orders; through a deep network that leaves
    // differences around 1e-5 of the values' scale.
    private const double Relative = 1e-3;
    private const double Absolute = 1e-4;

    [Theory]
    [InlineData("detr_small")]
    [InlineData("maskrcnn_swin_small")]
    public void OnnxRuntimeReproducesPyTorch(string fixture)
    {
        var reference = Npz.Read(RepoPaths.File($"models/fixtures/{fixture}.reference.npz"))
            .ToDictionary(a => a.Name, a => a.Array, StringComparer.Ordinal);
        using var session = InferenceSession.Create(RepoPaths.File($"models/fixtures/{fixture}.onnx"),
            new SessionOptions { IntraOpThreads = 1 });
        var input = session.Inputs.Single();
        var image = reference[input.Name];
        var outputs = session.Run([new NamedTensor(input.Name, TensorData.FromFloats(image.ToFloats(), image.Shape))]);

        Assert.Equal(session.Outputs.Select(o => o.Name).Order(StringComparer.Ordinal),
            reference.Keys.Where(k => k != input.Name).Order(StringComparer.Ordinal));
        foreach (var output in outputs)
        {
            var expected = reference[output.Name];
            Assert.True(expected.Shape.SequenceEqual(output.Data.Shape),
                $"{fixture}: output '{output.Name}' has shape [{string.Join(",", output.Data.Shape)}], PyTorch [{string.Join(",", expected.Shape)}]");
            var actual = output.Data.ToFloats();
            var want = expected.ToFloats();
            var scale = want.Length == 0 ? 0 : want.Max(v => Math.Abs((double)v));
            for (var i = 0; i < want.Length; i++)
            {
                var tolerance = Absolute + Relative * Math.Max(Math.Abs(want[i]), scale * 1e-2);
                Assert.True(Math.Abs(actual[i] - want[i]) <= tolerance,
                    $"{fixture}: output '{output.Name}'[{i}] is {actual[i]}, PyTorch {want[i]} (tolerance {tolerance:g3})");
            }
        }
    }
}
