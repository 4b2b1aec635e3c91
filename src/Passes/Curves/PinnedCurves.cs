using System.Globalization;
using OnnxQuant.Frontend;
using OnnxQuant.Passes.Units;
using OnnxQuant.Solvers;

namespace OnnxQuant.Passes.Curves;

/// <summary>
/// Curves given with <c>--curves-file</c> (an <c>onnxquant.curves/1</c> document, e.g. written by
/// <c>--write-curves</c> or the <c>curves</c> object of a report.json) instead of measured ones, so a build can pin
/// reviewed curves and reproduce an allocation exactly. The file must list exactly the model's units (names and
/// sizes, any order) with exactly the candidate widths; curves come back in the model's unit order with widths
/// ascending, as measured curves are, so equivalent files give identical artifacts.
/// </summary>
/// <param name="Path">The file as given.</param>
/// <param name="Sha256">SHA-256 of the file's bytes (lowercase hex).</param>
/// <param name="Curves">One curve per unit, in the model's unit order.</param>
/// <param name="Note">What the report says about where the curves came from.</param>
public sealed record PinnedCurves(string Path, string Sha256, IReadOnlyList<UnitCurve> Curves, string Note)
{
    /// <summary>
    /// Reads and checks <see cref="CurveOptions.CurvesFile"/> against <paramref name="units"/> and the candidate
    /// widths; null when no file is given.
    /// </summary>
    /// <exception cref="CompileException">Missing or malformed file, or one that does not match the model or --bits.</exception>
    public static PinnedCurves? Load(CurveOptions options, IReadOnlyList<QuantUnit> units)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(units);
        if (options.CurvesFile is not { } path)
            return null;
        byte[] bytes;
        try
        {
            FileIdentity.RequireRegularFile(path, "--curves-file");
            bytes = File.ReadAllBytes(path);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new CompileException(ex is FileNotFoundException or DirectoryNotFoundException
                ? $"--curves-file {path}: file not found"
                : $"--curves-file {path}: cannot be read ({ex.Message})");
        }
        IReadOnlyList<UnitCurve> parsed;
        try
        {
            parsed = CurvesFile.Parse(bytes, path);
        }
        catch (SolverException ex)
        {
            throw new CompileException(ex.Message);
        }

        var byName = new Dictionary<string, UnitCurve>(StringComparer.Ordinal);
        foreach (var curve in parsed)
            if (!byName.TryAdd(curve.Name, curve))
                throw Mismatch(path, $"lists unit '{curve.Name}' twice");
        var modelNames = units.Select(u => u.Name).ToHashSet(StringComparer.Ordinal);
        if (parsed.FirstOrDefault(c => !modelNames.Contains(c.Name)) is { } extra)
            throw Mismatch(path, $"has unit '{extra.Name}', which the model does not have ({units.Count} units; " +
                                 "curves are for another model, --granularity or --exclude)");
        if (units.FirstOrDefault(u => !byName.ContainsKey(u.Name)) is { } missing)
            throw Mismatch(path, $"has no curve for unit '{missing.Name}' ({parsed.Count} curves for {units.Count} units; " +
                                 "curves are for another model, --granularity or --exclude)");

        var bits = options.CandidateBits.OrderBy(b => b).ToArray();
        var ordered = new List<UnitCurve>(units.Count);
        foreach (var unit in units)
        {
            var curve = byName[unit.Name];
            if (curve.Size != unit.Size)
                throw Mismatch(path, $"gives unit '{unit.Name}' size {curve.Size}, but the model's unit has {unit.Size} weights");
            if (curve.PinnedBits is not null || curve.AllowedBits is not null)
                throw Mismatch(path, $"pins or restricts the widths of unit '{unit.Name}' (pinned_bits/allowed_bits); compile takes plain curves: use --bits, --exclude or onnxquant solve");
            if (!curve.Bits.Order().SequenceEqual(bits))
                throw Mismatch(path, $"gives unit '{unit.Name}' widths {Join(curve.Bits)}, but the candidate widths (--bits) are {Join(bits)}");
            if (curve.Distortion.FirstOrDefault(d => d < 0) is var negative && negative < 0)
                throw Mismatch(path, $"gives unit '{unit.Name}' negative distortion {negative.ToString("R", CultureInfo.InvariantCulture)}: distortion must be non-negative");
            var distortion = bits.Select(b => curve.Distortion[IndexOf(curve.Bits, b)]).ToArray();
            ordered.Add(new UnitCurve(unit.Name, unit.Size, bits, distortion) { Gain = curve.Gain });
        }
        var hash = Hashing.Sha256Hex(bytes);
        return new PinnedCurves(path, hash, ordered,
            $"curves: read from --curves-file {System.IO.Path.GetFileName(path)} (sha256 {hash[..16]}...), not measured");
    }

    /// <summary>The curves as the compiler's curve set (no runs, not from the cache).</summary>
    public CurveSet ToCurveSet(CurveMode mode) => new(Curves, mode, false, 0);

    private static int IndexOf(IReadOnlyList<int> list, int value)
    {
        for (var i = 0; i < list.Count; i++)
            if (list[i] == value)
                return i;
        return -1;
    }

    private static string Join(IEnumerable<int> bits) => string.Join(",", bits);

    private static CompileException Mismatch(string path, string what) => new($"--curves-file {path} {what}");
}
