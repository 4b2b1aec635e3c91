using OnnxQuant.Frontend;

namespace OnnxQuant.Runtime.Tests;

public class TensorDataTests
{
    [Fact]
    public void ChecksLengthsAgainstShapes()
    {
        Assert.Contains("needs 6 array elements, got 5", Assert.Throws<ArgumentException>(() => TensorData.FromFloats(new float[5], [2, 3])).Message);
        Assert.Contains("takes 3 bytes, got 2", Assert.Throws<ArgumentException>(() => TensorData.FromBytes(DataType.Int4, new byte[2], [5])).Message);
        Assert.Throws<ArgumentException>(() => TensorData.FromFloats([], [-1]));
        Assert.Throws<ArgumentException>(() => TensorData.Create(DataType.Float, new int[2], [2]));
        Assert.Throws<ArgumentException>(() => TensorData.FromBytes(DataType.String, [], [0]));
        Assert.Throws<InvalidOperationException>(() => TensorData.FromFloats([1f], [1]).GetArray<double>());
        Assert.Throws<InvalidOperationException>(() => TensorData.FromUInt8s([200], [1]).GetArray<sbyte>());
        Assert.Equal([-56f], TensorData.FromBytes(DataType.Int8, [200], [1]).ToFloats());
    }

    [Fact]
    public void ScalarsHaveOneElement()
    {
        var scalar = TensorData.FromInt64s([42], []);
        Assert.Equal(1, scalar.ElementCount);
        Assert.Equal(0, scalar.Rank);
        Assert.Equal([42f], scalar.ToFloats());
    }

    [Fact]
    public void ConvertsNumericTypesToFloats()
    {
        Assert.Equal([1.5f, -2f], TensorData.FromDoubles([1.5, -2], [2]).ToFloats());
        Assert.Equal([1f, 0f], TensorData.FromBools([true, false], [2]).ToFloats());
        Assert.Equal([-3f, 250f], TensorData.FromBytes(DataType.Int16, [0xFD, 0xFF, 0xFA, 0x00], [2]).ToFloats());
        // 1.0 as bfloat16 is 0x3F80; -2.5 is 0xC020.
        Assert.Equal([1f, -2.5f], TensorData.FromBFloat16Bits([0x3F80, 0xC020], [2]).ToFloats());
        Assert.Equal([0.5f], TensorData.FromFloat16s([(Half)0.5f], [1]).ToFloats());
    }

    [Fact]
    public void UnpacksSubByteIntegersLowBitsFirst()
    {
        // 0x8F: low nibble 0xF (int4 -1, uint4 15), high nibble 0x8 (int4 -8, uint4 8); third element 0x7.
        Assert.Equal([-1f, -8f, 7f], TensorData.FromBytes(DataType.Int4, [0x8F, 0x07], [3]).ToFloats());
        Assert.Equal([15f, 8f, 7f], TensorData.FromBytes(DataType.UInt4, [0x8F, 0x07], [3]).ToFloats());
        // 0b10_01_11_00: fields 0, 3, 1, 2 -> int2 0, -1, 1, -2.
        Assert.Equal([0f, -1f, 1f, -2f, 1f], TensorData.FromBytes(DataType.Int2, [0b10_01_11_00, 0b01], [5]).ToFloats());
        Assert.Equal([0f, 3f, 1f, 2f], TensorData.FromBytes(DataType.UInt2, [0b10_01_11_00], [4]).ToFloats());
    }

    [Fact]
    public void RawBytesRoundTrip()
    {
        var t = TensorData.FromInt32s([1, -2, int.MaxValue], [3]);
        var copy = TensorData.FromBytes(DataType.Int32, t.ToBytes(), t.Shape);
        Assert.Equal(t.GetArray<int>(), copy.GetArray<int>());
        Assert.Equal("Int32[3]", copy.ToString());
    }
}
