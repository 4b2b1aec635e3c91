using OnnxQuant.Frontend;
using OnnxQuant.Passes.Calibration;
using OnnxQuant.Passes.Pipeline;
using OnnxQuant.Passes.Rewrite;
using OnnxQuant.Passes.Units;
using OnnxQuant.Runtime;

namespace OnnxQuant.Passes.Curves;

/// <summary>
/// The curves of every unit: from --curves-file when given, from the cache when the same canonical model, samples and
/// curve-changing options were measured before (both looked up before calibration, so that a known curve set costs
/// the calibration pass nothing), else measured (and stored).
/// </summary>
public static class CurveStage
{
    /// <summary>The curves without measuring: pinned, or cached; null when they must be measured.</summary>
    /// <param name="keyParts">Every option that changes a curve (<c>CompileOptions.CurveKey</c>).</param>
    public static CurveSet? Lookup(Model canonical, IReadOnlyList<QuantUnit> units, string dataHash, CurveOptions options,
        IEnumerable<string> keyParts, IProgressSink progress, PinnedCurves? pinned)
    {
        if (pinned is not null)
            return pinned.ToCurveSet(options.Mode);
        if (options.CacheDir is not { } dir)
            return null;
        var cache = new CurveCache(dir);
        var key = Key(canonical, dataHash, keyParts);
        var unitKeys = units.Select(u => (u.Name, u.Size)).ToList();
        if (cache.TryLoad(key, unitKeys, options.CandidateBits, out var note) is { } cached)
        {
            progress.Note($"curves: loaded from cache {cache.PathOf(key)}");
            return new CurveSet(cached, options.Mode, true, 0);
        }
        if (note is not null)
            progress.Note(note);
        return null;
    }

    /// <summary>Measures the curves (the cache missed) and stores them in the cache.</summary>
    /// <param name="cutCurves">The measurer of exact and gain curves on graph cuts (fed by the calibration pass); null for fast curves.</param>
    public static CurveSet Measure(Model canonical, IReadOnlyList<QuantUnit> units, IReadOnlyList<string> features,
        CalibrationSet data, int samples, string dataHash, CalibrationTable? calibration, CurveOptions options,
        RewriteOptions storage, ExecutionOptions execution, IEnumerable<string> keyParts, IProgressSink progress,
        CutCurveMeasurer? cutCurves, IReadOnlyList<double>? featureWeights = null)
    {
        var set = cutCurves?.Measure(data, execution.Measurement(), progress)
            ?? CurveMeasurer.Measure(canonical, units, features, data, samples, calibration, options, storage,
                execution.RunBatch, execution.Measurement(), progress, featureWeights);
        if (options.CacheDir is { } dir && !new CurveCache(dir).TryStore(Key(canonical, dataHash, keyParts), set.Curves, out var stored))
            progress.Note(stored!);
        return set;
    }

    private static string Key(Model canonical, string dataHash, IEnumerable<string> keyParts) =>
        CurveCache.Key(Hashing.Sha256Hex(ModelIO.ToBytes(canonical)), dataHash, keyParts);
}
