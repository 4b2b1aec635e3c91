using System.Buffers.Binary;
using System.Runtime.InteropServices;
using OnnxQuant.Frontend;

namespace OnnxQuant.Data;

/// <summary>
/// A dense C-order array as stored in a .npy file: element type, shape and the raw element bytes, always kept in
/// little-endian order whatever the file used, so the bytes can be handed to ONNX Runtime as they are.
/// </summary>
public sealed class NpyArray : INpyRows
{
    private readonly byte[] _data;

    /// <summary>Wraps raw little-endian C-order bytes; their length must match the shape and element type.</summary>
    public NpyArray(DataType dataType, long[] shape, byte[] data)
    {
        ArgumentNullException.ThrowIfNull(shape);
        ArgumentNullException.ThrowIfNull(data);
        if (!Npy.IsSupported(dataType))
            throw new ArgumentException($"element type {dataType} has no .npy equivalent", nameof(dataType));
        foreach (var d in shape)
            if (d < 0)
                throw new ArgumentException($"negative dimension in shape ({string.Join(", ", shape)})", nameof(shape));
        var expected = checked(ElementCountOf(shape) * ElementSize(dataType));
        if (data.LongLength != expected)
            throw new ArgumentException(
                $"{data.LongLength} bytes do not fit shape ({string.Join(", ", shape)}) of {dataType} ({expected} bytes expected)",
                nameof(data));
        DataType = dataType;
        Shape = (long[])shape.Clone();
        _data = data;
    }

    public DataType DataType { get; }

    /// <summary>The dimensions; empty for a 0-d (scalar) array.</summary>
    public long[] Shape { get; }

    /// <summary>Number of elements (1 for a scalar).</summary>
    public long ElementCount => ElementCountOf(Shape);

    /// <summary>The raw little-endian element bytes in C order. Not copied: do not modify.</summary>
    public ReadOnlySpan<byte> Bytes => _data;

    /// <summary>The backing byte array (not copied), for APIs that need an array.</summary>
    public byte[] RawBytes => _data;

    public static NpyArray FromFloats(float[] values, params long[] shape) =>
        FromTyped(DataType.Float, values, shape);

    public static NpyArray FromDoubles(double[] values, params long[] shape) =>
        FromTyped(DataType.Double, values, shape);

    public static NpyArray FromInt64s(long[] values, params long[] shape) =>
        FromTyped(DataType.Int64, values, shape);

    public static NpyArray FromInt32s(int[] values, params long[] shape) =>
        FromTyped(DataType.Int32, values, shape);

    public static NpyArray FromBytes(byte[] values, params long[] shape) =>
        new(DataType.UInt8, shape, (byte[])values.Clone());

    private static NpyArray FromTyped<T>(DataType type, T[] values, long[] shape) where T : unmanaged
    {
        var bytes = MemoryMarshal.AsBytes(values.AsSpan()).ToArray();
        if (!BitConverter.IsLittleEndian)
            Npy.SwapInPlace(bytes, ElementSize(type));
        return new NpyArray(type, shape, bytes);
    }

    /// <summary>Every element converted to float (integers and booleans exactly where float can hold them).</summary>
    public float[] ToFloats()
    {
        var n = checked((int)ElementCount);
        var result = new float[n];
        var src = _data.AsSpan();
        switch (DataType)
        {
            case DataType.Float:
                for (var i = 0; i < n; i++) result[i] = BinaryPrimitives.ReadSingleLittleEndian(src[(4 * i)..]);
                break;
            case DataType.Double:
                for (var i = 0; i < n; i++) result[i] = (float)BinaryPrimitives.ReadDoubleLittleEndian(src[(8 * i)..]);
                break;
            case DataType.Float16:
                for (var i = 0; i < n; i++) result[i] = (float)BinaryPrimitives.ReadHalfLittleEndian(src[(2 * i)..]);
                break;
            default:
                var longs = ToInt64s();
                for (var i = 0; i < n; i++) result[i] = longs[i];
                break;
        }
        return result;
    }

    /// <summary>Every element converted to double.</summary>
    public double[] ToDoubles()
    {
        if (DataType != DataType.Double)
            return Array.ConvertAll(ToFloats(), f => (double)f);
        var n = checked((int)ElementCount);
        var result = new double[n];
        for (var i = 0; i < n; i++) result[i] = BinaryPrimitives.ReadDoubleLittleEndian(_data.AsSpan(8 * i));
        return result;
    }

    /// <summary>
    /// Every element converted to long. Floating-point elements are truncated toward zero; uint64 values above
    /// long.MaxValue throw (they cannot be represented).
    /// </summary>
    public long[] ToInt64s()
    {
        var n = checked((int)ElementCount);
        var result = new long[n];
        var s = _data.AsSpan();
        for (var i = 0; i < n; i++)
        {
            result[i] = DataType switch
            {
                DataType.Bool => s[i] != 0 ? 1 : 0,
                DataType.UInt8 => s[i],
                DataType.Int8 => (sbyte)s[i],
                DataType.Int16 => BinaryPrimitives.ReadInt16LittleEndian(s[(2 * i)..]),
                DataType.UInt16 => BinaryPrimitives.ReadUInt16LittleEndian(s[(2 * i)..]),
                DataType.Int32 => BinaryPrimitives.ReadInt32LittleEndian(s[(4 * i)..]),
                DataType.UInt32 => BinaryPrimitives.ReadUInt32LittleEndian(s[(4 * i)..]),
                DataType.Int64 => BinaryPrimitives.ReadInt64LittleEndian(s[(8 * i)..]),
                DataType.UInt64 => checked((long)BinaryPrimitives.ReadUInt64LittleEndian(s[(8 * i)..])),
                DataType.Float => (long)BinaryPrimitives.ReadSingleLittleEndian(s[(4 * i)..]),
                DataType.Double => (long)BinaryPrimitives.ReadDoubleLittleEndian(s[(8 * i)..]),
                DataType.Float16 => (long)(float)BinaryPrimitives.ReadHalfLittleEndian(s[(2 * i)..]),
                _ => throw new InvalidOperationException($"unexpected element type {DataType}"),
            };
        }
        return result;
    }

    /// <summary>
    /// Rows <paramref name="start"/>..start+count of the first axis as a new array (a batch of samples).
    /// </summary>
    public NpyArray SliceFirstAxis(long start, long count)
    {
        if (Shape.Length == 0)
            throw new InvalidOperationException("a scalar array has no first axis to slice");
        if (start < 0 || count < 0 || start + count > Shape[0])
            throw new ArgumentOutOfRangeException(nameof(start), $"rows {start}..{start + count} outside 0..{Shape[0]}");
        var rowBytes = ElementSize(DataType) * ElementCountOf(Shape.AsSpan(1));
        var data = _data.AsSpan(checked((int)(start * rowBytes)), checked((int)(count * rowBytes))).ToArray();
        var shape = (long[])Shape.Clone();
        shape[0] = count;
        return new NpyArray(DataType, shape, data);
    }

    public byte[] RowBytes(long start, long count) => SliceFirstAxis(start, count)._data;

    /// <summary>Nothing to release: the bytes are managed memory.</summary>
    public void Dispose()
    {
    }

    public override string ToString() => $"{DataType}[{string.Join(", ", Shape)}]";

    internal static long ElementCountOf(ReadOnlySpan<long> shape)
    {
        long n = 1;
        foreach (var d in shape)
            n = checked(n * d);
        return n;
    }

    internal static int ElementSize(DataType type) => DataTypes.BitWidth(type) / 8;
}
