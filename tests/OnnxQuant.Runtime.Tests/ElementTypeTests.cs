using OnnxQuant.Frontend;

namespace OnnxQuant.Runtime.Tests;

/// <summary>Every element type the binding carries goes into ONNX Runtime and comes back unchanged.</summary>
public class ElementTypeTests
{
    [Theory]
    [InlineData(DataType.Float)]
    [InlineData(DataType.Double)]
    [InlineData(DataType.Float16)]
    [InlineData(DataType.BFloat16)]
    [InlineData(DataType.Int8)]
    [InlineData(DataType.UInt8)]
    [InlineData(DataType.Int16)]
    [InlineData(DataType.UInt16)]
    [InlineData(DataType.Int32)]
    [InlineData(DataType.UInt32)]
    [InlineData(DataType.Int64)]
    [InlineData(DataType.UInt64)]
    [InlineData(DataType.Bool)]
    [InlineData(DataType.Float8E4M3FN)]
    [InlineData(DataType.Float8E5M2)]
    public void RoundTripsThroughIdentity(DataType type)
    {
        using var session = InferenceSession.Create(TestGraphs.Identity(type), NodeModels.Options);
        Assert.Equal(type, session.Inputs[0].DataType);
        Assert.Equal(type, session.Outputs[0].DataType);
        var rng = new Random((int)type);
        var raw = new byte[DataTypes.ByteCount(type, 15)];
        rng.NextBytes(raw);
        if (type == DataType.Bool)
            raw = raw.Select(b => (byte)(b & 1)).ToArray();
        if (type is DataType.Float16 or DataType.BFloat16 or DataType.Float or DataType.Double)
            raw = TensorData.FromFloats(Enumerable.Range(0, 15).Select(i => i * 0.37f - 2f).ToArray(), [5, 3]) is var f
                ? Convert(f, type) : raw;
        var input = TensorData.FromBytes(type, raw, [5, 3]);
        var output = Assert.Single(session.Run([new("x", input)])).Data;
        Assert.Equal(type, output.DataType);
        Assert.Equal([5L, 3], output.Shape);
        Assert.Equal(raw, output.ToBytes());
    }

    private static byte[] Convert(TensorData floats, DataType type)
    {
        var values = floats.GetArray<float>();
        return type switch
        {
            DataType.Float => floats.ToBytes(),
            DataType.Double => TensorData.FromDoubles(values.Select(v => (double)v).ToArray(), [15]).ToBytes(),
            DataType.Float16 => TensorData.FromFloat16s(values.Select(v => (Half)v).ToArray(), [15]).ToBytes(),
            _ => TensorData.FromBFloat16Bits(values.Select(v => (ushort)(BitConverter.SingleToInt32Bits(v) >> 16)).ToArray(), [15]).ToBytes(),
        };
    }

    [Theory]
    [InlineData(DataType.Int4)]
    [InlineData(DataType.UInt4)]
    [InlineData(DataType.Int2)]
    [InlineData(DataType.UInt2)]
    public void CarriesPackedSubByteTensorsInAndOut(DataType type)
    {
        // ORT has no sub-byte Identity; DequantizeLinear reads a packed input and QuantizeLinear writes a packed output.
        var g = new Graph("q4");
        var q = new Value("q", new TensorType(type, Shape.Of(5, 3)));
        g.AddInput(q);
        var scale = g.AddInitializer("scale", Tensor.FromFloats("scale", [], [0.5f]));
        var zero = g.AddInitializer("zero", Tensor.FromRaw("zero", type, [], new byte[1]));
        var dq = new Node("DequantizeLinear", [q, scale, zero], ["x"], name: "dq");
        g.AddNode(dq);
        var requant = new Node("QuantizeLinear", [dq.Outputs[0], scale, zero], ["q2"], name: "q");
        g.AddNode(requant);
        dq.Outputs[0].Type = new TensorType(DataType.Float, Shape.Of(5, 3));
        requant.Outputs[0].Type = new TensorType(type, Shape.Of(5, 3));
        g.AddOutput(dq.Outputs[0]);
        g.AddOutput(requant.Outputs[0]);
        var twoBit = DataTypes.BitWidth(type) == 2;
        var model = new Model(g) { IrVersion = twoBit ? 12 : 10 }; // INT2/UINT2 arrived with opset 25 and IR 12
        model.OpsetImports.Default = twoBit ? 25 : 21;
        // Unoptimized: ORT's QDQ cleanup turns a DQ -> Q pair into a sub-byte Identity, for which it has no kernel.
        using var session = InferenceSession.Create(ModelIO.ToBytes(model), NodeModels.Options with { Optimization = GraphOptimization.Disabled });
        Assert.Equal(type, session.Inputs[0].DataType);
        Assert.Equal(type, session.Outputs[1].DataType);

        var raw = new byte[DataTypes.ByteCount(type, 15)];
        new Random(4).NextBytes(raw);
        // 15 elements: the unused high bits of the last byte stay zero (4 of 8 at 4 bits, 2 of 8 at 2 bits).
        raw[^1] &= (byte)((1 << (int)(15 * DataTypes.BitWidth(type) % 8)) - 1);
        var input = TensorData.FromBytes(type, raw, [5, 3]);
        var outputs = session.Run([new("q", input)]);
        Assert.Equal(input.ToFloats().Select(v => v * 0.5f).ToArray(), outputs[0].Data.GetArray<float>());
        Assert.Equal(type, outputs[1].Data.DataType);
        Assert.Equal(raw, outputs[1].Data.ToBytes());
    }

    [Fact]
    public void RoundTripsStrings()
    {
        using var session = InferenceSession.Create(TestGraphs.Identity(DataType.String), NodeModels.Options);
        string[] values = ["", "a", "ünïcödé", "tab\there", "longer string with spaces", "x"];
        var output = session.Run([new("x", TensorData.FromStrings(values, [2, 3]))])[0].Data;
        Assert.Equal(values, output.GetArray<string>());
    }

    [Fact]
    public void RunsEmptyTensors()
    {
        using var session = InferenceSession.Create(TestGraphs.Identity(DataType.Float), NodeModels.Options);
        var output = session.Run([new("x", TensorData.FromFloats([], [0, 3]))])[0].Data;
        Assert.Equal([0L, 3], output.Shape);
        Assert.Equal(0, output.ElementCount);
    }
}
