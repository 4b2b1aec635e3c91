using System.Buffers.Binary;
using System.Runtime.InteropServices;

namespace OnnxQuant.Frontend;

/// <summary>
/// A constant tensor: element type, dims and data. Numeric data is kept as ONNX's raw little-endian bytes (sub-byte
/// types packed, first element in the lowest bits). Data stored in an external file is read on first use, so loading
/// a large model costs nothing until a weight is looked at, and saving copies external data file to file without
/// holding it in memory. String tensors keep their elements as byte strings.
/// </summary>
public sealed class Tensor
{
    private readonly long[] _dims;
    private ReadOnlyMemory<byte> _raw;
    private readonly byte[][]? _strings;
    private readonly object _loadLock = new();

    private Tensor(string name, DataType dataType, long[] dims)
    {
        Name = name;
        DataType = dataType;
        _dims = dims;
        ElementCount = CheckedElementCount(dims, name);
    }

    internal Tensor(string name, DataType dataType, long[] dims, ReadOnlyMemory<byte> raw) : this(name, dataType, dims)
    {
        _raw = raw;
        IsLoaded = true;
    }

    internal Tensor(string name, DataType dataType, long[] dims, ExternalDataRef external) : this(name, dataType, dims)
    {
        External = external;
    }

    internal Tensor(string name, long[] dims, byte[][] strings) : this(name, DataType.String, dims)
    {
        _strings = strings;
        IsLoaded = true;
    }

    public string Name { get; set; }
    public DataType DataType { get; }
    public IReadOnlyList<long> Dims => _dims;
    public int Rank => _dims.Length;
    public long ElementCount { get; }

    /// <summary>Bytes of the raw data (sub-byte types round up; strings report the sum of their lengths).</summary>
    public long ByteSize => _strings is { } s ? s.Sum(x => (long)x.Length) : DataTypes.ByteCount(DataType, ElementCount);

    public string DocString { get; set; } = "";
    public List<MetadataEntry> MetadataProps { get; } = [];

    /// <summary>Where the data lives on disk when it was loaded from (or saved to) external data; null if embedded.</summary>
    public ExternalDataRef? External { get; private set; }

    /// <summary>True when the data is in memory (embedded, created in code, or external data already read).</summary>
    public bool IsLoaded { get; private set; }

    /// <summary>Fields of TensorProto this IR does not model, serialized, so a round trip keeps them.</summary>
    internal byte[]? Preserved { get; set; }

    public long[] GetDims() => (long[])_dims.Clone();

    /// <summary>
    /// The raw little-endian data. External data is read from its file on the first call and kept.
    /// Throws <see cref="FrontendException"/> if the file cannot be read or the tensor is a string tensor.
    /// </summary>
    public ReadOnlyMemory<byte> RawData
    {
        get
        {
            if (DataType == DataType.String)
                throw new InvalidOperationException($"tensor '{Name}' holds strings; use {nameof(Strings)}");
            if (!IsLoaded)
            {
                lock (_loadLock)
                {
                    if (!IsLoaded)
                    {
                        _raw = External!.ReadAll(Name);
                        IsLoaded = true;
                    }
                }
            }
            return _raw;
        }
    }

    /// <summary>The elements of a string tensor, as ONNX stores them (bytes, normally UTF-8).</summary>
    public IReadOnlyList<byte[]> Strings =>
        _strings ?? throw new InvalidOperationException($"tensor '{Name}' is {DataType}, not a string tensor");

    /// <summary>
    /// Writes the raw data to <paramref name="destination"/>. External data that is not loaded yet is streamed from its
    /// file in chunks instead of being read into memory.
    /// </summary>
    public void CopyRawDataTo(Stream destination)
    {
        if (!IsLoaded && External is { } ext)
            ext.CopyTo(destination, Name);
        else
            destination.Write(RawData.Span);
    }

    /// <summary>Forgets cached external data so that it is read again from the file on next use.</summary>
    public void Unload()
    {
        lock (_loadLock)
        {
            if (External is not null && IsLoaded)
            {
                _raw = default;
                IsLoaded = false;
            }
        }
    }

    internal void SetExternal(ExternalDataRef? external) => External = external;

