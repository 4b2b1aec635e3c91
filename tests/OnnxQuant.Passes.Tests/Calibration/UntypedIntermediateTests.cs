using OnnxQuant.Frontend;
using OnnxQuant.Runtime;
using Attribute = OnnxQuant.Frontend.Attribute;

namespace OnnxQuant.Passes.Tests.Calibration;

/// <summary>
/// Intermediate tensors without value_info become graph outputs when the compiler instruments a model; their element
/// type must be the real one (a Cast to int64 feeding a Reshape, as real transformer exports have), or ONNX Runtime
/// refuses the model.
/// </summary>
public class UntypedIntermediateTests
{
    [Fact]
    public void ExposedIntermediatesGetTheirRealElementTypesAndTheModelLoads()
    {
        var g = new Graph("g");
        var x = new Value("x", new TensorType(DataType.Float, Shape.Of(1, 4, 2)));
        g.AddInput(x);
        var shape = new Node("Shape", [x], ["s"]);
        var toFloat = new Node("Cast", [shape.Outputs[0]], ["c"], attributes: [Attribute.FromInt("to", (long)DataType.Float)]);
        var toInt = new Node("Cast", [toFloat.Outputs[0]], ["d"], attributes: [Attribute.FromInt("to", (long)DataType.Int64)]);
        var reshape = new Node("Reshape", [x, toInt.Outputs[0]], ["r"]);
        var equal = new Node("Equal", [reshape.Outputs[0], reshape.Outputs[0]], ["e"]);
        var relu = new Node("Relu", [reshape.Outputs[0]], ["y"]);
        foreach (var n in new[] { shape, toFloat, toInt, reshape, equal, relu })
            g.AddNode(n);
        relu.Outputs[0].Type = new TensorType(DataType.Float, null);
        g.AddOutput(relu.Outputs[0]);
        var model = new Model(g) { IrVersion = 8 };
        model.OpsetImports.Default = 17;

        Assert.Equal(DataType.Int64, ElementTypeInference.Of(shape.Outputs[0]));
        Assert.Equal(DataType.Float, ElementTypeInference.Of(toFloat.Outputs[0]));
        Assert.Equal(DataType.Int64, ElementTypeInference.Of(toInt.Outputs[0]));
        Assert.Equal(DataType.Float, ElementTypeInference.Of(reshape.Outputs[0]));
        Assert.Equal(DataType.Bool, ElementTypeInference.Of(equal.Outputs[0]));

        foreach (var v in new[] { shape.Outputs[0], toInt.Outputs[0], equal.Outputs[0] })
        {
            ElementTypeInference.EnsureTyped(v);
            g.AddOutput(v);
        }
        using var session = InferenceSession.Create(ModelIO.ToBytes(model), new SessionOptions());
        var outputs = session.Run([new NamedTensor("x", TensorData.FromFloats(new float[8], [1, 4, 2]))], ["s", "d", "e"]);
        Assert.Equal(DataType.Int64, outputs[0].Data.DataType);
        Assert.Equal(DataType.Int64, outputs[1].Data.DataType);
        Assert.Equal(DataType.Bool, outputs[2].Data.DataType);
        Assert.Equal([3L], outputs[0].Data.Shape);
    }
}
