using OnnxQuant.Frontend;
using System.IO.Compression;

namespace OnnxQuant.Data;

/// <summary>One array of an .npz archive with its name (the entry name without ".npy").</summary>
public sealed record NamedArray(string Name, NpyArray Array);

/// <summary>
/// Reads and writes NumPy's .npz archives: a zip file with one .npy entry per array (np.savez writes them stored,
/// np.savez_compressed deflated; both are read).
/// </summary>
public static class Npz
{
    // Zip timestamps are the one non-content field of an archive; fixing them makes identical arrays give identical bytes.
    private static readonly DateTimeOffset FixedTimestamp = new(1980, 1, 1, 0, 0, 0, TimeSpan.Zero);

    /// <summary>Reads every array of an .npz file, in the archive's order.</summary>
    /// <exception cref="DataFormatException">Not a zip archive, a malformed entry, or two entries with one name.</exception>
    public static IReadOnlyList<NamedArray> Read(string path)
    {
        using var stream = Npy.OpenRead(path);
        return Read(stream, path);
    }

    /// <summary>
    /// Reads only the arrays <paramref name="wanted"/> names (in the archive's order) and lists every entry's name:
    /// an array nobody asked for is never decompressed, so a small archive of huge unused entries costs nothing.
    /// </summary>
    public static IReadOnlyList<NamedArray> Read(string path, Func<string, bool> wanted, out IReadOnlyList<string> names)
    {
        using var stream = Npy.OpenRead(path);
        var all = new List<string>();
        var result = Read(stream, path, wanted, all);
        names = all;
        return result;
    }

    /// <summary>Reads every array of an .npz archive held in <paramref name="stream"/>.</summary>
    public static IReadOnlyList<NamedArray> Read(Stream stream, string source = "<stream>") => Read(stream, source, _ => true, null);

    /// <summary>
    /// As <see cref="Read(string, Func{string, bool}, out IReadOnlyList{string})"/>, but an array of more than
    /// <paramref name="memoryBytes"/> is decompressed piece by piece into a new file named by <paramref name="spillPath"/>
    /// (see <see cref="Npy.ReadRows"/>) instead of into memory.
    /// </summary>
    public static IReadOnlyList<(string Name, INpyRows Array)> ReadRows(string path, Func<string, bool> wanted, long memoryBytes,
        Func<string> spillPath, out IReadOnlyList<string> names)
    {
        using var stream = Npy.OpenRead(path);
        var all = new List<string>();
        var result = new List<(string, INpyRows)>();
        try
        {
            Visit(stream, path, wanted, all, (name, entry, source) => result.Add((name, Npy.ReadRows(entry, source, memoryBytes, spillPath))));
        }
        catch
        {
            foreach (var (_, array) in result)
                array.Dispose();
            throw;
        }
        names = all;
        return result;
    }

    private static IReadOnlyList<NamedArray> Read(Stream stream, string source, Func<string, bool> wanted, List<string>? names)
    {
        var result = new List<NamedArray>();
        Visit(stream, source, wanted, names, (name, entry, entrySource) => result.Add(new NamedArray(name, Npy.Read(entry, entrySource))));
        return result;
    }

    /// <summary>Hands every wanted entry's stream to <paramref name="read"/>, in the archive's order.</summary>
    private static void Visit(Stream stream, string source, Func<string, bool> wanted, List<string>? names, Action<string, Stream, string> read)
    {
        ZipArchive zip;
        try
        {
            zip = new ZipArchive(stream, ZipArchiveMode.Read, leaveOpen: true);
        }
        catch (InvalidDataException ex)
        {
            throw new DataFormatException($"{source}: not an .npz file (not a readable zip archive: {ex.Message})", ex);
        }
        using (zip)
        {
            var seen = new HashSet<string>(StringComparer.Ordinal);
            foreach (var entry in zip.Entries)
            {
                if (entry.FullName.EndsWith('/'))
                    continue; // a directory entry, not an array
                var name = entry.FullName.EndsWith(".npy", StringComparison.Ordinal) ? entry.FullName[..^4] : entry.FullName;
                if (!seen.Add(name))
                    throw new DataFormatException($"{source}: two entries are named '{name}'");
                names?.Add(name);
                if (!wanted(name))
                    continue;
                var entrySource = $"{source}:{entry.FullName}";
                try
                {
                    using var entryStream = entry.Open();
                    read(name, entryStream, entrySource);
                }
                catch (InvalidDataException ex)
                {
                    throw new DataFormatException($"{entrySource}: corrupt zip entry ({ex.Message})", ex);
                }
                catch (NotSupportedException ex)
                {
                    throw new DataFormatException($"{entrySource}: unsupported zip compression ({ex.Message}); use np.savez or np.savez_compressed", ex);
                }
            }
        }
    }

    /// <summary>Writes the arrays to <paramref name="path"/> atomically, in the given order.</summary>
    /// <param name="compress">Deflate the entries (like np.savez_compressed); stored otherwise (like np.savez).</param>
    public static void Write(string path, IEnumerable<NamedArray> arrays, bool compress = false)
    {
        var list = arrays.ToList();
        AtomicFile.Write(path, stream => Write(stream, list, compress));
    }

    /// <summary>Writes an .npz archive to <paramref name="stream"/>; identical arrays give identical bytes.</summary>
    public static void Write(Stream stream, IEnumerable<NamedArray> arrays, bool compress = false)
    {
        var seen = new HashSet<string>(StringComparer.Ordinal);
        using var zip = new ZipArchive(stream, ZipArchiveMode.Create, leaveOpen: true);
        foreach (var (name, array) in arrays)
        {
            if (string.IsNullOrEmpty(name))
                throw new ArgumentException("an .npz array needs a non-empty name", nameof(arrays));
            if (!seen.Add(name))
                throw new ArgumentException($"two arrays are named '{name}'", nameof(arrays));
            var entry = zip.CreateEntry(name + ".npy", compress ? CompressionLevel.Optimal : CompressionLevel.NoCompression);
            entry.LastWriteTime = FixedTimestamp;
            using var entryStream = entry.Open();
            Npy.Write(entryStream, array);
        }
    }
}
