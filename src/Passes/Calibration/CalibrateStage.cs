using OnnxQuant.Frontend;
using OnnxQuant.Passes.Pipeline;
using OnnxQuant.Runtime;

namespace OnnxQuant.Passes.Calibration;

/// <summary>
/// Calibrates the activations entering quantized layers, and collects their per-channel second moments when the
/// curves need them, and feeds a tap (the gain curves' input rows) with the same pass. Skipped (null) when
/// activations stay float and neither moments nor a tap are needed.
/// </summary>
public static class CalibrateStage
{
    /// <param name="activations">Each activation tensor entering a quantized layer, with its channel axis.</param>
    /// <param name="rangesOnly">More tensors whose range is wanted (no moments).</param>
    public static CalibrationTable? Run(Model canonical, IReadOnlyList<(string Tensor, int ChannelAxis)> activations,
        CalibrationSet data, int samples, CalibrationOptions options, bool needMoments, ExecutionOptions execution,
        IProgressSink progress, ICalibrationTap? tap = null, IReadOnlyList<string>? rangesOnly = null, FloatRunRequest? floatRuns = null)
    {
        if (options.ActBits == 0 && !needMoments && tap is null)
            return null;
        var targets = activations.Select(a => new CalibrationTarget(a.Tensor, needMoments ? a.ChannelAxis : null)).ToList();
        // Tensors that only need a range (quantized outputs of the speed target), after the layer inputs.
        foreach (var tensor in rangesOnly ?? [])
            if (targets.All(t => t.Tensor != tensor))
                targets.Add(new CalibrationTarget(tensor, null));
        using var stage = progress.Begin("calibrate", samples);
        var table = Calibrator.Run(canonical, data, samples, targets, options.ActCalibration, Math.Max(2, options.ActBits == 0 ? 8 : options.ActBits),
            execution.Instrumentation(), execution.RunBatch, stage, tap, floatRuns);
        // The whole tensors the runs returned are garbage now, gigabytes of large-object heap on a full-size model that
        // the runtime would otherwise keep resident through the curve stage: give them back before it starts.
        GC.Collect(GC.MaxGeneration, GCCollectionMode.Aggressive, blocking: true, compacting: true);
        return table;
    }
}
