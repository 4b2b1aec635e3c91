using System.Runtime.InteropServices;
using System.Text;

namespace OnnxQuant.Runtime.Native;

/// <summary>NUL-terminated UTF-8 strings, the only string form the C API uses on Linux.</summary>
internal static unsafe class Utf8
{
    public static string? Read(byte* text) => text == null ? null : Marshal.PtrToStringUTF8((nint)text);

    /// <summary>Encodes <paramref name="text"/> with a trailing NUL, ready to be pinned and passed as const char*.</summary>
    public static byte[] Encode(string text)
    {
        var bytes = new byte[Encoding.UTF8.GetByteCount(text) + 1];
        Encoding.UTF8.GetBytes(text, bytes);
        return bytes;
    }
}

/// <summary>
/// A block of unmanaged NUL-terminated UTF-8 strings and the array of pointers to them, for the C API's
/// `const char* const*` parameters. Freed on dispose.
/// </summary>
internal sealed unsafe class Utf8StringArray : IDisposable
{
    private readonly nint[] _strings;
    private nint* _pointers;

    public Utf8StringArray(IReadOnlyList<string> values)
    {
        _strings = new nint[values.Count];
        _pointers = (nint*)NativeMemory.Alloc((nuint)Math.Max(1, values.Count), (nuint)sizeof(nint));
        for (var i = 0; i < values.Count; i++)
        {
            _strings[i] = Marshal.StringToCoTaskMemUTF8(values[i]);
            _pointers[i] = _strings[i];
        }
    }

    public int Count => _strings.Length;

    public byte** Pointers => (byte**)_pointers;

    public void Dispose()
    {
        if (_pointers == null)
            return;
        foreach (var s in _strings)
            Marshal.FreeCoTaskMem(s);
        NativeMemory.Free(_pointers);
        _pointers = null;
    }
}
