using System.Buffers.Binary;
using Google.Protobuf;
using OnnxQuant.Frontend.Proto;

namespace OnnxQuant.Frontend.Tests;

public class TensorTests
{
    [Fact]
    public void SubByteTypesArePackedLowBitsFirst()
    {
        // INT4 [-8, 7, 1] packs as 0x78, 0x01; UINT2 [1, 2, 3, 0, 3] as 0b00_11_10_01, 0b11.
        var int4 = Tensor.FromRaw("a", DataType.Int4, [3], [0x78, 0x01]);
        Assert.Equal([-8f, 7f, 1f], int4.ToFloatArray());
        Assert.Equal(2, int4.ByteSize);
        var uint2 = Tensor.FromRaw("b", DataType.UInt2, [5], [0b00_11_10_01, 0b11]);
        Assert.Equal([1f, 2f, 3f, 0f, 3f], uint2.ToFloatArray());
        var int2 = Tensor.FromRaw("c", DataType.Int2, [4], [0b10_11_01_00]);
        Assert.Equal([0f, 1f, -1f, -2f], int2.ToFloatArray());
        var packed = new byte[2];
        SubByte.Set(packed, DataType.UInt4, 2, 0xA);
        Assert.Equal(0x0A, packed[1]);
        Assert.Throws<ArgumentException>(() => Tensor.FromRaw("d", DataType.Int4, [5], [0, 0]));
    }

    [Fact]
    public void SmallFloatsDecodeAsOnnxDefinesThem()
    {
        Assert.Equal(448f, SmallFloats.Decode(DataType.Float8E4M3FN, 0x7E));
        Assert.True(float.IsNaN(SmallFloats.Decode(DataType.Float8E4M3FN, 0x7F)));
        Assert.Equal(-2f, SmallFloats.Decode(DataType.Float8E4M3FN, 0xC0));
        Assert.Equal(0.001953125f, SmallFloats.Decode(DataType.Float8E4M3FN, 0x01)); // smallest subnormal 2^-9
        Assert.True(float.IsNaN(SmallFloats.Decode(DataType.Float8E4M3FNUZ, 0x80)));
        Assert.Equal(240f, SmallFloats.Decode(DataType.Float8E4M3FNUZ, 0x7F));
        Assert.Equal(float.PositiveInfinity, SmallFloats.Decode(DataType.Float8E5M2, 0x7C));
        Assert.Equal(57344f, SmallFloats.Decode(DataType.Float8E5M2, 0x7B));
        Assert.Equal(57344f, SmallFloats.Decode(DataType.Float8E5M2FNUZ, 0x7F));
        Assert.Equal(1f, SmallFloats.Decode(DataType.Float8E8M0, 127));
        Assert.True(float.IsNaN(SmallFloats.Decode(DataType.Float8E8M0, 0xFF)));
        var fp4 = Tensor.FromRaw("f", DataType.Float4E2M1, [4], [0x71, 0xF9]);
        Assert.Equal([0.5f, 6f, -0.5f, -6f], fp4.ToFloatArray());
    }

    [Fact]
    public void HalfAndBFloat16AndIntegersConvert()
    {
        var half = new byte[4];
        BinaryPrimitives.WriteHalfLittleEndian(half, (Half)1.5f);
        BinaryPrimitives.WriteHalfLittleEndian(half.AsSpan(2), (Half)(-2f));
        Assert.Equal([1.5f, -2f], Tensor.FromRaw("h", DataType.Float16, [2], half).ToFloatArray());
        Assert.Equal([1f, -3f], Tensor.FromRaw("b", DataType.BFloat16, [2], [0x80, 0x3F, 0x40, 0xC0]).ToFloatArray());
        Assert.Equal([-1f, 127f], Tensor.FromRaw("i", DataType.Int8, [2], [0xFF, 0x7F]).ToFloatArray());
        Assert.Equal([255f], Tensor.FromRaw("u", DataType.UInt8, [1], [0xFF]).ToFloatArray());
        Assert.Equal([5L, -6L], Tensor.FromInt64s("s", [2], [5, -6]).ToInt64Array());
    }

    [Fact]
    public void TypedDataFieldsBecomeRawBytes()
    {
        var t16 = new TensorProto { Name = "h", DataType = (int)DataType.Float16 };
        t16.Dims.Add(2);
        t16.Int32Data.Add([0x3E00, 0xC000]); // 1.5, -2 as float16 bit patterns
        var t4 = new TensorProto { Name = "q", DataType = (int)DataType.Int4 };
        t4.Dims.Add(3);
        t4.Int32Data.Add([0x78, 0x01]); // one packed byte per entry
        var tf = new TensorProto { Name = "f", DataType = (int)DataType.Float };
        tf.Dims.Add(2);
        tf.FloatData.Add([0.25f, -8f]);
        var reader = new ProtoReader(null);
        Assert.Equal([1.5f, -2f], reader.ReadTensor(t16, "test").ToFloatArray());
        Assert.Equal([-8f, 7f, 1f], reader.ReadTensor(t4, "test").ToFloatArray());
        Assert.Equal([0.25f, -8f], reader.ReadTensor(tf, "test").ToFloatArray());
    }
}

