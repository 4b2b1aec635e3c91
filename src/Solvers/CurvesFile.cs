using System.Text;
using System.Text.Json;

namespace OnnxQuant.Solvers;

/// <summary>
/// The curves file the compiler writes and <c>onnxquant solve</c> reads (schema <c>onnxquant.curves/1</c>):
/// <code>
/// {"schema": "onnxquant.curves/1",
///  "units": [{"name": "blocks.0.attn.qkv", "size": 1769472, "bits": [2,3,4,5,6,8],
///             "distortion": [..one per bit width..], "pinned_bits": null, "allowed_bits": null}]}
/// </code>
/// <c>pinned_bits</c> and <c>allowed_bits</c> are optional (null or absent = none); so is <c>tied_to</c>, the unit
/// whose width a unit applying the same weight takes (<see cref="TiedCurves"/>), written only where set, and <c>gain</c>, the
/// measured propagation gain of a gain curve (<see cref="UnitCurve.Gain"/>), which prices the unit's input quantization. Unknown keys are rejected so a
/// misspelt field is not silently ignored. Output is deterministic: fixed key order, shortest round-trip numbers,
/// "\n" line ends, so identical curves give identical bytes.
/// </summary>
public static class CurvesFile
{
    public const string Schema = "onnxquant.curves/1";

    private static readonly string[] UnitKeys = ["name", "size", "bits", "distortion", "pinned_bits", "allowed_bits", "tied_to", "gain"];

    /// <summary>Reads and checks a curves file (structure and types; curve values are checked by <see cref="AllocationProblem"/>).</summary>
    /// <exception cref="SolverException">The file is not valid JSON or does not follow the schema.</exception>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    public static IReadOnlyList<UnitCurve> Read(string path)
    {
        if (!File.Exists(path))
            throw new FileNotFoundException($"curves file '{path}' does not exist", path);
        return Parse(File.ReadAllBytes(path), path);
    }

    /// <summary>Parses curves JSON; <paramref name="source"/> names it in error messages.</summary>
    public static IReadOnlyList<UnitCurve> Parse(ReadOnlySpan<byte> utf8Json, string source = "curves")
    {
        JsonDocument document;
        try
        {
            var bytes = utf8Json.ToArray();
            document = JsonDocument.Parse(bytes, new JsonDocumentOptions { MaxDepth = 16 });
        }
        catch (JsonException ex)
        {
            var where = ex.LineNumber is { } line ? $" at line {line + 1}, byte {ex.BytePositionInLine + 1}" : "";
            throw Bad(source, $"is not valid JSON{where}: {FirstSentence(ex.Message)}", ex);
        }
        using (document)
        {
            var root = document.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
                throw Bad(source, $"must hold a JSON object with \"schema\" and \"units\", found a {Kind(root)}");
            if (!root.TryGetProperty("schema", out var schema) || schema.ValueKind != JsonValueKind.String)
                throw Bad(source, $"has no \"schema\" string: expected \"schema\": \"{Schema}\"");
            if (schema.GetString() != Schema)
                throw Bad(source, $"has schema \"{schema.GetString()}\"; this version reads \"{Schema}\"");
            foreach (var property in root.EnumerateObject())
                if (property.Name is not ("schema" or "units"))
                    throw Bad(source, $"has an unknown top-level key \"{property.Name}\" (expected \"schema\" and \"units\")");
            if (!root.TryGetProperty("units", out var units) || units.ValueKind != JsonValueKind.Array)
                throw Bad(source, "has no \"units\" array");

            var result = new List<UnitCurve>(units.GetArrayLength());
            var index = 0;
            foreach (var unit in units.EnumerateArray())
            {
                result.Add(ReadUnit(unit, $"units[{index}]", source));
                index++;
            }
            return result;
        }
    }

    /// <summary>Parses curves JSON text.</summary>
    public static IReadOnlyList<UnitCurve> Parse(string json, string source = "curves") =>
        Parse(Encoding.UTF8.GetBytes(json), source);

