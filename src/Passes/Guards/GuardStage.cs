using System.Globalization;
using OnnxQuant.Passes.Artifact;
using OnnxQuant.Data;
using OnnxQuant.Evaluation;
using OnnxQuant.Passes.Pipeline;
using OnnxQuant.Runtime;

namespace OnnxQuant.Passes.Guards;

/// <summary>Box AP of the float model and of one target's model on the evaluation set.</summary>
public sealed record TargetAccuracy(double Target, double FloatAp, double QuantizedAp);

/// <summary>The outcome of the guards: AP per target when it was measured, and the failure message if one failed.</summary>
public sealed record GuardResult(IReadOnlyList<TargetAccuracy>? Accuracy, string? Failure)
{
    public bool Failed => Failure is not null;
}

/// <summary>The evaluation inputs, read before any work so a typo does not cost a whole compile.</summary>
public sealed record PreparedGuards(GuardOptions Options, IReadOnlyList<NamedArray>? EvalData, CocoDataset? GroundTruth);

/// <summary>
/// The accuracy guards, checked after the artifacts are written (so a failed guard still leaves them to inspect):
/// --max-distortion on every target's measured distortion, --max-drop on bbox AP points lost against the float model.
/// </summary>
public static class GuardStage
{
    public static PreparedGuards Prepare(GuardOptions options) => new(options,
        options.MeasuresAp ? Npz.Read(options.EvalData!) : null,
        options.MeasuresAp ? CocoDataset.Load(options.EvalAnnotations!) : null);

    /// <summary>Box AP of a model held in memory on the evaluation set (null when AP is not measured).</summary>
    public static double? Ap(PreparedGuards guards, byte[] model, ExecutionOptions execution)
    {
        if (guards is not { EvalData: { } data, GroundTruth: { } truth })
            return null;
        using var session = InferenceSession.Create(model, execution.Measurement());
        return DetectionEvaluator.Evaluate(session, data, truth).Bbox.AP ?? 0;
    }

    public static GuardResult Check(PreparedGuards guards, string floatModelPath, IReadOnlyList<TargetResult> targets, ExecutionOptions execution)
    {
        var failures = new List<string>();
        if (guards.Options.MaxDistortion is { } max)
        {
            var worst = targets.Select(t => t.Report).Where(r => r.Distortion.Measured > max).ToList();
            if (worst.Count > 0)
                failures.Add($"accuracy guard failed: measured distortion {string.Join(", ", worst.Select(r => $"{r.Distortion.Measured.ToString("G4", CultureInfo.InvariantCulture)} at {Allocate.AllocationOptions.FormatBits(r.TargetBits)} bits"))} exceeds --max-distortion {max.ToString(CultureInfo.InvariantCulture)}");
        }
        IReadOnlyList<TargetAccuracy>? accuracy = null;
        if (guards is { EvalData: { } data, GroundTruth: { } truth })
        {
            var sessionOptions = execution.Measurement();
            double Ap(string path)
            {
                using var session = InferenceSession.Create(path, sessionOptions);
                return DetectionEvaluator.Evaluate(session, data, truth).Bbox.AP ?? 0;
            }
            var floatAp = Ap(floatModelPath);
            accuracy = targets.Select(t => new TargetAccuracy(t.Report.TargetBits, floatAp, Ap(t.ModelPath))).ToList();
            if (guards.Options.MaxDrop is { } maxPoints)
            {
                var failed = accuracy.Where(a => (a.FloatAp - a.QuantizedAp) * 100 > maxPoints).ToList();
                if (failed.Count > 0)
                    failures.Add($"accuracy guard failed: bbox AP drops {string.Join(", ", failed.Select(f => $"{((f.FloatAp - f.QuantizedAp) * 100).ToString("0.0", CultureInfo.InvariantCulture)} points at {f.Target.ToString(CultureInfo.InvariantCulture)} bits"))}, more than --max-drop {maxPoints.ToString(CultureInfo.InvariantCulture)}");
            }
        }
        return new GuardResult(accuracy, failures.Count > 0 ? string.Join("; ", failures) : null);
    }
}