    /// <summary>
    /// The elements converted to float: floating types (float, float16, bfloat16, double, the float8 and float4
    /// types) and integer and bool types (sub-byte types unpacked and sign-extended). Complex and string tensors throw.
    /// </summary>
    public float[] ToFloatArray()
    {
        if (ElementCount > Array.MaxLength)
            throw new FrontendException($"tensor '{Name}' has {ElementCount} elements, more than one array can hold");
        var n = (int)ElementCount;
        var raw = RawData.Span;
        var result = new float[n];
        switch (DataType)
        {
            case DataType.Float:
                MemoryMarshal.Cast<byte, float>(raw).CopyTo(result);
                if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("big-endian hosts");
                break;
            case DataType.Double:
                for (int i = 0; i < n; i++) result[i] = (float)BinaryPrimitives.ReadDoubleLittleEndian(raw[(i * 8)..]);
                break;
            case DataType.Float16:
                for (int i = 0; i < n; i++) result[i] = (float)BinaryPrimitives.ReadHalfLittleEndian(raw[(i * 2)..]);
                break;
            case DataType.BFloat16:
                for (int i = 0; i < n; i++)
                    result[i] = BitConverter.Int32BitsToSingle(BinaryPrimitives.ReadUInt16LittleEndian(raw[(i * 2)..]) << 16);
                break;
            case DataType.Int8:
                for (int i = 0; i < n; i++) result[i] = (sbyte)raw[i];
                break;
            case DataType.UInt8:
            case DataType.Bool:
                for (int i = 0; i < n; i++) result[i] = raw[i];
                break;
            case DataType.Int16:
                for (int i = 0; i < n; i++) result[i] = BinaryPrimitives.ReadInt16LittleEndian(raw[(i * 2)..]);
                break;
            case DataType.UInt16:
                for (int i = 0; i < n; i++) result[i] = BinaryPrimitives.ReadUInt16LittleEndian(raw[(i * 2)..]);
                break;
            case DataType.Int32:
                for (int i = 0; i < n; i++) result[i] = BinaryPrimitives.ReadInt32LittleEndian(raw[(i * 4)..]);
                break;
            case DataType.UInt32:
                for (int i = 0; i < n; i++) result[i] = BinaryPrimitives.ReadUInt32LittleEndian(raw[(i * 4)..]);
                break;
            case DataType.Int64:
                for (int i = 0; i < n; i++) result[i] = BinaryPrimitives.ReadInt64LittleEndian(raw[(i * 8)..]);
                break;
            case DataType.UInt64:
                for (int i = 0; i < n; i++) result[i] = BinaryPrimitives.ReadUInt64LittleEndian(raw[(i * 8)..]);
                break;
            case DataType.Int4:
            case DataType.UInt4:
            case DataType.Float4E2M1:
            case DataType.Int2:
            case DataType.UInt2:
                for (int i = 0; i < n; i++) result[i] = SubByte.Decode(DataType, SubByte.Get(raw, DataType, i));
                break;
            case DataType.Float8E4M3FN:
            case DataType.Float8E4M3FNUZ:
            case DataType.Float8E5M2:
            case DataType.Float8E5M2FNUZ:
            case DataType.Float8E8M0:
                for (int i = 0; i < n; i++) result[i] = SmallFloats.Decode(DataType, raw[i]);
                break;
            default:
                throw new InvalidOperationException($"tensor '{Name}' of type {DataType} has no float view");
        }
        return result;
    }

    /// <summary>The elements of an INT64 or INT32 tensor (shapes, axes, indices) as longs.</summary>
    public long[] ToInt64Array()
    {
        var raw = RawData.Span;
        return DataType switch
        {
            DataType.Int64 => MemoryMarshal.Cast<byte, long>(raw).ToArray(),
            DataType.Int32 => MemoryMarshal.Cast<byte, int>(raw).ToArray().Select(x => (long)x).ToArray(),
            _ => ToFloatArray().Select(x => (long)x).ToArray(),
        };
    }

