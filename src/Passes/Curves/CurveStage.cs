using OnnxQuant.Frontend;
using OnnxQuant.Passes.Calibration;
using OnnxQuant.Passes.Pipeline;
using OnnxQuant.Passes.Rewrite;
using OnnxQuant.Passes.Units;
using OnnxQuant.Runtime;

namespace OnnxQuant.Passes.Curves;

/// <summary>
/// The curves of every unit: from --curves-file when given, from the cache when the same canonical model, samples and curve-changing options were
/// measured before, else measured (and stored).
/// </summary>
public static class CurveStage
{
    /// <param name="cutCurves">The measurer of exact and gain curves on graph cuts (fed by the calibration pass); null for fast curves.</param>
    /// <param name="keyParts">Every option that changes a curve (<c>CompileOptions.CurveKey</c>).</param>
    public static CurveSet Run(Model canonical, IReadOnlyList<QuantUnit> units, IReadOnlyList<string> features,
        CalibrationSet data, int samples, string dataHash, CalibrationTable? calibration, CurveOptions options,
        RewriteOptions storage, ExecutionOptions execution, IEnumerable<string> keyParts, IProgressSink progress,
        PinnedCurves? pinned = null, CutCurveMeasurer? cutCurves = null)
    {
        if (pinned is not null)
            return pinned.ToCurveSet(options.Mode);
        CurveCache? cache = options.CacheDir is { } dir ? new CurveCache(dir) : null;
        var key = CurveCache.Key(Hashing.Sha256Hex(ModelIO.ToBytes(canonical)), dataHash, keyParts);
        var unitKeys = units.Select(u => (u.Name, u.Size)).ToList();
        string? note = null;
        if (cache?.TryLoad(key, unitKeys, options.CandidateBits, out note) is { } cached)
        {
            progress.Note($"curves: loaded from cache {cache.PathOf(key)}");
            return new CurveSet(cached, options.Mode, true, 0);
        }
        if (note is not null)
            progress.Note(note);
        var set = cutCurves?.Measure(data, execution.Measurement(), progress)
            ?? CurveMeasurer.Measure(canonical, units, features, data, samples, calibration, options, storage,
                execution.RunBatch, execution.Measurement(), progress);
        if (cache is not null && !cache.TryStore(key, set.Curves, out var stored))
            progress.Note(stored!);
        return set;
    }
}
