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
    public void CarriesPackedFourBitTensorsInAndOut(DataType type)
    {
        // ORT has no 4-bit Identity; DequantizeLinear reads a 4-bit input and QuantizeLinear writes a 4-bit output.
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
        var model = new Model(g) { IrVersion = 10 };
        model.OpsetImports.Default = 21;
        // Unoptimized: ORT 1.30's QDQ cleanup turns a DQ -> Q pair into a 4-bit Identity, for which it has no kernel.
        using var session = InferenceSession.Create(ModelIO.ToBytes(model), NodeModels.Options with { Optimization = GraphOptimization.Disabled });

        var raw = new byte[8];
        new Random(4).NextBytes(raw);
        raw[7] &= 0x0F; // 15 elements: the unused high nibble of the last byte stays zero
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
