using OnnxQuant.Frontend;
using OnnxQuant.Passes.Allocate;
using OnnxQuant.Passes.Artifact;
using OnnxQuant.Passes.Calibration;
using OnnxQuant.Passes.Canonicalize;
using OnnxQuant.Passes.Curves;
using OnnxQuant.Passes.Guards;
using OnnxQuant.Passes.Load;
using OnnxQuant.Passes.Measurement;
using OnnxQuant.Passes.Pipeline;
using OnnxQuant.Passes.Rewrite;
using OnnxQuant.Passes.Units;
using OnnxQuant.Passes.Verify;

namespace OnnxQuant.Passes.Compile;

/// <summary>The outcome of a compile: every target, the guards' verdict, and what the stages cost.</summary>
public sealed record CompileResult(IReadOnlyList<TargetResult> Targets, string OutputDirectory, GuardResult Guards,
    IReadOnlyList<StageTime> Timings, int Units, int Heads, int CurveRuns)
{
    public bool GuardFailed => Guards.Failed;
    public string? GuardMessage => Guards.Failure;
}

/// <summary>
/// The whole compile as a list of stages, each with typed inputs and outputs: load, canonicalize, discover,
/// calibrate, curves, partition, then per target allocate, rewrite and verify; only then the artifacts are written
/// (atomically) and the guards checked. A bad input stops the compile before anything is written, and the input
/// files are only ever read.
/// </summary>
public static class Compiler
{
    public const string Metric = FeatureMetric.Description;

    public static CompileResult Run(string modelPath, string calibPath, string outputDirectory, CompileOptions options,
        string toolVersion, IProgressSink progress)
    {
        options.Validate();
        ArtifactStage.CheckDestination(modelPath, outputDirectory, options.Allocation.TargetBits);
        var guards = GuardStage.Prepare(options.Guards);
        var clock = new StageClock();

        var loaded = clock.Time("load", () => LoadStage.Run(modelPath, calibPath, options.Data));

        var (canonical, features) = clock.Time("canonicalize", () =>
        {
            var model = loaded.Model.Clone();
            new PassManager(Canonicalization.Passes()).Run(model);
            return (model, Features.Resolve(model, options.Features));
        });
        options = options with { Features = options.Features with { Features = features } };

        var discovery = clock.Time("discover", () =>
        {
            var found = UnitDiscovery.DiscoverAllocatable(canonical, features, options.Units, modelPath);
            progress.Note($"units: {found.Units.Count} in {found.Layers.Count - found.Heads.Count} layers, {found.Heads.Count} head layer(s), {found.Skipped.Count} skipped");
            return found;
        });
        // A pinned curves file is checked against the units before any expensive stage.
        var pinned = PinnedCurves.Load(options.Curves, discovery.Units);

        // Exact and gain curves run on graph cuts; gain curves read their layers' input rows in the calibration pass.
        var cutCurves = options.Curves.Mode == CurveMode.Fast || pinned is not null ? null
            : new CutCurveMeasurer(canonical, discovery.Units, features, loaded.Samples, options.Curves, options.Rewrite, options.Execution.Threads);
        // The speed target also quantizes layer outputs and the tensors between integer layers.
        var speed = options.Rewrite.Deploy == DeployTarget.Speed;
        var calibration = clock.Time("calibrate", () => CalibrateStage.Run(canonical,
            discovery.Layers.Select(l => l.Activation).Distinct()
                .Select(a => (a, discovery.Layers.First(l => l.Activation == a).ActivationChannelAxis)).ToList(),
            loaded.Data, loaded.Samples, options.Calibration, options.Curves.Mode == CurveMode.Fast, options.Execution, progress,
            cutCurves?.ExtraTensors.Count > 0 ? cutCurves : null,
            speed ? SpeedRewriter.CalibrationTensors(canonical, discovery.Layers) : null));

        var curves = clock.Time("curves", () => CurveStage.Run(canonical, discovery.Units, features, loaded.Data,
            loaded.Samples, loaded.DataHash, calibration, options.Curves, options.Rewrite, options.Execution,
            options.CurveKey(), progress, pinned, cutCurves));

        var partition = PartitionStage.Run(discovery, curves.Curves, features, options.Units.HeadBits);
        Verifier? verifier = null;
        var debugDirectory = Path.Combine(outputDirectory, "debug");

        var artifacts = new List<TargetArtifact>();
        foreach (var target in options.Allocation.TargetBits)
        {
            var allocation = clock.Time("allocate", () => AllocateStage.Run(partition, target, options.Allocation));
            var plans = RewriteStage.Plans(discovery, partition, allocation.Allocation);
            var rewritten = clock.Time("rewrite", () => RewriteStage.Run(canonical, plans, calibration, options.Rewrite, options.Calibration.ActBits));
            var verified = clock.Time("verify", () =>
            {
                var split = loaded.Verification;
                verifier ??= new Verifier(canonical, features, split.Data, split.Start, split.Count,
                    options.Execution.Measurement(), options.Execution.RunBatch);
                using var stage = progress.Begin($"verify {AllocationOptions.FormatBits(target)} bits", 1);
                var result = VerifyStage.Run(rewritten,
                    () => RewriteStage.Run(canonical, plans, calibration, options.Rewrite, options.Calibration.ActBits, allowInt2: false),
                    verifier, debugDirectory, $"bits-{AllocationOptions.FormatBits(target)}");
                stage.Advance();
                return result;
            });
            var deploy = speed ? clock.Time("verify", () =>
            {
                var label = $"bits-{AllocationOptions.FormatBits(target)}";
                var fusion = VerifyStage.CheckFusion(verified.Rewritten.Model, options.Execution.Measurement(), debugDirectory, label);
                var sizeOptions = options.Rewrite with { Deploy = DeployTarget.Size };
                var size = VerifyStage.Run(RewriteStage.Run(canonical, plans, calibration, sizeOptions, options.Calibration.ActBits),
                    () => RewriteStage.Run(canonical, plans, calibration, sizeOptions, options.Calibration.ActBits, allowInt2: false),
                    verifier!, debugDirectory, label + "-size");
                var placement = verified.Rewritten.Result.Speed!;
                return new DeployReport("speed", size.Measured, placement.QuantizedTensors, placement.IntegerOps, placement.NBitsLayers,
                    fusion.WeightDequantizeLeft, fusion.IntegerKernels, fusion.OpTypes);
            }) : null;
            var bytes = clock.Time("verify", () => ModelIO.ToBytes(verified.Rewritten.Model));
            var notes = loaded.Notes.Concat(pinned is null ? [] : [pinned.Note]).Concat(curves.Notes).Concat(partition.Notes).Concat(verified.Notes)
                .Concat(allocation.Notes).ToList();
            var rewrite = verified.Rewritten.Result;
            if (options.Calibration.ActBits > 0 && rewrite.WeightOnlyLayers.Count > 0)
                notes.Add($"{rewrite.WeightOnlyLayers.Count} INT2 layer(s) keep float activations (ONNX Runtime 1.30 cannot fuse INT2 weights with quantized activations): {string.Join(", ", rewrite.WeightOnlyLayers)}");
            if (deploy is not null)
                notes.Add($"deploy speed: {deploy.QuantizedTensors} activation tensors quantized, {deploy.IntegerKernels} integer kernels after ONNX Runtime's fusions, " +
                          $"{deploy.WeightDequantizeLeft} DequantizeLinear left on weight paths; the activation quantization adds " +
                          $"{Quantization.StableRounding.Round(verified.Measured - deploy.SizeMeasured):G4} to the measured distortion of the size target ({deploy.SizeMeasured:G4})");
            artifacts.Add(new TargetArtifact(Report(toolVersion, options, features, discovery, partition, curves, allocation,
                rewrite, bytes, verified.Measured, verifier!.Samples, loaded.Verification.HeldOut, notes) with { Deploy = deploy }, bytes));
        }

        IReadOnlyList<ReportWriter.OutputFile> outputs = [];
        var written = clock.Time("write", () => ArtifactStage.WriteModels(outputDirectory, artifacts, out outputs));
        var manifest = new ManifestInputs(toolVersion, Path.GetFileName(modelPath), loaded.ModelHash, loaded.DataHash,
            loaded.Samples, options.Manifest());
        // The reports carry the timings up to here, so writing them is the one stage they cannot include.
        var timings = clock.Timings;
        var results = ArtifactStage.WriteReports(outputDirectory, written, timings, manifest, outputs);

        var verdict = GuardStage.Check(guards, modelPath, results, options.Execution);
        return new CompileResult(results, outputDirectory, verdict, timings, partition.FreeUnits.Count, partition.Heads.Count, curves.Runs);
    }