    /// <summary>A FLOAT tensor holding a copy of <paramref name="data"/>.</summary>
    public static Tensor FromFloats(string name, long[] dims, ReadOnlySpan<float> data)
    {
        var count = CheckedElementCount(dims, name);
        if (count != data.Length)
            throw new ArgumentException($"tensor '{name}': dims {Format(dims)} need {count} elements, got {data.Length}");
        return new Tensor(name, DataType.Float, (long[])dims.Clone(), MemoryMarshal.AsBytes(data).ToArray());
    }

    /// <summary>An INT64 tensor holding a copy of <paramref name="data"/> (shapes, axes, indices).</summary>
    public static Tensor FromInt64s(string name, long[] dims, ReadOnlySpan<long> data)
    {
        var count = CheckedElementCount(dims, name);
        if (count != data.Length)
            throw new ArgumentException($"tensor '{name}': dims {Format(dims)} need {count} elements, got {data.Length}");
        return new Tensor(name, DataType.Int64, (long[])dims.Clone(), MemoryMarshal.AsBytes(data).ToArray());
    }

    /// <summary>
    /// A tensor over raw little-endian bytes, which it keeps without copying (do not change the array afterwards).
    /// Sub-byte types must be packed, first element in the lowest bits.
    /// </summary>
    public static Tensor FromRaw(string name, DataType dataType, long[] dims, byte[] raw) =>
        FromRaw(name, dataType, dims, (ReadOnlyMemory<byte>)raw);

    /// <inheritdoc cref="FromRaw(string, DataType, long[], byte[])"/>
    public static Tensor FromRaw(string name, DataType dataType, long[] dims, ReadOnlyMemory<byte> raw)
    {
        if (dataType == DataType.String || DataTypes.BitWidth(dataType) == 0)
            throw new ArgumentException($"tensor '{name}': {dataType} has no raw form");
        var expected = DataTypes.ByteCount(dataType, CheckedElementCount(dims, name));
        if (raw.Length != expected)
            throw new ArgumentException(
                $"tensor '{name}': {dataType} with dims {Format(dims)} needs {expected} bytes, got {raw.Length}");
        return new Tensor(name, dataType, (long[])dims.Clone(), raw);
    }

    /// <summary>A STRING tensor.</summary>
    public static Tensor FromStrings(string name, long[] dims, IEnumerable<byte[]> elements)
    {
        var array = elements.ToArray();
        if (CheckedElementCount(dims, name) != array.Length)
            throw new ArgumentException($"tensor '{name}': dims {Format(dims)} do not match {array.Length} strings");
        return new Tensor(name, (long[])dims.Clone(), array);
    }

    /// <summary>A copy sharing the (immutable) data; external data stays lazy.</summary>
    public Tensor Clone()
    {
        Tensor copy;
        if (_strings is not null)
            copy = new Tensor(Name, _dims, _strings);
        else if (!IsLoaded && External is not null)
            copy = new Tensor(Name, DataType, _dims, External);
        else
        {
            copy = new Tensor(Name, DataType, _dims, _raw);
            copy.External = External;
        }
        copy.DocString = DocString;
        copy.MetadataProps.AddRange(MetadataProps);
        copy.Preserved = Preserved;
        return copy;
    }

    public override string ToString() => $"{Name}: {DataType}{Format(_dims)}";

    internal static string Format(IEnumerable<long> dims) => "[" + string.Join(", ", dims) + "]";

    private static long CheckedElementCount(long[] dims, string name)
    {
        long count = 1;
        foreach (var d in dims)
        {
            if (d < 0)
                throw new FrontendException($"tensor '{name}' has a negative dimension in {Format(dims)}");
            try { count = checked(count * d); }
            catch (OverflowException)
            {
                throw new FrontendException($"tensor '{name}' dims {Format(dims)} overflow the element count");
            }
        }
        // Bytes must also be representable (8 bytes per element at most for anything but complex128).
        if (count > long.MaxValue / 16)
            throw new FrontendException($"tensor '{name}' dims {Format(dims)} are too large");
        return count;
    }
}

/// <summary>Packing of the 4- and 2-bit types: element i sits in the lowest free bits of byte i * bits / 8.</summary>
public static class SubByte
{
    /// <summary>The unsigned bit field of element <paramref name="index"/>.</summary>
    public static int Get(ReadOnlySpan<byte> packed, DataType type, long index)
    {
        var bits = DataTypes.BitWidth(type);
        var perByte = 8 / bits;
        var b = packed[(int)(index / perByte)];
        return (b >> (int)(index % perByte * bits)) & ((1 << bits) - 1);
    }

