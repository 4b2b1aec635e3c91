using System.Globalization;
using System.Text;
using OnnxQuant.Frontend;

namespace OnnxQuant.Data;

/// <summary>
/// Reads and writes NumPy's .npy format (versions 1.0, 2.0 and 3.0): a magic string, a version, a header that is a
/// Python dict literal (descr, fortran_order, shape), padded so the data starts on a 64-byte boundary, then the raw
/// elements. Supported element types: f2 f4 f8 i1 u1 i2 u2 i4 u4 i8 u8 b1 in either byte order, C order only.
/// </summary>
public static class Npy
{
    private static readonly byte[] Magic = [0x93, (byte)'N', (byte)'U', (byte)'M', (byte)'P', (byte)'Y'];
    private const int Alignment = 64;

    /// <summary>Reads a .npy file.</summary>
    /// <exception cref="DataFormatException">The file is not a readable .npy file; the message says why.</exception>
    public static NpyArray Read(string path)
    {
        using var stream = OpenRead(path);
        return Read(stream, path);
    }

    /// <summary>A .npy file through <see cref="ReadRows(Stream, string, long, Func{string})"/>.</summary>
    public static INpyRows ReadRows(string path, long memoryBytes, Func<string> spillPath)
    {
        using var stream = OpenRead(path);
        return ReadRows(stream, path, memoryBytes, spillPath);
    }

    /// <summary>Reads one .npy array from the current position of <paramref name="stream"/>.</summary>
    /// <param name="source">Names the data in error messages (a file path, or "archive.npz:entry.npy").</param>
    public static NpyArray Read(Stream stream, string source = "<stream>") => ReadData(stream, ReadHeader(stream, source), source);

    private static NpyArray ReadData(Stream stream, Header header, string source)
    {
        if (header.ByteCount > Array.MaxLength)
            throw new DataFormatException($"{source}: array of {header.ByteCount} bytes exceeds the {Array.MaxLength}-byte limit of one array");
        var data = new byte[header.ByteCount];
        var read = ReadFully(stream, data);
        if (read < header.ByteCount)
            throw Truncated(source, header, read);
        Normalize(data, header, source);
        return new NpyArray(header.DataType, header.Shape, data);
    }

    /// <summary>
    /// Reads one .npy array from <paramref name="stream"/>: arrays of at most <paramref name="memoryBytes"/> into
    /// memory, larger ones into a new file that <paramref name="spillPath"/> names (copied in pieces, so no array is ever
    /// whole in memory and none is limited to 2 GiB), read back row by row.
    /// </summary>
    public static INpyRows ReadRows(Stream stream, string source, long memoryBytes, Func<string> spillPath)
    {
        var header = ReadHeader(stream, source);
        if (header.ByteCount <= memoryBytes || header.Shape.Length == 0)
            return ReadData(stream, header, source);
        var path = spillPath();
        var elementSize = NpyArray.ElementSize(header.DataType);
        // Whole elements per piece, so a byte swap never straddles two pieces.
        var buffer = new byte[(1 << 20) / elementSize * elementSize];
        long copied = 0;
        try
        {
            using (var file = new FileStream(path, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 16))
                while (copied < header.ByteCount)
                {
                    var want = (int)Math.Min(buffer.Length, header.ByteCount - copied);
                    var got = ReadFully(stream, buffer.AsSpan(0, want));
                    if (got < want)
                        throw Truncated(source, header, copied + got);
                    Normalize(buffer.AsSpan(0, want), header, source);
                    file.Write(buffer, 0, want);
                    copied += want;
                }
            return new NpyArrayFile(header.DataType, header.Shape, path);
        }
        catch
        {
            File.Delete(path);
            throw;
        }
    }

    /// <summary>What a .npy header says: element type, byte order and shape.</summary>
    private sealed record Header(DataType DataType, bool Swap, long[] Shape, long ByteCount);

