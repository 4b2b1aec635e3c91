using System.Runtime.InteropServices;
using OnnxQuant.Frontend;

namespace OnnxQuant.Runtime;

/// <summary>
/// A dense tensor held in managed memory: element type, shape and elements. Elements live in a typed array whose
/// element type follows <see cref="ElementClrType"/> (float[] for FLOAT, Half[] for FLOAT16, ushort[] bit patterns for
/// BFLOAT16, bool[] for BOOL, string[] for STRING); packed types (INT4/UINT4/INT2/UINT2, the FLOAT8 and FLOAT4 kinds)
/// keep their raw bytes in a byte[], packed the way ONNX stores them (low bits first).
/// </summary>
public sealed class TensorData
{
    private readonly long[] _shape;

    /// <summary>The element type.</summary>
    public DataType DataType { get; }

    /// <summary>The dimensions (a copy; the tensor itself is immutable in shape).</summary>
    public long[] Shape => (long[])_shape.Clone();

    /// <summary>Number of dimensions.</summary>
    public int Rank => _shape.Length;

    /// <summary>Number of elements: the product of the dimensions (1 for a scalar).</summary>
    public long ElementCount { get; }

    /// <summary>The element array (see the type's remarks for its CLR type). Shared, not copied.</summary>
    public Array Elements { get; }

    private TensorData(DataType dataType, long[] shape, Array elements)
    {
        DataType = dataType;
        _shape = (long[])shape.Clone();
        ElementCount = CountElements(_shape);
        Elements = elements;
        var expected = DataTypes.IsSubByte(dataType) || IsRawByteType(dataType)
            ? DataTypes.ByteCount(dataType, ElementCount)
            : ElementCount;
        if (elements.LongLength != expected)
            throw new ArgumentException(
                $"a {dataType} tensor of shape [{string.Join(", ", _shape)}] needs {expected} array elements, got {elements.LongLength}");
    }

    /// <summary>The CLR element type of <see cref="Elements"/> for <paramref name="type"/>.</summary>
    /// <exception cref="NotSupportedException">Complex and undefined types.</exception>
    public static Type ElementClrType(DataType type) => type switch
    {
        DataType.Float => typeof(float),
        DataType.Double => typeof(double),
        DataType.Float16 => typeof(Half),
        DataType.BFloat16 => typeof(ushort),
        DataType.Int8 => typeof(sbyte),
        DataType.UInt8 => typeof(byte),
        DataType.Int16 => typeof(short),
        DataType.UInt16 => typeof(ushort),
        DataType.Int32 => typeof(int),
        DataType.UInt32 => typeof(uint),
        DataType.Int64 => typeof(long),
        DataType.UInt64 => typeof(ulong),
        DataType.Bool => typeof(bool),
        DataType.String => typeof(string),
        _ when DataTypes.IsSubByte(type) || IsRawByteType(type) => typeof(byte),
        _ => throw new NotSupportedException($"tensors of element type {type} are not supported"),
    };

    private static bool IsRawByteType(DataType type) => type is DataType.Float8E4M3FN or DataType.Float8E4M3FNUZ
        or DataType.Float8E5M2 or DataType.Float8E5M2FNUZ or DataType.Float8E8M0;

    /// <summary>Wraps a typed array (not copied) as a tensor of the given element type.</summary>
    /// <exception cref="ArgumentException">The array's CLR type does not match <paramref name="type"/> or its length the shape.</exception>
    public static TensorData Create(DataType type, Array elements, long[] shape)
    {
        ArgumentNullException.ThrowIfNull(elements);
        ArgumentNullException.ThrowIfNull(shape);
        var clr = ElementClrType(type);
        if (elements.GetType().GetElementType() != clr || elements.Rank != 1)
            throw new ArgumentException($"a {type} tensor holds a {clr.Name}[], got {elements.GetType().Name}");
        return new TensorData(type, shape, elements);
    }