    /// <summary>Sets element <paramref name="index"/> to the low bits of <paramref name="field"/>.</summary>
    public static void Set(Span<byte> packed, DataType type, long index, int field)
    {
        var bits = DataTypes.BitWidth(type);
        var perByte = 8 / bits;
        var shift = (int)(index % perByte * bits);
        var mask = ((1 << bits) - 1) << shift;
        ref var b = ref packed[(int)(index / perByte)];
        b = (byte)((b & ~mask) | ((field << shift) & mask));
    }

    /// <summary>The value a bit field stands for: sign-extended for INT4/INT2, E2M1 decoded for FLOAT4E2M1.</summary>
    public static float Decode(DataType type, int field) => type switch
    {
        DataType.Int4 => (field ^ 8) - 8,
        DataType.Int2 => (field ^ 2) - 2,
        DataType.Float4E2M1 => SmallFloats.DecodeMinifloat(field, exponentBits: 2, mantissaBits: 1, bias: 1,
            SmallFloats.Specials.None),
        _ => field,
    };
}

/// <summary>Decoding of the 8-bit float formats and FLOAT4E2M1 (ONNX's definitions).</summary>
public static class SmallFloats
{
    public enum Specials
    {
        /// <summary>No infinities and no NaN (FLOAT4E2M1).</summary>
        None,
        /// <summary>IEEE-like: all-ones exponent is inf (zero mantissa) or NaN (E5M2).</summary>
        Ieee,
        /// <summary>Only S.1111.111 is NaN, no infinities (E4M3FN).</summary>
        FiniteAllOnesNan,
        /// <summary>Only 0x80 (negative zero's pattern) is NaN, no infinities, no -0 (the FNUZ types).</summary>
        Fnuz,
    }

    public static float Decode(DataType type, byte bits) => type switch
    {
        DataType.Float8E4M3FN => DecodeMinifloat(bits, 4, 3, 7, Specials.FiniteAllOnesNan),
        DataType.Float8E4M3FNUZ => DecodeMinifloat(bits, 4, 3, 8, Specials.Fnuz),
        DataType.Float8E5M2 => DecodeMinifloat(bits, 5, 2, 15, Specials.Ieee),
        DataType.Float8E5M2FNUZ => DecodeMinifloat(bits, 5, 2, 16, Specials.Fnuz),
        // E8M0: an unsigned power of two, 0xFF is NaN.
        DataType.Float8E8M0 => bits == 0xFF ? float.NaN : MathF.ScaleB(1f, bits - 127),
        _ => throw new ArgumentOutOfRangeException(nameof(type), type, "not an 8-bit float type"),
    };

    /// <summary>Decodes a sign/exponent/mantissa bit field with the given layout and special-value convention.</summary>
    public static float DecodeMinifloat(int bits, int exponentBits, int mantissaBits, int bias, Specials specials)
    {
        var total = 1 + exponentBits + mantissaBits;
        var sign = (bits >> (total - 1)) & 1;
        var exponent = (bits >> mantissaBits) & ((1 << exponentBits) - 1);
        var mantissa = bits & ((1 << mantissaBits) - 1);
        var maxExponent = (1 << exponentBits) - 1;
        switch (specials)
        {
            case Specials.Fnuz when sign == 1 && exponent == 0 && mantissa == 0:
                return float.NaN;
            case Specials.Ieee when exponent == maxExponent:
                return mantissa == 0 ? (sign == 1 ? float.NegativeInfinity : float.PositiveInfinity) : float.NaN;
            case Specials.FiniteAllOnesNan when exponent == maxExponent && mantissa == (1 << mantissaBits) - 1:
                return float.NaN;
        }
        float magnitude = exponent == 0
            ? MathF.ScaleB(mantissa, 1 - bias - mantissaBits)
            : MathF.ScaleB((1 << mantissaBits) + mantissa, exponent - bias - mantissaBits);
        return sign == 1 ? -magnitude : magnitude;
    }
}