    private static Header ReadHeader(Stream stream, string source)
    {
        var prefix = new byte[8];
        var got = ReadFully(stream, prefix);
        if (got < Magic.Length || !prefix.AsSpan(0, Magic.Length).SequenceEqual(Magic))
            throw new DataFormatException($"{source}: not a .npy file (bad magic; expected \\x93NUMPY at the start)");
        if (got < 8)
            throw new DataFormatException($"{source}: truncated .npy file (ends inside the version field)");
        int major = prefix[6], minor = prefix[7];
        if (major is < 1 or > 3 || minor != 0)
            throw new DataFormatException($"{source}: unsupported .npy format version {major}.{minor} (1.0, 2.0 and 3.0 are supported)");
        var lengthBytes = new byte[major == 1 ? 2 : 4];
        if (ReadFully(stream, lengthBytes) < lengthBytes.Length)
            throw new DataFormatException($"{source}: truncated .npy file (ends inside the header length)");
        long headerLength = major == 1
            ? BitConverter.ToUInt16(ReadLittle(lengthBytes))
            : BitConverter.ToUInt32(ReadLittle(lengthBytes));
        if (headerLength > 1 << 24)
            throw new DataFormatException($"{source}: .npy header length {headerLength} is implausibly large (corrupt file?)");
        var headerBytes = new byte[headerLength];
        if (ReadFully(stream, headerBytes) < headerBytes.Length)
            throw new DataFormatException($"{source}: truncated .npy file (header of {headerLength} bytes is cut short)");
        // Version 3 allows UTF-8 in the header (field names of structured types); 1 and 2 are latin-1.
        var header = major == 3 ? Encoding.UTF8.GetString(headerBytes) : Encoding.Latin1.GetString(headerBytes);
        var (dataType, swap, shape) = ParseHeader(header, source);

        var elementSize = NpyArray.ElementSize(dataType);
        long count;
        try { count = NpyArray.ElementCountOf(shape); }
        catch (OverflowException) { throw new DataFormatException($"{source}: shape ({FormatShape(shape)}) overflows the element count"); }
        long byteCount;
        try { byteCount = checked(count * elementSize); }
        catch (OverflowException) { throw new DataFormatException($"{source}: shape ({FormatShape(shape)}) overflows the byte count"); }
        return new Header(dataType, swap, shape, byteCount);
    }

    private static DataFormatException Truncated(string source, Header header, long read) =>
        new($"{source}: truncated .npy data: shape ({FormatShape(header.Shape)}) of {DescrOf(header.DataType)} needs {header.ByteCount} bytes, found {read}");

    /// <summary>Little-endian order, and booleans checked to be 0 or 1.</summary>
    private static void Normalize(Span<byte> data, Header header, string source)
    {
        if (header.Swap)
            SwapInPlace(data, NpyArray.ElementSize(header.DataType));
        if (header.DataType == DataType.Bool)
            foreach (var b in data)
                if (b > 1)
                    throw new DataFormatException($"{source}: boolean array holds byte value {b} (only 0 and 1 are valid)");
    }

    /// <summary>Writes <paramref name="array"/> to <paramref name="path"/> atomically (temporary file, then rename).</summary>
    public static void Write(string path, NpyArray array)
    {
        AtomicFile.Write(path, stream => Write(stream, array));
    }

    /// <summary>
    /// Writes one .npy array (version 1.0, or 2.0 when the header needs it), little-endian, C order. Identical arrays
    /// give identical bytes.
    /// </summary>
    public static void Write(Stream stream, NpyArray array)
    {
        var shapeText = array.Shape.Length switch
        {
            0 => "()",
            1 => $"({array.Shape[0]},)",
            _ => "(" + string.Join(", ", array.Shape.Select(d => d.ToString(CultureInfo.InvariantCulture))) + ")",
        };
        var dict = $"{{'descr': '{DescrOf(array.DataType)}', 'fortran_order': False, 'shape': {shapeText}, }}";
        var major = dict.Length + 1 + 10 > ushort.MaxValue ? 2 : 1;
        var prefixLength = Magic.Length + 2 + (major == 1 ? 2 : 4);
        var total = prefixLength + dict.Length + 1;
        var padded = (total + Alignment - 1) / Alignment * Alignment;
        var header = dict + new string(' ', padded - total) + "\n";

        stream.Write(Magic);
        stream.WriteByte((byte)major);
        stream.WriteByte(0);
        if (major == 1)
        {
            stream.WriteByte((byte)(header.Length & 0xFF));
            stream.WriteByte((byte)(header.Length >> 8));
        }
        else
        {
            Span<byte> len = stackalloc byte[4];
            System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(len, (uint)header.Length);
            stream.Write(len);
        }
        stream.Write(Encoding.Latin1.GetBytes(header));
        stream.Write(array.Bytes);
    }

