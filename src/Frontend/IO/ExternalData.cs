using Microsoft.Win32.SafeHandles;

namespace OnnxQuant.Frontend;

/// <summary>
/// An open external data file. The handle is opened when the model is loaded, so that a later save which replaces the
/// file (temp file + rename) cannot change what lazily loaded tensors read.
/// </summary>
internal sealed class ExternalDataFile
{
    private ExternalDataFile(string baseDirectory, string fullPath, SafeFileHandle handle, long length)
    {
        BaseDirectory = baseDirectory;
        FullPath = fullPath;
        Handle = handle;
        Length = length;
    }

    /// <summary>The model's folder, which the file must lie in.</summary>
    public string BaseDirectory { get; }
    public string FullPath { get; }
    public SafeFileHandle Handle { get; }
    public long Length { get; }

    public static ExternalDataFile Open(string baseDirectory, string fullPath, string tensorName)
    {
        try
        {
            // A FIFO would block the open until a writer comes; a device could be endless.
            FileIdentity.RequireRegularFile(fullPath, $"external data file of tensor '{tensorName}'");
            var handle = File.OpenHandle(fullPath, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
            return new ExternalDataFile(baseDirectory, fullPath, handle, RandomAccess.GetLength(handle));
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new FrontendException(
                $"external data file '{fullPath}' of tensor '{tensorName}' cannot be opened: {ex.Message}", ex);
        }
    }
}

/// <summary>Where a tensor's data lies in an external file: the location as written in the model, offset and length.</summary>
public sealed class ExternalDataRef
{
    internal ExternalDataRef(ExternalDataFile file, string location, long offset, long length)
    {
        File = file;
        Location = location;
        Offset = offset;
        Length = length;
    }

    internal ExternalDataFile File { get; }

    /// <summary>The path relative to the model's folder, as the model names it.</summary>
    public string Location { get; }
    public long Offset { get; }
    public long Length { get; }

    /// <summary>The absolute path the location resolved to.</summary>
    public string FullPath => File.FullPath;

    internal ReadOnlyMemory<byte> ReadAll(string tensorName)
    {
        if (Length > Array.MaxLength)
            throw new FrontendException(
                $"tensor '{tensorName}' has {Length} bytes of external data, more than one in-memory array can hold");
        var buffer = GC.AllocateUninitializedArray<byte>((int)Length);
        ReadInto(buffer, Offset, tensorName);
        return buffer;
    }

    internal void CopyTo(Stream destination, string tensorName)
    {
        const int chunk = 1 << 20;
        var buffer = new byte[(int)Math.Min(chunk, Math.Max(Length, 1))];
        for (long done = 0; done < Length;)
        {
            var n = (int)Math.Min(buffer.Length, Length - done);
            ReadInto(buffer.AsSpan(0, n), Offset + done, tensorName);
            destination.Write(buffer, 0, n);
            done += n;
        }
    }

    private void ReadInto(Span<byte> target, long position, string tensorName)
    {
        try
        {
            while (target.Length > 0)
            {
                var n = RandomAccess.Read(File.Handle, target, position);
                if (n == 0)
                    throw new FrontendException(
                        $"external data of tensor '{tensorName}' ends early: '{File.FullPath}' is shorter than offset " +
                        $"{Offset} + length {Length}");
                target = target[n..];
                position += n;
            }
        }
        catch (IOException ex)
        {
            throw new FrontendException($"cannot read external data of tensor '{tensorName}' from '{File.FullPath}': {ex.Message}", ex);
        }
    }
}
