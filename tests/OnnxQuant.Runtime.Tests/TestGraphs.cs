using OnnxQuant.Frontend;

namespace OnnxQuant.Runtime.Tests;

/// <summary>Small models built in code with the frontend IR and serialized for ONNX Runtime.</summary>
internal static class TestGraphs
{
    /// <summary>x -> Identity -> y for one element type, shape [N, 3] with N symbolic.</summary>
    public static byte[] Identity(DataType type)
    {
        var g = new Graph("identity");
        var x = new Value("x", new TensorType(type, new Shape([Dim.Symbolic("N"), 3])));
        g.AddInput(x);
        var node = new Node("Identity", [x], ["y"], name: "id");
        g.AddNode(node);
        node.Outputs[0].Type = new TensorType(type, new Shape([Dim.Symbolic("N"), 3]));
        g.AddOutput(node.Outputs[0]);
        var model = new Model(g) { IrVersion = 10 };
        model.OpsetImports.Default = 21;
        return ModelIO.ToBytes(model);
    }

    /// <summary>x, y -> Add -> z with float shape [rows, cols].</summary>
    public static byte[] Add(int rows, int cols)
    {
        var g = new Graph("add");
        var type = new TensorType(DataType.Float, Shape.Of(rows, cols));
        var x = new Value("x", type);
        var y = new Value("y", type);
        g.AddInput(x);
        g.AddInput(y);
        var node = new Node("Add", [x, y], ["z"], name: "add");
        g.AddNode(node);
        node.Outputs[0].Type = type;
        g.AddOutput(node.Outputs[0]);
        var model = new Model(g) { IrVersion = 8 };
        model.OpsetImports.Default = 17;
        return ModelIO.ToBytes(model);
    }

    /// <summary>
    /// x [N, 3, 8, 8] -> Conv(4 filters, 3x3, pad 1) -> c -> Relu -> y. With <paramref name="exposeConv"/> the
    /// intermediate c is also a graph output, as calibration instruments models.
    /// </summary>
    public static byte[] ConvRelu(bool exposeConv)
    {
        var g = new Graph("conv_relu");
        var x = new Value("x", new TensorType(DataType.Float, new Shape([Dim.Symbolic("N"), 3, 8, 8])));
        g.AddInput(x);
        var w = g.AddInitializer("w", Tensor.FromFloats("w", [4, 3, 3, 3], Enumerable.Range(0, 108).Select(i => (i % 7 - 3) * 0.1f).ToArray()));
        var b = g.AddInitializer("b", Tensor.FromFloats("b", [4], [0.1f, -0.2f, 0.3f, -0.4f]));
        var conv = new Node("Conv", [x, w, b], ["c"], name: "conv0",
            attributes: [Frontend.Attribute.FromInts("pads", [1, 1, 1, 1]), Frontend.Attribute.FromInts("kernel_shape", [3, 3])]);
        g.AddNode(conv);
        var relu = new Node("Relu", [conv.Outputs[0]], ["y"], name: "relu0");
        g.AddNode(relu);
        var outType = new TensorType(DataType.Float, new Shape([Dim.Symbolic("N"), 4, 8, 8]));
        conv.Outputs[0].Type = outType;
        relu.Outputs[0].Type = outType;
        g.AddOutput(relu.Outputs[0]);
        if (exposeConv)
            g.AddOutput(conv.Outputs[0]);
        var model = new Model(g) { IrVersion = 8 };
        model.OpsetImports.Default = 17;
        return ModelIO.ToBytes(model);
    }
}