    /// <summary>True when <paramref name="type"/> can be stored in a .npy file by this reader/writer.</summary>
    public static bool IsSupported(DataType type) => type is DataType.Float or DataType.Double or DataType.Float16
        or DataType.Int8 or DataType.UInt8 or DataType.Int16 or DataType.UInt16 or DataType.Int32 or DataType.UInt32
        or DataType.Int64 or DataType.UInt64 or DataType.Bool;

    /// <summary>The descr string numpy writes for <paramref name="type"/> ('&lt;f4', '|u1', ...).</summary>
    public static string DescrOf(DataType type) => type switch
    {
        DataType.Float => "<f4",
        DataType.Double => "<f8",
        DataType.Float16 => "<f2",
        DataType.Int8 => "|i1",
        DataType.UInt8 => "|u1",
        DataType.Int16 => "<i2",
        DataType.UInt16 => "<u2",
        DataType.Int32 => "<i4",
        DataType.UInt32 => "<u4",
        DataType.Int64 => "<i8",
        DataType.UInt64 => "<u8",
        DataType.Bool => "|b1",
        _ => throw new ArgumentException($"element type {type} has no .npy equivalent", nameof(type)),
    };

    internal static FileStream OpenRead(string path)
    {
        if (Directory.Exists(path))
            throw new DataFormatException($"{path}: is a directory, expected a file");
        if (!File.Exists(path))
            throw new FileNotFoundException($"{path}: file not found", path);
        // A FIFO would block the open until a writer comes; a device could be endless.
        if (FileIdentity.Stat(path).Kind is var kind && kind != FileKind.Regular)
            throw new DataFormatException($"{path}: is a {FileIdentity.Describe(kind)}, not a regular file; refused");
        return new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
    }

    private static (DataType Type, bool Swap, long[] Shape) ParseHeader(string header, string source)
    {
        Dictionary<string, object?> dict;
        try
        {
            dict = new PyLiteralParser(header).ParseDict();
        }
        catch (FormatException ex)
        {
            throw new DataFormatException($"{source}: malformed .npy header ({ex.Message}): {Shorten(header)}");
        }
        if (!dict.TryGetValue("descr", out var descrObj))
            throw new DataFormatException($"{source}: .npy header has no 'descr' key: {Shorten(header)}");
        if (!dict.TryGetValue("shape", out var shapeObj))
            throw new DataFormatException($"{source}: .npy header has no 'shape' key: {Shorten(header)}");
        if (!dict.TryGetValue("fortran_order", out var fortranObj) || fortranObj is not bool fortran)
            throw new DataFormatException($"{source}: .npy header has no boolean 'fortran_order': {Shorten(header)}");
        if (descrObj is not string descr)
            throw new DataFormatException(
                $"{source}: structured arrays (record dtypes) are not supported; save each field as its own array");
        if (fortran)
            throw new DataFormatException(
                $"{source}: Fortran-order arrays are not supported; save with np.ascontiguousarray(a) first");
        if (shapeObj is not List<object?> dims || dims.Any(d => d is not long))
            throw new DataFormatException($"{source}: .npy 'shape' is not a tuple of integers: {Shorten(header)}");
        var shape = dims.Select(d => (long)d!).ToArray();
        if (shape.Any(d => d < 0))
            throw new DataFormatException($"{source}: negative dimension in shape ({FormatShape(shape)})");
        var (type, swap) = ParseDescr(descr, source);
        return (type, swap, shape);
    }

    private static (DataType Type, bool Swap) ParseDescr(string descr, string source)
    {
        if (descr.Length < 2)
            throw new DataFormatException($"{source}: unsupported dtype '{descr}'");
        var order = descr[0];
        var body = descr;
        if (order is '<' or '>' or '|' or '=')
            body = descr[1..];
        else
            order = '=';
        if (body.StartsWith('O'))
            throw new DataFormatException(
                $"{source}: object arrays (dtype '{descr}') cannot be read: they hold pickled Python objects; save a numeric array");
        DataType? type = body switch
        {
            "f2" => DataType.Float16,
            "f4" => DataType.Float,
            "f8" => DataType.Double,
            "i1" => DataType.Int8,
            "u1" => DataType.UInt8,
            "i2" => DataType.Int16,
            "u2" => DataType.UInt16,
            "i4" => DataType.Int32,
            "u4" => DataType.UInt32,
            "i8" => DataType.Int64,
            "u8" => DataType.UInt64,
            "b1" or "?" => DataType.Bool,
            _ => null,
        };
        if (type is not { } t)
            throw new DataFormatException(
                $"{source}: unsupported dtype '{descr}' (supported: f2 f4 f8 i1 u1 i2 u2 i4 u4 i8 u8 b1)");
        var fileIsBig = order == '>' || (order == '=' && !BitConverter.IsLittleEndian);
        var swap = fileIsBig && NpyArray.ElementSize(t) > 1;
        return (t, swap);
    }

