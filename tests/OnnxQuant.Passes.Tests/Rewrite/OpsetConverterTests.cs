using OnnxQuant.Frontend;
using OnnxQuant.Passes.Rewrite;
using Attribute = OnnxQuant.Frontend.Attribute;

namespace OnnxQuant.Passes.Tests.Rewrite;

/// <summary>
/// Raising the opset must not change what the model computes: the original model at its old opset and the converted
/// one are both run in ONNX Runtime and compared (1e-6 of the largest magnitude, or exactly).
/// </summary>
public class OpsetConverterTests
{
    private const float Tolerance = 1e-6f;

    private static (float[][] Before, float[][] After, Model Converted) RunBoth(Model model, long target, params (string, long[], float[])[] inputs)
    {
        var before = Net.Run(model, inputs);
        var converted = model.Clone();
        OpsetConverter.Raise(converted, target);
        Assert.Equal(target, converted.OpsetImports.Default);
        var after = Net.Run(converted, inputs);
        Assert.Equal(before.Length, after.Length);
        return (before, after, converted);
    }

    /// <summary>Opset &lt; 13 semantics by hand: flatten to [prod(dims[:axis]), prod(dims[axis:])], normalize rows.</summary>
    private static float[] LegacySoftmax(float[] x, long[] shape, int axis)
    {
        if (axis < 0)
            axis += shape.Length;
        var inner = (int)shape.Skip(axis).Aggregate(1L, (a, b) => a * b);
        var y = new float[x.Length];
        for (var row = 0; row < x.Length / inner; row++)
        {
            var max = x.Skip(row * inner).Take(inner).Max();
            double sum = 0;
            for (var i = 0; i < inner; i++)
                sum += Math.Exp(x[row * inner + i] - max);
            for (var i = 0; i < inner; i++)
                y[row * inner + i] = (float)(Math.Exp(x[row * inner + i] - max) / sum);
        }
        return y;
    }

    [Theory]
    [InlineData("Softmax", 1L)]
    [InlineData("Softmax", null)] // the opset-11 default axis is 1
    [InlineData("Softmax", 0L)]
    [InlineData("Softmax", -2L)]
    [InlineData("Softmax", 2L)]
    [InlineData("Softmax", -1L)]
    [InlineData("LogSoftmax", 1L)]
    [InlineData("Hardmax", 1L)]
    [InlineData("Hardmax", 0L)]
    public void SoftmaxFamilyKeepsTheTwoDimensionalCoercion(string op, long? axis)
    {
        long[] shape = [2, 3, 4];
        var net = new Net(opset: 11);
        var x = net.Input("x", shape);
        var y = axis is { } a ? net.Op(op, [x], Attribute.FromInt("axis", a)) : net.Op(op, [x]);
        net.Output(y);
        var data = Net.RandomData(24, seed: 5, scale: 3f);
        var (before, after, converted) = RunBoth(net.Model, 13, ("x", shape, data));
        Net.AssertClose(before[0], after[0], Tolerance);
        Assert.Equal(y.Name, converted.Graph.Outputs.Single().Name);
        if (op == "Softmax")
        {
            // The original really normalizes over the flattened trailing block, so the case is not trivial.
            var legacy = LegacySoftmax(data, shape, (int)(axis ?? 1));
            Net.AssertClose(legacy, before[0], Tolerance);
        }
    }

    [Fact]
    public void SoftmaxOnASymbolicBatchIsRestoredToTheRuntimeShape()
    {
        var net = new Net(opset: 12);
        var x = net.BatchInput("x", 3, 4);
        net.Output(net.Op("Softmax", [x], Attribute.FromInt("axis", 1)));
        foreach (var batch in new long[] { 1, 5 })
        {
            var data = Net.RandomData((int)batch * 12, seed: (int)batch, scale: 2f);
            var (before, after, _) = RunBoth(net.Model, 13, ("x", [batch, 3, 4], data));
            Net.AssertClose(LegacySoftmax(data, [batch, 3, 4], 1), before[0], Tolerance);
            Net.AssertClose(before[0], after[0], Tolerance);
        }
    }

