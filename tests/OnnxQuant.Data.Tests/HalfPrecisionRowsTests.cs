using System.Runtime.InteropServices;
using OnnxQuant.Data;
using OnnxQuant.Frontend;

namespace OnnxQuant.Data.Tests;

public class HalfPrecisionRowsTests
{
    /// <summary>bfloat16 keeps float32's top 16 bits, rounded to nearest with ties to even; NaN stays NaN.</summary>
    [Theory]
    [InlineData(0x3F800000u, (ushort)0x3F80)] // 1.0 exactly
    [InlineData(0x3F808000u, (ushort)0x3F80)] // halfway, even below: stays
    [InlineData(0x3F818000u, (ushort)0x3F82)] // halfway, odd below: up to even
    [InlineData(0x3F808001u, (ushort)0x3F81)] // just above halfway: up
    [InlineData(0xBF807FFFu, (ushort)0xBF80)] // just below halfway, negative: down in magnitude
    [InlineData(0x7F7FFFFFu, (ushort)0x7F80)] // the largest float rounds to infinity, as it must
    [InlineData(0x7FC00000u, (ushort)0x7FC0)] // quiet NaN
    [InlineData(0x7F800001u, (ushort)0x7FC0)] // signalling NaN whose payload is below bit 16: still a NaN
    public void BFloat16IsTheNearestWithTiesToEven(uint floatBits, ushort expected) =>
        Assert.Equal(expected, HalfPrecisionRows.ToBFloat16Bits(BitConverter.UInt32BitsToSingle(floatBits)));

    /// <summary>Rows served as float16 are what .NET's (and numpy's) float32-to-half conversion gives, row for row.</summary>
    [Fact]
    public void Float16RowsAreTheConvertedValues()
    {
        var values = new[] { 0f, 1f, -2.5f, 65504f, 70000f, 1e-8f, 0.1f, 3.14159f };
        using var rows = new HalfPrecisionRows(NpyArray.FromFloats(values, 4, 2), DataType.Float16);
        Assert.Equal(DataType.Float16, rows.DataType);
        Assert.Equal([4L, 2], rows.Shape);
        var halves = MemoryMarshal.Cast<byte, Half>(rows.RowBytes(1, 2)).ToArray();
        Assert.Equal(values[2..6].Select(v => (Half)v), halves);
        Assert.Throws<ArgumentException>(() => new HalfPrecisionRows(NpyArray.FromFloats(values, 8), DataType.Double));
    }
}