    /// <summary>Writes <paramref name="units"/> as a curves document.</summary>
    /// <exception cref="SolverException">A value cannot be represented (non-finite distortion, mismatched lengths).</exception>
    public static void Write(Stream stream, IReadOnlyList<UnitCurve> units)
    {
        ArgumentNullException.ThrowIfNull(units);
        foreach (var u in units)
        {
            if (u.Bits.Count != u.Distortion.Count)
                throw new SolverException(SolverErrorKind.InvalidCurve,
                    $"unit '{u.Name}' has {u.Bits.Count} bit widths but {u.Distortion.Count} distortion values: they must pair up one to one");
            foreach (var d in u.Distortion)
                if (!double.IsFinite(d))
                    throw new SolverException(SolverErrorKind.InvalidCurve,
                        $"unit '{u.Name}' has distortion {d}: JSON cannot hold non-finite values; re-measure the curve");
        }
        using var writer = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true, NewLine = "\n" });
        writer.WriteStartObject();
        writer.WriteString("schema", Schema);
        writer.WriteStartArray("units");
        foreach (var u in units)
        {
            writer.WriteStartObject();
            writer.WriteString("name", u.Name);
            writer.WriteNumber("size", u.Size);
            writer.WriteStartArray("bits");
            foreach (var b in u.Bits)
                writer.WriteNumberValue(b);
            writer.WriteEndArray();
            writer.WriteStartArray("distortion");
            foreach (var d in u.Distortion)
                writer.WriteNumberValue(d);
            writer.WriteEndArray();
            if (u.PinnedBits is { } pinned)
                writer.WriteNumber("pinned_bits", pinned);
            else
                writer.WriteNull("pinned_bits");
            if (u.AllowedBits is { } allowed)
            {
                writer.WriteStartArray("allowed_bits");
                foreach (var b in allowed)
                    writer.WriteNumberValue(b);
                writer.WriteEndArray();
            }
            if (u.TiedTo is { } tied)
                writer.WriteString("tied_to", tied);
            if (u.Gain is { } gain)
            {
                if (!double.IsFinite(gain) || gain < 0)
                    throw new SolverException(SolverErrorKind.InvalidCurve, $"unit '{u.Name}' has gain {gain}: a gain is finite and non-negative");
                writer.WriteNumber("gain", gain);
            }
            writer.WriteEndObject();
        }
        writer.WriteEndArray();
        writer.WriteEndObject();
        writer.Flush();
        stream.WriteByte((byte)'\n');
    }

    /// <summary>The curves document as a string (same bytes as <see cref="Write(Stream, IReadOnlyList{UnitCurve})"/>).</summary>
    public static string ToJson(IReadOnlyList<UnitCurve> units)
    {
        using var stream = new MemoryStream();
        Write(stream, units);
        return Encoding.UTF8.GetString(stream.ToArray());
    }

    /// <summary>Writes the file atomically: a temporary file beside it, then a rename.</summary>
    public static void WriteFile(string path, IReadOnlyList<UnitCurve> units)
    {
        var full = Path.GetFullPath(path);
        var temp = full + $".tmp-{Environment.ProcessId}";
        try
        {
            using (var stream = new FileStream(temp, FileMode.Create, FileAccess.Write, FileShare.None))
                Write(stream, units);
            File.Move(temp, full, overwrite: true);
        }
        finally
        {
            if (File.Exists(temp))
                File.Delete(temp);
        }
    }

    private static UnitCurve ReadUnit(JsonElement unit, string where, string source)
    {
        if (unit.ValueKind != JsonValueKind.Object)
            throw Bad(source, $"{where} must be an object, found a {Kind(unit)}");
        foreach (var property in unit.EnumerateObject())
            if (Array.IndexOf(UnitKeys, property.Name) < 0)
                throw Bad(source, $"{where} has an unknown key \"{property.Name}\" (expected {string.Join(", ", UnitKeys)})");

        if (!unit.TryGetProperty("name", out var nameElement) || nameElement.ValueKind != JsonValueKind.String)
            throw Bad(source, $"{where} needs a \"name\" string");
        var name = nameElement.GetString()!;
        var at = $"{where} ('{name}')";
        if (!unit.TryGetProperty("size", out var sizeElement) || sizeElement.ValueKind != JsonValueKind.Number
            || !sizeElement.TryGetInt64(out var size))
            throw Bad(source, $"{at} needs \"size\": a whole number of weights");
        var bits = IntArray(unit, "bits", at, source, required: true)!;
        var distortion = DoubleArray(unit, "distortion", at, source);
        int? pinned = null;
        if (unit.TryGetProperty("pinned_bits", out var pinnedElement) && pinnedElement.ValueKind != JsonValueKind.Null)
        {
            if (pinnedElement.ValueKind != JsonValueKind.Number || !pinnedElement.TryGetInt32(out var p))
                throw Bad(source, $"{at} \"pinned_bits\" must be a whole number or null");
            pinned = p;
        }
        var allowed = IntArray(unit, "allowed_bits", at, source, required: false);
        string? tiedTo = null;
        if (unit.TryGetProperty("tied_to", out var tiedElement) && tiedElement.ValueKind != JsonValueKind.Null)
            tiedTo = tiedElement.ValueKind == JsonValueKind.String ? tiedElement.GetString() : throw Bad(source, $"{at} \"tied_to\" must be a unit name or null");
        double? gain = null;
        if (unit.TryGetProperty("gain", out var gainElement) && gainElement.ValueKind != JsonValueKind.Null)
        {
            if (gainElement.ValueKind != JsonValueKind.Number || !gainElement.TryGetDouble(out var g) || !double.IsFinite(g) || g < 0)
                throw Bad(source, $"{at} \"gain\" must be a non-negative number or null, found {gainElement.GetRawText()}");
            gain = g;
        }
        return new UnitCurve(name, size, bits, distortion, pinned) { AllowedBits = allowed, TiedTo = tiedTo, Gain = gain };
    }

    private static int[]? IntArray(JsonElement unit, string key, string at, string source, bool required)
    {
        if (!unit.TryGetProperty(key, out var element) || element.ValueKind == JsonValueKind.Null)
            return required ? throw Bad(source, $"{at} needs a \"{key}\" array of whole numbers") : null;
        if (element.ValueKind != JsonValueKind.Array)
            throw Bad(source, $"{at} \"{key}\" must be an array of whole numbers, found a {Kind(element)}");
        var values = new int[element.GetArrayLength()];
        var i = 0;
        foreach (var item in element.EnumerateArray())
        {
            if (item.ValueKind != JsonValueKind.Number || !item.TryGetInt32(out values[i]))
                throw Bad(source, $"{at} \"{key}\"[{i}] must be a whole number, found {item.GetRawText()}");
            i++;
        }
        return values;
    }

    private static double[] DoubleArray(JsonElement unit, string key, string at, string source)
    {
        if (!unit.TryGetProperty(key, out var element) || element.ValueKind != JsonValueKind.Array)
            throw Bad(source, $"{at} needs a \"{key}\" array of numbers (one per bit width)");
        var values = new double[element.GetArrayLength()];
        var i = 0;
        foreach (var item in element.EnumerateArray())
        {
            if (item.ValueKind != JsonValueKind.Number || !item.TryGetDouble(out values[i]) || !double.IsFinite(values[i]))
                throw Bad(source, $"{at} \"{key}\"[{i}] must be a finite number, found {item.GetRawText()}");
            i++;
        }
        return values;
    }

    private static string Kind(JsonElement e) => e.ValueKind.ToString().ToLowerInvariant();

    private static string FirstSentence(string message)
    {
        var cut = message.IndexOf(" LineNumber:", StringComparison.Ordinal);
        return (cut > 0 ? message[..cut] : message).Trim();
    }

    private static SolverException Bad(string source, string what, Exception? inner = null) =>
        new(SolverErrorKind.InvalidCurvesFile, $"curves file '{source}' {what}", inner: inner);
}