    [Theory]
    [InlineData(11L, 13L)]
    [InlineData(11L, 18L)]
    public void SplitAttributeBecomesAnInput(long from, long target)
    {
        var net = new Net(opset: from);
        var x = net.Input("x", 2, 10);
        foreach (var o in net.OpMulti("Split", [x], 3, Attribute.FromInt("axis", 1), Attribute.FromInts("split", [2, 3, 5])))
            net.Output(o);
        var (before, after, converted) = RunBoth(net.Model, target, ("x", [2, 10], Net.RandomData(20, seed: 6)));
        for (var i = 0; i < 3; i++)
            Assert.Equal(before[i], after[i]);
        Assert.Equal([4, 6, 10], before.Select(b => b.Length));
        var split = converted.Graph.Nodes.Single(n => n.OpType == "Split");
        Assert.Null(split.GetAttribute("split"));
        Assert.Equal([2L, 3, 5], split.Inputs[1]!.Initializer!.ToInt64Array());
        Assert.Null(split.GetAttribute("num_outputs")); // the split input fixes the sizes
    }

    [Theory]
    [InlineData(11L)]
    [InlineData(13L)]
    public void EqualSplitGetsNumOutputsAt18(long from)
    {
        var net = new Net(opset: from);
        var x = net.Input("x", 9, 2);
        foreach (var o in net.OpMulti("Split", [x], 3, Attribute.FromInt("axis", 0)))
            net.Output(o);
        var (before, after, converted) = RunBoth(net.Model, 18, ("x", [9, 2], Net.RandomData(18, seed: 7)));
        for (var i = 0; i < 3; i++)
            Assert.Equal(before[i], after[i]);
        var split = converted.Graph.Nodes.Single(n => n.OpType == "Split");
        Assert.Equal(3L, split.GetInt("num_outputs", -1));
    }

    [Fact]
    public void SplitWithAnInputAt13IsLeftAlone()
    {
        var net = new Net(opset: 13);
        var x = net.Input("x", 2, 10);
        foreach (var o in net.OpMulti("Split", [x, net.Ints("sizes", 4, 6)], 2, Attribute.FromInt("axis", 1)))
            net.Output(o);
        var (before, after, converted) = RunBoth(net.Model, 18, ("x", [2, 10], Net.RandomData(20, seed: 8)));
        Assert.Equal(before[0], after[0]);
        Assert.Equal(before[1], after[1]);
        Assert.Null(converted.Graph.Nodes.Single(n => n.OpType == "Split").GetAttribute("num_outputs"));
    }

    [Theory]
    [InlineData("ReduceSum", 11L, 13L)]
    [InlineData("ReduceSum", 11L, 18L)]
    [InlineData("ReduceMean", 11L, 18L)]
    [InlineData("ReduceMean", 13L, 18L)]
    [InlineData("ReduceMax", 13L, 18L)]
    [InlineData("ReduceMin", 13L, 18L)]
    [InlineData("ReduceProd", 13L, 18L)]
    [InlineData("ReduceL1", 13L, 18L)]
    [InlineData("ReduceL2", 13L, 18L)]
    [InlineData("ReduceLogSum", 13L, 18L)]
    [InlineData("ReduceLogSumExp", 13L, 18L)]
    [InlineData("ReduceSumSquare", 13L, 18L)]
    public void ReduceAxesAttributeBecomesAnInput(string op, long from, long target)
    {
        long[] shape = [2, 3, 4];
        var data = Net.RandomData(24, seed: 9, scale: 0.5f).Select(v => v + 1f).ToArray(); // positive: ReduceLogSum
        foreach (var keepdims in new[] { 0L, 1L })
        {
            var net = new Net(opset: from);
            var x = net.Input("x", shape);
            net.Output(net.Op(op, [x], Attribute.FromInts("axes", [0, 2]), Attribute.FromInt("keepdims", keepdims)));
            var (before, after, converted) = RunBoth(net.Model, target, ("x", shape, data));
            Assert.Equal(3, before[0].Length);
            Net.AssertClose(before[0], after[0], Tolerance);
            var node = converted.Graph.Nodes.Single(n => n.OpType == op);
            Assert.Null(node.GetAttribute("axes"));
            Assert.Equal([0L, 2], node.Inputs[1]!.Initializer!.ToInt64Array());
        }
    }