    public static TensorData FromFloats(float[] data, long[] shape) => Create(DataType.Float, data, shape);
    public static TensorData FromDoubles(double[] data, long[] shape) => Create(DataType.Double, data, shape);
    public static TensorData FromFloat16s(Half[] data, long[] shape) => Create(DataType.Float16, data, shape);
    /// <summary>BFLOAT16 elements given as their 16-bit patterns (the upper half of the float32 bits).</summary>
    public static TensorData FromBFloat16Bits(ushort[] data, long[] shape) => Create(DataType.BFloat16, data, shape);
    public static TensorData FromInt8s(sbyte[] data, long[] shape) => Create(DataType.Int8, data, shape);
    public static TensorData FromUInt8s(byte[] data, long[] shape) => Create(DataType.UInt8, data, shape);
    public static TensorData FromInt16s(short[] data, long[] shape) => Create(DataType.Int16, data, shape);
    public static TensorData FromUInt16s(ushort[] data, long[] shape) => Create(DataType.UInt16, data, shape);
    public static TensorData FromInt32s(int[] data, long[] shape) => Create(DataType.Int32, data, shape);
    public static TensorData FromUInt32s(uint[] data, long[] shape) => Create(DataType.UInt32, data, shape);
    public static TensorData FromInt64s(long[] data, long[] shape) => Create(DataType.Int64, data, shape);
    public static TensorData FromUInt64s(ulong[] data, long[] shape) => Create(DataType.UInt64, data, shape);
    public static TensorData FromBools(bool[] data, long[] shape) => Create(DataType.Bool, data, shape);
    public static TensorData FromStrings(string[] data, long[] shape) => Create(DataType.String, data, shape);

    /// <summary>
    /// Builds a tensor of any numeric type from its little-endian raw bytes (as in TensorProto.raw_data); sub-byte
    /// types are packed low bits first. The bytes are copied.
    /// </summary>
    /// <exception cref="ArgumentException">The byte count does not match the type and shape, or the type is STRING.</exception>
    public static TensorData FromBytes(DataType type, byte[] raw, long[] shape)
    {
        ArgumentNullException.ThrowIfNull(raw);
        ArgumentNullException.ThrowIfNull(shape);
        if (type == DataType.String)
            throw new ArgumentException("STRING tensors have no raw byte form; use FromStrings");
        var count = CountElements(shape);
        var bytes = DataTypes.ByteCount(type, count);
        if (raw.LongLength != bytes)
            throw new ArgumentException(
                $"a {type} tensor of shape [{string.Join(", ", shape)}] takes {bytes} bytes, got {raw.LongLength}");
        var clr = ElementClrType(type);
        var elementCount = clr == typeof(byte) ? bytes : count;
        var elements = Array.CreateInstance(clr, elementCount);
        raw.AsSpan().CopyTo(RawSpan(elements));
        return new TensorData(type, shape, elements);
    }

    /// <summary>The elements as a typed array (shared, not copied).</summary>
    /// <exception cref="InvalidOperationException">T is not this tensor's CLR element type.</exception>
    public T[] GetArray<T>() => Elements.GetType() == typeof(T[])
        ? (T[])Elements
        : throw new InvalidOperationException($"a {DataType} tensor holds {Elements.GetType().Name}, not {typeof(T).Name}[]");

    /// <summary>The elements' little-endian bytes (a copy).</summary>
    public byte[] ToBytes() => DataType == DataType.String
        ? throw new InvalidOperationException("STRING tensors have no raw byte form")
        : RawSpan(Elements).ToArray();

    /// <summary>
    /// The elements converted to float32: exact for types that float32 holds exactly, rounded for 32/64-bit integers
    /// and doubles, bool as 0/1, sub-byte integers unpacked (signed ones sign-extended).
    /// </summary>
    /// <exception cref="NotSupportedException">STRING and the FLOAT8/FLOAT4 kinds.</exception>
    /// <summary>The values as floats, without a copy when they are floats already: read-only use only.</summary>
    public float[] AsFloats() => DataType == DataType.Float ? (float[])Elements : ToFloats();

    public float[] ToFloats()
    {
        var n = checked((int)ElementCount);
        var result = new float[n];
        // Switch on the declared type, not the array: the runtime treats sbyte[]/byte[] and short[]/ushort[] as
        // interchangeable in type tests, so a pattern on the array type would read signed data as unsigned.
        switch (DataType)
        {
            case DataType.Float: ((float[])Elements).CopyTo(result, 0); break;
            case DataType.Double: Convert((double[])Elements, result, v => (float)v); break;
            case DataType.Float16: Convert((Half[])Elements, result, v => (float)v); break;
            case DataType.BFloat16: Convert((ushort[])Elements, result, v => BitConverter.Int32BitsToSingle(v << 16)); break;
            case DataType.UInt16: Convert((ushort[])Elements, result, v => v); break;
            case DataType.Int16: Convert((short[])Elements, result, v => v); break;
            case DataType.Int8: Convert((sbyte[])Elements, result, v => v); break;
            case DataType.UInt8: Convert((byte[])Elements, result, v => v); break;
            case DataType.Int32: Convert((int[])Elements, result, v => v); break;
            case DataType.UInt32: Convert((uint[])Elements, result, v => v); break;
            case DataType.Int64: Convert((long[])Elements, result, v => v); break;
            case DataType.UInt64: Convert((ulong[])Elements, result, v => v); break;
            case DataType.Bool: Convert((bool[])Elements, result, v => v ? 1f : 0f); break;
            case DataType.Int4 or DataType.UInt4 or DataType.Int2 or DataType.UInt2: UnpackSubByte((byte[])Elements, result); break;
            default: throw new NotSupportedException($"{DataType} tensors cannot be converted to float");
        }
        return result;
    }