    internal static void SwapInPlace(Span<byte> data, int elementSize)
    {
        if (elementSize <= 1)
            return;
        for (var i = 0; i + elementSize <= data.Length; i += elementSize)
            data.Slice(i, elementSize).Reverse();
    }

    private static byte[] ReadLittle(byte[] bytes)
    {
        if (!BitConverter.IsLittleEndian)
            Array.Reverse(bytes);
        return bytes;
    }

    private static long ReadFully(Stream stream, Span<byte> buffer)
    {
        long total = 0;
        while (total < buffer.Length)
        {
            var n = stream.Read(buffer[(int)total..]);
            if (n == 0)
                break;
            total += n;
        }
        return total;
    }

    private static string FormatShape(long[] shape) => string.Join(", ", shape);

    private static string Shorten(string text) =>
        (text.Length > 120 ? text[..120] + "..." : text).Trim().ReplaceLineEndings(" ");
}

/// <summary>The subset of Python literal syntax that .npy headers use: dicts, tuples, lists, strings, ints, booleans.</summary>
internal sealed class PyLiteralParser(string text)
{
    private int _pos;

    public Dictionary<string, object?> ParseDict()
    {
        SkipSpace();
        if (ParseValue() is not Dictionary<string, object?> dict)
            throw new FormatException("header is not a dict literal");
        SkipSpace();
        if (_pos != text.Length)
            throw new FormatException($"unexpected text after the dict at offset {_pos}");
        return dict;
    }

    private object? ParseValue()
    {
        SkipSpace();
        if (_pos >= text.Length)
            throw new FormatException("unexpected end of header");
        var c = text[_pos];
        switch (c)
        {
            case '{':
            {
                _pos++;
                var dict = new Dictionary<string, object?>(StringComparer.Ordinal);
                while (true)
                {
                    SkipSpace();
                    if (Peek() == '}') { _pos++; return dict; }
                    if (ParseValue() is not string key)
                        throw new FormatException($"dict key at offset {_pos} is not a string");
                    SkipSpace();
                    Expect(':');
                    dict[key] = ParseValue();
                    SkipSpace();
                    if (Peek() == ',') { _pos++; continue; }
                    Expect('}');
                    return dict;
                }
            }
            case '(' or '[':
            {
                var close = c == '(' ? ')' : ']';
                _pos++;
                var items = new List<object?>();
                while (true)
                {
                    SkipSpace();
                    if (Peek() == close) { _pos++; return items; }
                    items.Add(ParseValue());
                    SkipSpace();
                    if (Peek() == ',') { _pos++; continue; }
                    Expect(close);
                    return items;
                }
            }
            case '\'' or '"':
            {
                _pos++;
                var sb = new StringBuilder();
                while (_pos < text.Length && text[_pos] != c)
                {
                    if (text[_pos] == '\\' && _pos + 1 < text.Length)
                        _pos++;
                    sb.Append(text[_pos++]);
                }
                Expect(c);
                return sb.ToString();
            }
            default:
            {
                var start = _pos;
                while (_pos < text.Length && (char.IsLetterOrDigit(text[_pos]) || text[_pos] is '-' or '+' or '_'))
                    _pos++;
                var token = text[start.._pos];
                if (token == "True") return true;
                if (token == "False") return false;
                if (token == "None") return null;
                // Old numpy versions wrote long dimensions with an L suffix.
                var digits = token.EndsWith('L') ? token[..^1] : token;
                if (long.TryParse(digits, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var v))
                    return v;
                throw new FormatException($"unexpected token '{(token.Length > 0 ? token : c.ToString())}' at offset {start}");
            }
        }
    }

    private char Peek() => _pos < text.Length ? text[_pos] : '\0';

    private void Expect(char c)
    {
        if (Peek() != c)
            throw new FormatException($"expected '{c}' at offset {_pos}");
        _pos++;
    }

    private void SkipSpace()
    {
        while (_pos < text.Length && char.IsWhiteSpace(text[_pos]))
            _pos++;
    }
}
