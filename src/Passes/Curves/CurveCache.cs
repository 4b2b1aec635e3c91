using OnnxQuant.Frontend;
using OnnxQuant.Data;
using OnnxQuant.Solvers;

namespace OnnxQuant.Passes.Curves;

/// <summary>
/// Error curves on disk, one <c>onnxquant.curves/1</c> file per key, where the key hashes the canonical model, the
/// calibration samples and every option that changes a curve. Compiling the same model at another budget (or with
/// other activation or solver options) finds them again. A file that cannot be read or does not match the units is
/// ignored and rewritten.
/// </summary>
public sealed class CurveCache(string directory)
{
    public string Directory { get; } = directory;

    public static string Key(string modelHash, string dataHash, IEnumerable<string> optionParts)
    {
        var text = string.Join("\n", new[] { "onnxquant.curve-cache/1", modelHash, dataHash }.Concat(optionParts));
        return Hashing.Sha256Hex(text)[..32];
    }

    public string PathOf(string key) => System.IO.Path.Combine(Directory, key + ".curves.json");

    /// <summary>The cached curves for <paramref name="key"/> when they cover exactly these units and sizes.</summary>
    public IReadOnlyList<UnitCurve>? TryLoad(string key, IReadOnlyList<(string Name, long Size)> units)
    {
        var path = PathOf(key);
        if (!File.Exists(path))
            return null;
        try
        {
            var curves = CurvesFile.Read(path);
            if (curves.Count != units.Count || curves.Zip(units).Any(p => p.First.Name != p.Second.Name || p.First.Size != p.Second.Size))
                return null;
            return curves;
        }
        catch (Exception ex) when (ex is SolverException or IOException)
        {
            return null;
        }
    }

    public void Store(string key, IReadOnlyList<UnitCurve> curves) =>
        AtomicFile.Write(PathOf(key), stream => CurvesFile.Write(stream, curves));
}
