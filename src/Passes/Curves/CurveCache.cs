using System.Text;
using System.Text.Json;
using OnnxQuant.Frontend;
using OnnxQuant.Data;
using OnnxQuant.Solvers;

namespace OnnxQuant.Passes.Curves;

/// <summary>
/// Error curves on disk, one file per key, where the key hashes the canonical model, the calibration samples and every
/// option that changes a curve. Compiling the same model at another budget (or with other activation or solver
/// options) finds them again. An entry is one header line <c>{"schema": "onnxquant.curve-cache/2", "key": ..,
/// "sha256": ..}</c> followed by the curves (<c>onnxquant.curves/1</c>) whose bytes the hash covers. The cache only
/// saves time, so it never fails a compile: an entry whose key, hash, units, sizes or widths do not match the request
/// is measured again and replaced, and a cache folder that cannot be read or written is skipped; each with a note.
/// </summary>
public sealed class CurveCache(string directory)
{
    public const string Schema = "onnxquant.curve-cache/2";

    public string Directory { get; } = directory;

    public static string Key(string modelHash, string dataHash, IEnumerable<string> optionParts)
    {
        var text = string.Join("\n", new[] { "onnxquant.curve-cache/1", modelHash, dataHash }.Concat(optionParts));
        return Hashing.Sha256Hex(text)[..32];
    }

    public string PathOf(string key) => System.IO.Path.Combine(Directory, key + ".curves.json");

    /// <summary>
    /// The cached curves for <paramref name="key"/> when the entry is intact and covers exactly these units, sizes and
    /// widths; null otherwise, with the reason in <paramref name="note"/> (null when there is simply no entry).
    /// </summary>
    public IReadOnlyList<UnitCurve>? TryLoad(string key, IReadOnlyList<(string Name, long Size)> units, IReadOnlyList<int> bits, out string? note)
    {
        note = null;
        var path = PathOf(key);
        try
        {
            var (kind, _) = FileIdentity.Stat(path);
            if (kind == FileKind.Missing)
                return null;
            if (kind != FileKind.Regular)
                return Reject(path, $"is a {FileIdentity.Describe(kind)}", out note);
            var bytes = File.ReadAllBytes(path);
            var newline = Array.IndexOf(bytes, (byte)'\n');
            if (newline < 0)
                return Reject(path, "has no header line", out note);
            using (var header = JsonDocument.Parse(bytes.AsMemory(0, newline)))
            {
                var root = header.RootElement;
                if (root.ValueKind != JsonValueKind.Object || Text(root, "schema") != Schema)
                    return Reject(path, $"is not an {Schema} entry", out note);
                if (Text(root, "key") != key)
                    return Reject(path, "was stored under another key", out note);
                if (Text(root, "sha256") != Hashing.Sha256Hex(bytes.AsSpan(newline + 1)))
                    return Reject(path, "does not match its checksum (edited or damaged)", out note);
            }
            var curves = CurvesFile.Parse(bytes.AsSpan(newline + 1), path);
            if (curves.Count != units.Count)
                return Reject(path, $"holds {curves.Count} units, the model has {units.Count}", out note);
            var wanted = bits.Order().ToArray();
            foreach (var (curve, unit) in curves.Zip(units))
            {
                if (curve.Name != unit.Name || curve.Size != unit.Size)
                    return Reject(path, $"has unit '{curve.Name}' ({curve.Size} weights) where the model has '{unit.Name}' ({unit.Size})", out note);
                if (!curve.Bits.Order().SequenceEqual(wanted) || curve.Distortion.Count != curve.Bits.Count
                    || curve.Distortion.Any(d => !double.IsFinite(d) || d < 0))
                    return Reject(path, $"has widths {string.Join(",", curve.Bits)} or values for unit '{curve.Name}' that do not fit --bits {string.Join(",", wanted)}", out note);
            }
            return curves;
        }
        catch (Exception ex) when (ex is SolverException or JsonException or IOException or UnauthorizedAccessException or FrontendException
            or InvalidOperationException or FormatException or ArgumentException)
        {
            return Reject(path, $"cannot be read ({ex.Message})", out note);
        }
    }

    /// <summary>Stores the curves; false (with the reason in <paramref name="note"/>) when the folder cannot be written.</summary>
    public bool TryStore(string key, IReadOnlyList<UnitCurve> curves, out string? note)
    {
        note = null;
        try
        {
            using var body = new MemoryStream();
            CurvesFile.Write(body, curves);
            var header = JsonSerializer.Serialize(new Dictionary<string, string>
            {
                ["schema"] = Schema, ["key"] = key, ["sha256"] = Hashing.Sha256Hex(body.ToArray()),
            });
            AtomicFile.Write(PathOf(key), stream =>
            {
                stream.Write(Encoding.UTF8.GetBytes(header + "\n"));
                body.Position = 0;
                body.CopyTo(stream);
            });
            return true;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            note = $"curve cache: cannot write {PathOf(key)} ({ex.Message}); the curves were measured and used, not cached";
            return false;
        }
    }

    /// <summary>Why the cache folder cannot be used (not a folder, cannot be created or written), or null when it can.</summary>
    public static string? Unusable(string directory)
    {
        try
        {
            var (kind, _) = FileIdentity.Stat(System.IO.Path.GetFullPath(directory));
            if (kind is not (FileKind.Missing or FileKind.Directory))
                return $"curve cache: {directory} is a {FileIdentity.Describe(kind)}, not a folder; curves are measured without the cache";
            System.IO.Directory.CreateDirectory(directory);
            var probe = System.IO.Path.Combine(directory, $".probe-{Environment.ProcessId}-{Guid.NewGuid():N}");
            using (new FileStream(probe, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1, FileOptions.DeleteOnClose)) { }
            return null;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or FrontendException or ArgumentException)
        {
            return $"curve cache: {directory} cannot be used ({ex.Message}); curves are measured without the cache";
        }
    }

    private static string? Text(JsonElement root, string name) =>
        root.TryGetProperty(name, out var value) && value.ValueKind == JsonValueKind.String ? value.GetString() : null;

    private static IReadOnlyList<UnitCurve>? Reject(string path, string reason, out string note)
    {
        note = $"curve cache: the entry {path} {reason}; measured again";
        return null;
    }
}