    private static CompileReport Report(string toolVersion, CompileOptions options, IReadOnlyList<string> features,
        UnitDiscoveryResult discovery, Partition partition, CurveSet curves, TargetAllocation target, RewriteResult rewrite,
        byte[] model, double measured, int samples, bool heldOut, IReadOnlyList<string> notes)
    {
        var allocation = target.Allocation;
        var units = partition.FreeUnits.ToDictionary(u => u.Name, StringComparer.Ordinal);
        return new CompileReport
        {
            ToolVersion = toolVersion,
            TargetBits = target.Target,
            Rate = allocation.Rate,
            Solver = options.Allocation.Solver.ToString().ToLowerInvariant(),
            MinBits = target.MinBits,
            Features = features,
            CurveMode = options.Curves.Mode,
            CurvesFromCache = curves.FromCache,
            WeightFormat = options.Rewrite.Format == Quantization.WeightFormat.Qdq ? "qdq" : "matmulnbits",
            ActBits = options.Calibration.ActBits,
            ActCalibration = options.Calibration.ActCalibration.ToString().ToLowerInvariant(),
            Opset = rewrite.Opset,
            Units = allocation.Units.Select(a =>
            {
                var unit = units[a.Name];
                return new UnitReport(a.Name, unit.Layer.Name, unit.Layer.OpType, unit.ChannelStart, unit.ChannelCount, a.Size, a.Bits, a.Distortion);
            }).ToList(),
            Heads = partition.Heads,
            Skipped = discovery.Skipped,
            Curves = curves.Curves,
            Layers = rewrite.Layers,
            Sizes = new SizeReport(rewrite.Layers.Sum(l => l.FloatBytes), rewrite.Layers.Sum(l => l.IdealBits),
                rewrite.Layers.Sum(l => l.Bytes), model.LongLength),
            Distortion = new DistortionReport(allocation.PredictedDistortion, measured, samples, heldOut, Metric),
            Notes = notes,
            CurveGains = curves.Gains,
        };
    }
}