    [Fact]
    public void ReduceWithoutAxesStillReducesEverything()
    {
        var net = new Net(opset: 13);
        var x = net.Input("x", 2, 3);
        net.Output(net.Op("ReduceMean", [x], Attribute.FromInt("keepdims", 0)));
        var data = Net.RandomData(6, seed: 10);
        var (before, after, _) = RunBoth(net.Model, 18, ("x", [2, 3], data));
        Assert.Equal(data.Average(), before[0].Single(), 6);
        Net.AssertClose(before[0], after[0], Tolerance);
    }

    [Fact]
    public void SqueezeAndUnsqueezeAxesBecomeInputsAt13()
    {
        var net = new Net(opset: 11);
        var x = net.Input("x", 2, 1, 3);
        var squeezed = net.Op("Squeeze", [x], Attribute.FromInts("axes", [1]));
        net.Output(net.Op("Unsqueeze", [squeezed], Attribute.FromInts("axes", [0, 3])));
        var data = Net.RandomData(6, seed: 11);
        var (before, after, converted) = RunBoth(net.Model, 13, ("x", [2, 1, 3], data));
        Assert.Equal(data, before[0]);
        Assert.Equal(before[0], after[0]);
        Assert.All(converted.Graph.Nodes, n => Assert.Null(n.GetAttribute("axes")));
    }

    [Fact]
    public void UnconvertibleOperatorIsRefusedNamingItBeforeAnythingChanges()
    {
        var net = new Net(opset: 8);
        var x = net.Input("x", 1, 2, 3, 3);
        var relu = net.Op("Relu", [x]);
        net.Output(net.Op("Unsqueeze", [net.OpMulti("BatchNormalization", [relu, net.Random("s", [2]), net.Random("b", [2]),
            net.Random("m", [2]), net.Random("v", [2], 0.1f, 1f)], 1, Attribute.FromInt("spatial", 0))[0]], Attribute.FromInts("axes", [0])));
        var before = ModelIO.ToBytes(net.Model);
        var error = Assert.Throws<CompileException>(() => OpsetConverter.Raise(net.Model, 21));
        Assert.Contains("BatchNormalization", error.Message);
        Assert.Contains("opset 8", error.Message);
        Assert.Contains("spatial = 0", error.Message);
        Assert.Equal(before, ModelIO.ToBytes(net.Model));
    }

    [Fact]
    public void Opset7UpsampleBecomesAnAsymmetricResizeWithTheSameOutput()
    {
        var net = new Net(opset: 7);
        var x = net.Input("x", 1, 1, 2, 3);
        net.Output(net.Op("Upsample", [x], Attribute.FromString("mode", "nearest"), Attribute.FromFloats("scales", [1f, 1f, 2f, 3f])));
        var data = Net.RandomData(6, 4);
        var expected = Net.Run(net.Model, ("x", [1, 1, 2, 3], data))[0];
        OpsetConverter.Raise(net.Model, 21);
        var resize = Assert.Single(net.Graph.Nodes);
        Assert.Equal("Resize", resize.OpType);
        Assert.Equal("asymmetric", resize.GetString("coordinate_transformation_mode", ""));
        Assert.Equal(expected, Net.Run(net.Model, ("x", [1, 1, 2, 3], data))[0]);
    }
}
