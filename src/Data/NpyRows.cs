using Microsoft.Win32.SafeHandles;
using OnnxQuant.Frontend;

namespace OnnxQuant.Data;

/// <summary>
/// An array read along its first axis (samples): element type, shape, and the little-endian C-order bytes of any run
/// of rows. <see cref="NpyArray"/> holds them in memory; <see cref="NpyArrayFile"/> in a file.
/// </summary>
public interface INpyRows : IDisposable
{
    DataType DataType { get; }

    /// <summary>The dimensions (not to be modified).</summary>
    long[] Shape { get; }

    /// <summary>A copy of the bytes of rows [<paramref name="start"/>, start + count) of the first axis.</summary>
    byte[] RowBytes(long start, long count);
}

/// <summary>
/// An array whose little-endian C-order bytes fill a file (written by <see cref="Npy.ReadRows"/>); rows are read with
/// positional reads, so any number of threads may read at once. The file is the caller's to delete once disposed.
/// </summary>
public sealed class NpyArrayFile : INpyRows
{
    private readonly SafeFileHandle _handle;
    private readonly long _rowBytes;

    public NpyArrayFile(DataType dataType, long[] shape, string path)
    {
        if (shape.Length == 0)
            throw new ArgumentException("a scalar has no rows to read from a file", nameof(shape));
        DataType = dataType;
        Shape = (long[])shape.Clone();
        Path = path;
        _rowBytes = NpyArray.ElementSize(dataType) * NpyArray.ElementCountOf(shape.AsSpan(1));
        _handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        var expected = _rowBytes * shape[0];
        var length = RandomAccess.GetLength(_handle);
        if (length != expected)
        {
            _handle.Dispose();
            throw new DataFormatException($"{path}: holds {length} bytes, shape ({string.Join(", ", shape)}) of {dataType} needs {expected}");
        }
    }

    public DataType DataType { get; }
    public long[] Shape { get; }
    public string Path { get; }

    public byte[] RowBytes(long start, long count)
    {
        if (start < 0 || count < 0 || start + count > Shape[0])
            throw new ArgumentOutOfRangeException(nameof(start), $"rows {start}..{start + count} outside 0..{Shape[0]}");
        var data = new byte[checked((int)(count * _rowBytes))];
        var done = 0;
        while (done < data.Length)
        {
            var got = RandomAccess.Read(_handle, data.AsSpan(done), start * _rowBytes + done);
            if (got == 0)
                throw new IOException($"{Path}: ends before row {start + count} (changed while in use?)");
            done += got;
        }
        return data;
    }

    public void Dispose() => _handle.Dispose();

    public override string ToString() => $"{DataType}[{string.Join(", ", Shape)}] in {Path}";
}

/// <summary>
/// Float32 rows served as float16 or bfloat16, for a model whose input is half precision: numpy has no bfloat16, and
/// float32 is what most data pipelines write. Each value is rounded to the nearest representable one, ties to even
/// (what numpy's <c>astype(np.float16)</c> does, so float32 data gives the bytes of the float16 array it would save).
/// </summary>
public sealed class HalfPrecisionRows : INpyRows
{
    private readonly INpyRows _source;

    public HalfPrecisionRows(INpyRows source, DataType target)
    {
        if (source.DataType != DataType.Float)
            throw new ArgumentException($"converts float32 rows, not {source.DataType}", nameof(source));
        if (target is not (DataType.Float16 or DataType.BFloat16))
            throw new ArgumentException($"converts to float16 or bfloat16, not {target}", nameof(target));
        _source = source;
        DataType = target;
    }

    public DataType DataType { get; }

    public long[] Shape => _source.Shape;

    public byte[] RowBytes(long start, long count)
    {
        var bytes = _source.RowBytes(start, count);
        var result = new byte[bytes.Length / 2];
        for (var i = 0; i < result.Length / 2; i++)
        {
            var value = System.Buffers.Binary.BinaryPrimitives.ReadSingleLittleEndian(bytes.AsSpan(4 * i));
            var half = DataType == DataType.Float16
                ? BitConverter.HalfToUInt16Bits((Half)value)
                : ToBFloat16Bits(value);
            System.Buffers.Binary.BinaryPrimitives.WriteUInt16LittleEndian(result.AsSpan(2 * i), half);
        }
        return result;
    }

    /// <summary>The bfloat16 nearest <paramref name="value"/> (ties to even); a NaN stays a quiet NaN of the same sign.</summary>
    public static ushort ToBFloat16Bits(float value)
    {
        var bits = BitConverter.SingleToUInt32Bits(value);
        if (float.IsNaN(value))
            return (ushort)((bits >> 16) | 0x0040);
        var rounding = 0x7FFFu + ((bits >> 16) & 1);
        return (ushort)((bits + rounding) >> 16);
    }

    public void Dispose() => _source.Dispose();
}