    private static void Convert<T>(T[] source, float[] destination, Func<T, float> convert)
    {
        for (var i = 0; i < destination.Length; i++)
            destination[i] = convert(source[i]);
    }

    private void UnpackSubByte(byte[] packed, float[] result)
    {
        var bits = DataTypes.BitWidth(DataType);
        var perByte = 8 / bits;
        var mask = (1 << bits) - 1;
        var signed = DataType is DataType.Int4 or DataType.Int2;
        for (var i = 0; i < result.Length; i++)
        {
            var v = (packed[i / perByte] >> (i % perByte * bits)) & mask;
            if (signed && v >= 1 << (bits - 1))
                v -= 1 << bits;
            result[i] = v;
        }
    }

    /// <summary>The array's elements as bytes, for copying in and out of native memory.</summary>
    internal static Span<byte> RawSpan(Array elements) => elements switch
    {
        float[] a => MemoryMarshal.AsBytes(a.AsSpan()),
        double[] a => MemoryMarshal.AsBytes(a.AsSpan()),
        Half[] a => MemoryMarshal.AsBytes(a.AsSpan()),
        ushort[] a => MemoryMarshal.AsBytes(a.AsSpan()),
        short[] a => MemoryMarshal.AsBytes(a.AsSpan()),
        sbyte[] a => MemoryMarshal.AsBytes(a.AsSpan()),
        byte[] a => a.AsSpan(),
        int[] a => MemoryMarshal.AsBytes(a.AsSpan()),
        uint[] a => MemoryMarshal.AsBytes(a.AsSpan()),
        long[] a => MemoryMarshal.AsBytes(a.AsSpan()),
        ulong[] a => MemoryMarshal.AsBytes(a.AsSpan()),
        bool[] a => MemoryMarshal.AsBytes(a.AsSpan()),
        _ => throw new NotSupportedException($"{elements.GetType().Name} has no raw byte form"),
    };

    private static long CountElements(long[] shape)
    {
        long count = 1;
        foreach (var d in shape)
        {
            if (d < 0)
                throw new ArgumentException($"tensor dimensions must be >= 0, got [{string.Join(", ", shape)}]");
            if (d > 0 && count > long.MaxValue / d)
                throw new ArgumentException($"tensor shape [{string.Join(", ", shape)}] has more than {long.MaxValue} elements");
            count *= d;
        }
        return count;
    }

    public override string ToString() => $"{DataType}[{string.Join("x", _shape)}]";
}

/// <summary>A tensor bound to a graph input or output name.</summary>
public sealed record NamedTensor(string Name, TensorData Data);

/// <summary>What kind of value a graph input or output carries.</summary>
public enum ValueKind
{
    Unknown = 0,
    Tensor = 1,
    Sequence = 2,
    Map = 3,
    Opaque = 4,
    SparseTensor = 5,
    Optional = 6,
}

/// <summary>
/// A graph input or output as the session sees it. <see cref="Dims"/> holds -1 for a symbolic or unknown dimension,
/// whose name (empty when unnamed) is in <see cref="SymbolicDims"/> at the same position.
/// </summary>
public sealed record TensorInfo(string Name, ValueKind Kind, DataType DataType, IReadOnlyList<long> Dims, IReadOnlyList<string> SymbolicDims)
{
    /// <summary>True when every dimension is known.</summary>
    public bool IsStatic => Dims.All(d => d >= 0);

    public override string ToString() => Kind == ValueKind.Tensor
        ? $"{Name}: {DataType}[{string.Join("x", Dims.Select((d, i) => d >= 0 ? d.ToString() : SymbolicDims[i] is { Length: > 0 } s ? s : "?"))}]"
        : $"{Name}: {Kind}";
}
