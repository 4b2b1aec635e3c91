using OnnxQuant.Frontend;
using OnnxQuant.Passes.Compile;
using OnnxQuant.Passes.Quantization;
using OnnxQuant.Passes.Rewrite;
using OnnxQuant.Passes.Units;
using OnnxQuant.Runtime;
using Attribute = OnnxQuant.Frontend.Attribute;
using OnnxQuant.Passes.Pipeline;
using OnnxQuant.Passes.Curves;
using OnnxQuant.Passes.Artifact;

namespace OnnxQuant.Passes.Tests.Rewrite;

public class QdqRewriterTests
{
    private static (Model Model, float[] Weight) MatMulModel(long k, long n)
    {
        var net = new Net(opset: 17);
        var x = net.Input("x", 3, k);
        var w = net.Random("w", [k, n]);
        net.Output(net.Op("MatMul", [x, w]));
        return (net.Model, w.Initializer!.ToFloatArray());
    }

    private static float[] Reference(float[] x, float[] w, int m, int k, int n)
    {
        var y = new float[m * n];
        for (var i = 0; i < m; i++)
            for (var j = 0; j < n; j++)
            {
                double s = 0;
                for (var t = 0; t < k; t++)
                    s += x[i * k + t] * w[t * n + j];
                y[i * n + j] = (float)s;
            }
        return y;
    }

    [Theory]
    [InlineData(2, WeightFormat.Qdq, GraphOptimization.Disabled, 24, DataType.Int2)]
    [InlineData(2, WeightFormat.Qdq, GraphOptimization.All, 24, DataType.Int2)]
    [InlineData(2, WeightFormat.Qdq, GraphOptimization.All, 10, DataType.Int4)] // INT2 + 10 channels: ORT's fusion is wrong
    [InlineData(3, WeightFormat.Qdq, GraphOptimization.All, 10, DataType.Int4)]
    [InlineData(4, WeightFormat.Qdq, GraphOptimization.All, 10, DataType.Int4)]
    [InlineData(8, WeightFormat.Qdq, GraphOptimization.All, 10, DataType.Int8)]
    [InlineData(2, WeightFormat.MatMulNBits, GraphOptimization.All, 10, DataType.UInt8)]
    [InlineData(3, WeightFormat.MatMulNBits, GraphOptimization.All, 10, DataType.UInt8)]
    [InlineData(4, WeightFormat.MatMulNBits, GraphOptimization.All, 24, DataType.UInt8)]
    [InlineData(8, WeightFormat.MatMulNBits, GraphOptimization.All, 10, DataType.UInt8)]
    public void WeightOnlyRewriteEqualsFakeQuantInOrt(int bits, WeightFormat format, GraphOptimization optimization, int n, DataType container)
    {
        var (model, weight) = MatMulModel(48, n);
        var options = new CompileOptions { Calibration = new() { ActBits = 0 }, Rewrite = new() { Format = format, BlockSize = 16 } };
        var layer = UnitDiscovery.Discover(model, ["matmul_out"], options.Units).Layers.Single();
        var result = QdqRewriter.Apply(model, [new LayerPlan(layer, Enumerable.Repeat(bits, n).ToArray())], null, options.Rewrite, options.Calibration.ActBits);
        Assert.Equal(container, result.Layers[0].Container);
        Assert.Equal(48L * n * bits, result.Layers[0].IdealBits);
        var fake = QuantMath.FakeQuantizeWeight(weight, layer.Layout(format, 16), bits);
        var x = Net.RandomData(3 * 48, 8);
        var expected = Reference(x, fake, 3, 48, n);
        var options2 = new SessionOptions { Optimization = optimization }.WithConfig(SessionConfigKeys.QdqMatMulNBitsAccuracyLevel, "0");
        using var session = InferenceSession.Create(ModelIO.ToBytes(model), options2);
        var actual = session.Run([new NamedTensor("x", TensorData.FromFloats(x, [3, 48]))])[0].Data.ToFloats();
        Net.AssertClose(expected, actual, 1e-4f);
    }

    [Fact]
    public void MixedChannelBitsShareOneContainer()
    {
        var (model, weight) = MatMulModel(48, 24);
        var options = new CompileOptions { Calibration = new() { ActBits = 0 } };
        var layer = UnitDiscovery.Discover(model, ["matmul_out"], options.Units).Layers.Single();
        var bits = Enumerable.Range(0, 24).Select(c => c < 12 ? 2 : 4).ToArray();
        var result = QdqRewriter.Apply(model, [new LayerPlan(layer, bits)], null, options.Rewrite, options.Calibration.ActBits);
        Assert.Equal(DataType.Int4, result.Layers[0].Container);
        Assert.Equal(48L * 12 * 2 + 48L * 12 * 4, result.Layers[0].IdealBits);
        var dq = model.Graph.Nodes.Single(n => n.OpType == "DequantizeLinear");
        var values = dq.Inputs[0]!.Initializer!.ToFloatArray();
        for (var i = 0; i < values.Length; i++)
            Assert.InRange(values[i], i % 24 < 12 ? -2 : -8, i % 24 < 12 ? 1 : 7);
    }

    [Fact]
    public void ActivationQdqAndOpsetConversion()
    {
        var net = new Net(opset: 17);
        var x = net.Input("x", 2, 32);
        var mm = net.Op("MatMul", [x, net.Random("w", [32, 16])]);
        var mean = net.Op("ReduceMean", [mm], Attribute.FromInts("axes", [1]), Attribute.FromInt("keepdims", 1));
        net.Output(net.Op("Sub", [mm, mean]));
        var input = ("x", new long[] { 2, 32 }, Net.RandomData(64, 3));
        var before = Net.Run(net.Model, input);
        var options = new CompileOptions();
        var layer = UnitDiscovery.Discover(net.Model, [net.Graph.Outputs[0].Name], options.Units).Layers.Single();
        var table = new OnnxQuant.Passes.Calibration.CalibrationTable(OnnxQuant.Passes.Calibration.CalibrationMethod.MinMax, 1,
            [new("x", -1f, 1f)], []);
        var result = QdqRewriter.Apply(net.Model, [new LayerPlan(layer, Enumerable.Repeat(4, 16).ToArray())], table, options.Rewrite, options.Calibration.ActBits);
        Assert.Equal(21, result.Opset);
        Assert.Equal(1, result.ActivationPairs);
        Assert.Equal(1, net.Count("QuantizeLinear"));
        var reduce = net.Graph.Nodes.Single(n => n.OpType == "ReduceMean");
        Assert.Null(reduce.GetAttribute("axes"));
        Assert.Equal(2, reduce.Inputs.Count);
        var after = Net.Run(net.Model, input);
        Net.AssertClose(before[0], after[0], 0.25f); // 4-bit weights: close, not equal
    }
}
