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
using OnnxQuant.Passes.Smoothing;
using OnnxQuant.Passes.Units;
using OnnxQuant.Passes.Verify;

namespace OnnxQuant.Passes.Compile;

/// <summary>The outcome of a compile: every target, the guards' verdict, and what the stages cost.</summary>
public sealed record CompileResult(IReadOnlyList<TargetResult> Targets, string OutputDirectory, GuardResult Guards,
    IReadOnlyList<StageTime> Timings, int Units, int Heads, int CurveRuns)
{
    /// <summary>Where the curve stage's time went, when the curves were measured on graph cuts.</summary>
    public Curves.CurveTiming? CurveTiming { get; init; }

    public bool GuardFailed => Guards.Failed;
    public string? GuardMessage => Guards.Failure;
}

/// <summary>
/// The whole compile as a list of stages, each with typed inputs and outputs: load, canonicalize, discover,
/// preconditions (everything that could fail the compile at the end, checked before the expensive stages), calibrate,
/// curves, partition, then per target allocate, rewrite and verify; only then the artifacts are written into a staging
/// folder, the guards checked on the staged models (their AP goes into the reports), and the folder published as one
/// unit. A bad input stops the compile before anything is written, and
/// the input files are only ever read.
/// </summary>
public static class Compiler
{
    public const string Metric = FeatureMetric.Description;

    public static CompileResult Run(string modelPath, string calibPath, string outputDirectory, CompileOptions options,
        string toolVersion, IProgressSink progress)
    {
        options.Validate();
        // The output folder is checked, locked and staged before any expensive stage, so a folder that cannot be
        // written or is busy fails in a second, not after the whole compile.
        using var output = OutputFolder.Open(outputDirectory, ArtifactStage.Inputs(modelPath, calibPath,
            options.Data.VerifyData, options.Curves.CurvesFile, options.Guards.EvalData, options.Guards.EvalAnnotations,
            options.Features.TaskData, options.Features.TaskAnnotations == TaskWeights.Self ? null : options.Features.TaskAnnotations));
        // The cache only saves time: a cache folder that cannot be used is skipped with a note, never an error.
        if (options.Curves.CacheDir is { } cacheDir && options.Curves.CurvesFile is null && CurveCache.Unusable(cacheDir) is { } unusable)
        {
            progress.Note(unusable);
            options = options with { Curves = options.Curves with { CacheDir = null } };
        }
        var guards = GuardStage.Prepare(options.Guards);
        var clock = new StageClock();

        using var loaded = clock.Time("load", () => LoadStage.Run(modelPath, calibPath, options.Data));

        var (canonical, features, canonicalization, removedLayers) = clock.Time("canonicalize", () =>
        {
            var model = loaded.Model.Clone();
            var records = new PassManager(Canonicalization.Passes()).Run(model);
            return (model, Features.Resolve(model, options.Features), Canonicalization.Describe(records), Canonicalization.RemovedLayers(records));
        });
        var namedFeatures = options.Features.Features.Count > 0;
        options = options with { Features = options.Features with { Features = features } };
        // Task weights replace the features by the detection outputs, weighed by the AP their noise costs.
        var weighting = options.Features.TaskAnnotations is null ? null : clock.Time("weigh", () =>
        {
            var result = TaskWeights.Run(loaded.Model, options.Features, calibPath, options.Data.CalibSamples, options.Execution.Measurement());
            progress.Note(result.Describe());
            return result;
        });
        if (weighting is not null)
        {
            features = Features.Resolve(canonical, new FeatureOptions { Features = weighting.Weights.Select(w => w.Feature).ToList() });
            options = options with { Features = options.Features with { Features = features, Weights = weighting.Weights.Select(w => w.Weight).ToList() } };
        }

        // Features after a choice that cannot be held (a detector's NMS) compare other detections element by element
        // wherever quantization flips one: without named features, the fixed-size tensors before such choices are
        // measured instead, and the layers after them are heads.
        var unheld = HeldSelections.Unheld(canonical, features);
        string? unheldNote = null;
        if (unheld.Count > 0)
        {
            var choicesNamed = $"{unheld.Count} choice(s) the compile cannot hold at the float model's ({string.Join(", ", unheld.Take(3))}{(unheld.Count > 3 ? ", ..." : "")})";
            if (!namedFeatures && weighting is null && HeldSelections.FeaturesBefore(canonical, features) is { Count: > 0 } before)
            {
                features = Features.Resolve(canonical, new FeatureOptions { Features = before });
                options = options with { Features = options.Features with { Features = features } };
                unheldNote = $"the model's outputs follow {choicesNamed}, where quantization would flip detections and compare other ones element by " +
                             $"element; the {features.Count} fixed-size tensor(s) they are computed from are measured instead ({string.Join(", ", features.Take(4))}" +
                             $"{(features.Count > 4 ? ", ..." : "")}), and layers after them are kept at --head-bits outside the budget; --feature names others";
            }
            else
                unheldNote = $"the features follow {choicesNamed}: where quantization flips one, other detections are compared element by element, so the " +
                             "measured distortion and the gains count those jumps; name fixed-size tensors before them with --feature (backbone, pyramid or head outputs)";
            progress.Note(unheldNote);
        }

        // Choices the graph makes from the data (a two-stage DETR's query selection) are held at the float model's
        // choice while the compile measures; the artifact makes its own, and the report says how often they agree.
        using var choices = HeldChoices.Hold(canonical, features, loaded, !namedFeatures && weighting is null,
            options.Execution.Measurement(), progress, clock);
        var (held, data, verification) = (choices.Held, choices.Data, choices.Verification);
        if (!ReferenceEquals(choices.Features, features))
        {
            features = choices.Features;
            options = options with { Features = options.Features with { Features = features } };
        }
        options.Features.Validate();
        var featureWeights = options.Features.Weights;

        var discovery = clock.Time("discover", () =>
        {
            var units = options.Units with { IntegerKernelsOnly = options.Rewrite.Deploy == DeployTarget.Speed };
            var found = UnitDiscovery.DiscoverAllocatable(canonical, features, units, modelPath, removedLayers);
            progress.Note($"units: {found.Units.Count} in {found.Layers.Count - found.Heads.Count} layers, {found.Heads.Count} head layer(s), {found.Skipped.Count} skipped");
            return found;
        });
        // A pinned curves file is checked against the units before any expensive stage.
        var pinned = PinnedCurves.Load(options.Curves, discovery.Units);
        // What ONNX Runtime refuses in INT2 containers: every layer when the model does not load at opset 25 (known
        // here), else the layers it refuses as the artifacts are verified, learned once for every artifact.
        var int2 = new Int2Exclusions();
        int2.Tie(discovery.Ties.Select(t => t.Layers.Select(l => l.Name).ToList()));
        var intake = Intake.Notes(loaded.Model).Concat(canonicalization is null ? [] : [canonicalization]).Concat(clock.Time("preconditions", () => Preconditions.Check(canonical, loaded with { Data = data }, options, outputDirectory, int2))).ToList();
        var initializerInputs = options.Rewrite.KeepInitializerInputs ? DetachInitializerInputsPass.InitializerInputs(loaded.Model) : [];

        // Activation-aware scaling changes the canonical model (exactly, in float) before anything measures it, so
        // calibration, curves, compensation and the rewrite all see the scaled layers.
        var smoothing = clock.Time("smooth", () =>
        {
            var widths = options.Allocation.TargetBits.Select(t => UniformBaseline.WidthFor(t, options.Curves.CandidateBits)).Distinct().Order().ToList();
            // A tied layer's weight must stay equal to its copies', which scaling one input would break.
            var scalable = discovery.Layers.Where(l => discovery.TieOf(l) is null).ToList();
            var result = ActivationSmoothing.Run(canonical, scalable, data, loaded.Samples, options.Smoothing, widths,
                options.Calibration.ActBits, options.Rewrite, options.Execution.Instrumentation(), options.Execution.RunBatch);
            if (result.Sites.Count > 0)
                progress.Note($"activation scaling: {result.Scaled} of {result.Sites.Count} normalization output(s) scaled into their linear layers");
            return result;
        });
        // Pinned or cached curves are known before calibration, which then only collects what compensation needs.
        var known = clock.Time("curves", () => CurveStage.Lookup(canonical, discovery.Units, loaded.DataHash, options.Curves,
            options.CurveKey(), progress, pinned));
        var measureOnCuts = known is null && options.Curves.Mode != CurveMode.Fast;
        // Exact and gain curves run on graph cuts, fed by the calibration pass (input rows, feature energy, cut
        // activations of the first samples); compensation reads the same rows, whatever the curves, and so does the
        // activations' price, so that a compile finding its gain curves in the cache prices them as the one that measured them.
        var priceActivations = options.Calibration.ActBits > 0 && options.Curves.Mode == CurveMode.Gain;
        using var cutCurves = !measureOnCuts && options.Rewrite.Compensation == Quantization.Compensation.None && !priceActivations ? null
            : new CutCurveMeasurer(canonical, discovery.Units, features, loaded.Samples, options.Curves, options.Rewrite, options.Execution.Threads,
                options.Curves.Gain, measure: measureOnCuts, featureWeights: featureWeights, ties: discovery.Ties);
        // The speed target also quantizes layer outputs and the tensors between integer layers.
        var speed = options.Rewrite.Deploy == DeployTarget.Speed;
        Verifier? verifier = null;
        var calibration = clock.Time("calibrate", () => CalibrateStage.Run(canonical,
            discovery.Layers.Select(l => l.Activation).Distinct()
                .Select(a => (a, discovery.Layers.First(l => l.Activation == a).ActivationChannelAxis)).ToList(),
            data, loaded.Samples, options.Calibration, options.Curves.Mode == CurveMode.Fast && known is null, options.Execution, progress,
            cutCurves is { } tap && (tap.ExtraTensors.Count > 0 || tap.CollectsRows) ? tap : null,
            speed ? SpeedRewriter.CalibrationTensors(canonical, discovery.Layers) : null,
            Verifier.ForCalibration(features, verification.Data, verification.Start, verification.Count, options.Execution.Measurement(),
                options.Execution.RunBatch, made => verifier = made, featureWeights)));
        // From here on the input rows are read a layer at a time, so they need not stay in memory.
        cutCurves?.SpillRows();

        var curves = known ?? clock.Time("curves", () => CurveStage.Measure(canonical, discovery.Units, features, data,
            loaded.Samples, loaded.DataHash, calibration, options.Curves, options.Rewrite, options.Execution,
            options.CurveKey(), progress, measureOnCuts ? cutCurves : null, featureWeights));
        Func<string, Quantization.InputStatistics?>? statistics = cutCurves is null ? null : cutCurves.Statistics;
        // The curves carry the ties, so the report, --write-curves and `onnxquant solve` allocate as this compile does.
        curves = curves with { Curves = PartitionStage.MarkTies(discovery, curves.Curves) };

        // The quantized layer inputs priced like the weights (their rounding on the calibration rows, times each unit's
        // gain), so the prediction holds what the 8-bit activations add; the allocation does not depend on it.
        // A MatMul in a MatMulNBits container is weight-only: no Q/DQ in front of it.
        bool InputQuantized(QuantLayer l) => !(options.Rewrite.Format == Quantization.WeightFormat.MatMulNBits && l.OpType == "MatMul");
        var activations = options.Calibration.ActBits == 0 || calibration is null ? null : clock.Time("activations", () => ActivationPricing.Run(canonical, discovery.Units,
            curves.Curves, l => cutCurves?.RowsOf(l), calibration, options.Calibration.ActBits, InputQuantized, options.Execution.Threads));
        if (activations is not null && options.Calibration.Act16Tensors > 0)
        {
            if (!activations.Priced)
                throw new CompileException($"--act16-tensors chooses the tensors by their priced error, and none could be priced " +
                                           $"({activations.Unpriced.FirstOrDefault()?.Reason ?? "no quantized layer input"}): compile with gain curves (--curves gain, the default) and without a curves file that lacks gains");
            activations = clock.Time("activations", () => ActivationPricing.Raise(activations, options.Calibration.Act16Tensors, wide =>
                ActivationPricing.Run(canonical, discovery.Units, curves.Curves, l => cutCurves?.RowsOf(l), calibration!, options.Calibration.ActBits,
                    l => wide.Contains(l.Activation) && InputQuantized(l),
                    options.Execution.Threads, t => wide.Contains(t) ? 16 : options.Calibration.ActBits)));
            options = options with { Rewrite = options.Rewrite with { Act16 = activations.RaisedFrom.Select(t => t.Tensor).ToHashSet(StringComparer.Ordinal) } };
        }
        if (activations is not null)
            progress.Note(activations.Describe());
        var partition = PartitionStage.Run(discovery, curves.Curves, features, options.Units.HeadBits);
        // Beside the artifact, not in it: a model ONNX Runtime rejects is never published.
        var debugDirectory = Path.TrimEndingDirectorySeparator(outputDirectory) + ".debug";

        // Uniform widths at each target's size, measured once per distinct width on the same verification samples.
        var uniformMeasured = new Dictionary<int, double>();
        UniformBaseline Baseline(double target, TargetAllocation allocation, double mixedMeasured)
        {
            if (!options.Baseline.Uniform)
                return UniformBaseline.NotMeasured("--no-baseline: not measured");
            var width = UniformBaseline.WidthFor(target, options.Curves.CandidateBits);
            var predicted = partition.FreeCurves.Sum(c => c.Distortion[c.Bits.ToList().IndexOf(width)]);
            var sameAsMixed = allocation.Allocation.Units.All(u => u.Bits == width);
            if (sameAsMixed)
                uniformMeasured.TryAdd(width, mixedMeasured);
            if (!uniformMeasured.TryGetValue(width, out var measured))
            {
                using var stage = progress.Begin($"uniform baseline {width} bits", 1);
                var plans = RewriteStage.Plans(discovery, partition, _ => width);
                RewrittenModel Rewrite() => RewriteStage.Run(canonical, plans, calibration, options.Rewrite, options.Calibration.ActBits, int2, statistics, cutCurves?.Memo);
                measured = VerifyStage.Run(Rewrite(), Rewrite, int2, verifier!, debugDirectory, $"uniform-{width}").Measured;
                uniformMeasured[width] = measured;
                stage.Advance();
            }
            return new UniformBaseline(width, width, activations is { Priced: true } a ? Quantization.StableRounding.Round(predicted + a.Total) : predicted, measured, sameAsMixed, null);
        }

        var artifacts = new List<TargetArtifact>();
        double? floatAp = null;
        foreach (var target in options.Allocation.TargetBits)
        {
            var allocation = clock.Time("allocate", () => AllocateStage.Run(partition, target, options.Allocation));
            IReadOnlyList<LayerPlan> finalPlans = [];
            VerifiedModel RewriteAndVerify(Func<string, int> bitsOf)
            {
                var plans = RewriteStage.Plans(discovery, partition, bitsOf);
                finalPlans = plans;
                RewrittenModel Rewrite() => RewriteStage.Run(canonical, plans, calibration, options.Rewrite, options.Calibration.ActBits, int2, statistics, cutCurves?.Memo);
                var rewritten = clock.Time("rewrite", Rewrite);
                return clock.Time("verify", () =>
                {
                    verifier ??= new Verifier(canonical, features, verification.Data, verification.Start, verification.Count,
                        options.Execution.Measurement(), options.Execution.RunBatch, featureWeights);
                    using var stage = progress.Begin($"verify {AllocationOptions.FormatBits(target)} bits", 1);
                    var result = VerifyStage.Run(rewritten, Rewrite, int2, verifier, debugDirectory, $"bits-{AllocationOptions.FormatBits(target)}");
                    stage.Advance();
                    return result;
                });
            }
            var verified = RewriteAndVerify(allocation.Allocation.BitsOf);
            var bytes = clock.Time("verify", () => ModelIO.ToBytes(HeldSelections.Thawed(verified.Rewritten.Model, held)));

            // A failing accuracy guard is repaired first: widths raised where the curves promise the most per bit.
            RepairOutcome? repair = null;
            if (options.Guards.MaxDistortion is not null || options.Guards.MaxDrop is not null)
            {
                GuardMeasurement Measure(VerifiedModel v, byte[] model)
                {
                    if (options.Guards.MaxDrop is null)
                        return new GuardMeasurement(v.Measured, null);
                    floatAp ??= clock.Time("guards", () => GuardStage.Ap(guards, File.ReadAllBytes(modelPath), options.Execution));
                    var ap = clock.Time("guards", () => GuardStage.Ap(guards, model, options.Execution));
                    return new GuardMeasurement(v.Measured, (floatAp - ap) * 100);
                }
                var first = Measure(verified, bytes);
                if (!GuardRepair.Holds(options.Guards, first))
                {
                    var curveOf = partition.FreeCurves.ToDictionary(c => c.Name, StringComparer.Ordinal);
                    var units = partition.FreeUnits.Select(u => new RepairUnit(u.Name, u.Layer.Name, u.Size,
                        curveOf[u.Name].Bits.ToList(), curveOf[u.Name].Distortion.ToList())).ToList();
                    var initial = allocation.Allocation.Units.ToDictionary(u => u.Name, u => u.Bits, StringComparer.Ordinal);
                    repair = GuardRepair.Run(options.Guards, units, initial, first, widths =>
                    {
                        verified = RewriteAndVerify(n => widths[n]);
                        bytes = clock.Time("verify", () => ModelIO.ToBytes(HeldSelections.Thawed(verified.Rewritten.Model, held)));
                        return Measure(verified, bytes);
                    });
                    progress.Note($"guard repair at {AllocationOptions.FormatBits(target)} bits: {repair.Report.Raised.Count} unit(s) raised in {repair.Report.Rounds} round(s), " +
                                  $"rate {repair.Report.InitialRate:0.000} -> {repair.Report.FinalRate:0.000}, measured {repair.Report.InitialMeasured:G4} -> {repair.Report.FinalMeasured:G4}" +
                                  (repair.Report.Met ? "" : " (the guard still fails)"));
                }
            }
            // Relisted after any repair, so the written bytes carry them.
            var relisted = DetachInitializerInputsPass.Relist(verified.Rewritten.Model, initializerInputs);
            // The model that ships: with held choices, the one that makes its own again.
            var shipped = HeldSelections.Thawed(verified.Rewritten.Model, held);
            if (relisted > 0)
                bytes = ModelIO.ToBytes(shipped);
            // The speed target's check and cost, on the model that ships (after any repair).
            string? unfused = null;
            var deploy = speed ? clock.Time("verify", () =>
            {
                var label = $"bits-{AllocationOptions.FormatBits(target)}";
                var (fusion, kept) = VerifyStage.CheckFusion(verified.Rewritten.Model, options.Execution.Measurement(), debugDirectory, label,
                    relisted > 0 ? null : verified.Rewritten.Fusion);
                if (fusion.WeightDequantizeLeft > 0)
                {
                    unfused = $"deploy speed at {AllocationOptions.FormatBits(target)} bits: {VerifyStage.FusionGap(fusion)}. Those layers keep their quantized " +
                              "values (the measured distortion is the artifact's) but run on float kernels, dequantizing their weights on every run: " +
                              "ONNX Runtime fused them in a way the rewrite does not foresee, a gap in this tool" +
                              (kept is null ? "" : $" (the model and the list are in {kept}; please report them)");
                    progress.Note(unfused);
                }
                var sizeOptions = options.Rewrite with { Deploy = DeployTarget.Size };
                var plans = finalPlans;
                RewrittenModel Rewrite() => RewriteStage.Run(canonical, plans, calibration, sizeOptions, options.Calibration.ActBits, int2, statistics, cutCurves?.Memo);
                var size = VerifyStage.Run(Rewrite(), Rewrite, int2, verifier!, debugDirectory, label + "-size");
                var placement = verified.Rewritten.Result.Speed!;
                return new DeployReport("speed", size.Measured, placement.QuantizedTensors, placement.IntegerOps, placement.NBitsLayers,
                    fusion.WeightDequantizeLeft, fusion.IntegerKernels, fusion.OpTypes) { BiasFits = placement.BiasFits };
            }) : null;
            var baseline = clock.Time("baseline", () => Baseline(target, allocation, verified.Measured));
            // The artifact run as it ships, making its own choices.
            var selection = held.Count == 0 ? null : clock.Time("verify", () =>
                HeldSelections.Measure(verified.Rewritten.Model, shipped, held, verifier!));
            var notes = loaded.Notes.Concat(weighting is null ? [] : [weighting.Describe()]).Concat(unheldNote is null ? [] : [unheldNote]).Concat(intake).Concat(pinned is null ? [] : [pinned.Note]).Concat(curves.Notes).Concat(activations is null ? [] : [activations.Describe()]).Concat(partition.Notes).Concat(verified.Notes)
                .Concat(allocation.Notes).ToList();
            var rewrite = verified.Rewritten.Result;
            if (initializerInputs.Count > 0)
                notes.Add($"--keep-initializer-inputs: {relisted} of {initializerInputs.Count} initializer inputs listed again (the others were quantized or folded away)");
            if (RepairActivationNote(repair?.Report, options.Guards.MaxDistortion, activations) is { } act)
            {
                notes.Add(act);
                progress.Note(act);
            }
            if (repair is not null)
                notes.Add($"accuracy guard repair ({repair.Report.Guard}): {repair.Report.Raised.Count} unit(s) raised above the allocation, rate {repair.Report.InitialRate:0.000} -> {repair.Report.FinalRate:0.000} (float layers count 32 bits)");
            if (deploy is not null)
                notes.Add($"deploy speed: {deploy.QuantizedTensors} activation tensors quantized, {deploy.IntegerKernels} integer kernels after ONNX Runtime's fusions, " +
                          $"{deploy.WeightDequantizeLeft} DequantizeLinear left on weight paths; the activation quantization adds " +
                          $"{Quantization.StableRounding.Round(verified.Measured - deploy.SizeMeasured):G4} to the measured distortion of the size target ({deploy.SizeMeasured:G4})");
            if (unfused is not null)
                notes.Add(unfused);
            if (selection is not null)
                notes.Add($"selections held at the float model's choice while measuring (measured {verified.Measured:G4}): the artifact makes its own, " +
                          string.Join(", ", selection.Selections.Select(a => $"{100 * a.Agreement:0.#}% of {a.Chosen} the float model's for {a.OpType} '{a.Node}'")) +
                          $" (TopK as sets), which measures {Measured(selection.MeasuredMatched)} with its choices in the float order and {Measured(selection.MeasuredFree)} " +
                          "compared element by element as it ships (a query chosen in another place counts as changed)");
            if (rewrite.ConstantsFolded > 0)
                notes.Add($"{rewrite.ConstantsFolded} value(s) the artifact computes from its weights alone (a layer whose weight is applied to learned " +
                          "constants as well as to the input, and what follows from that call) are stored computed: ONNX Runtime does not fold through a DequantizeLinear");
            if (verified.Rewritten.Result.Speed is { QuantizedOutputs.Count: > 0 } forced)
                notes.Add($"deploy speed: the output of {forced.QuantizedOutputs.Count} layer(s) is quantized although only float ops read it, because ONNX Runtime " +
                          $"otherwise fused the layer with its reader into a float kernel ({string.Join(", ", forced.QuantizedOutputs.Take(4))}" +
                          $"{(forced.QuantizedOutputs.Count > 4 ? ", ..." : "")}); that rounding is in the measured distortion");
            if (MeasuredGapNote(options.Calibration.ActBits, repair is null ? allocation.Allocation.PredictedDistortion : null, activations, verified.Measured) is { } gap)
                notes.Add(gap);
            if (ShrinkageNote(rewrite.Compensated, loaded.Samples) is { } shrunk)
                notes.Add(shrunk);
            if (deploy is { BiasFits.Count: > 0 } fits)
                notes.Add($"deploy speed: the INT32 bias of {fits.BiasFits.Sum(f => f.Channels)} output channel(s) in {fits.BiasFits.Count} layer(s) did not fit at the " +
                          $"chosen weight scale (an input scale tiny against the bias); their weight scale was raised to fit, at most {fits.BiasFits.Max(f => f.Largest):G3}x " +
                          $"({string.Join(", ", fits.BiasFits.Take(3).Select(f => f.Layer))}{(fits.BiasFits.Count > 3 ? ", ..." : "")})");
            artifacts.Add(new TargetArtifact(Report(toolVersion, options, features, discovery, partition, curves, allocation,
                rewrite, bytes, verified.Measured, verifier!.Samples, loaded.Verification.HeldOut, notes, activations, repair) with { Baseline = baseline, Deploy = deploy, Selection = selection, Smoothing = smoothing, FeatureWeights = options.Features.Weights, TaskWeighting = weighting }, bytes)
            {
                WithWeights = verified.Rewritten.WithWeights is { } withWeights ? HeldSelections.Thawed(withWeights, held) : null,
            });
        }

        IReadOnlyList<ReportWriter.OutputFile> outputs = [];
        var written = clock.Time("write", () => ArtifactStage.WriteModels(output, artifacts, out outputs));
        var manifest = new ManifestInputs(toolVersion, Path.GetFileName(modelPath), loaded.ModelHash, loaded.DataHash,
            loaded.Samples, options.Manifest());
        // The guards run on the staged models before the reports are written, so the reports carry the AP figures.
        var staged = written.Select(t => t with { ModelPath = output.StagedPath(t.ModelPath) }).ToList();
        var verdict = options.Guards.MeasuresAp
            ? clock.Time("evaluate", () => GuardStage.Check(guards, modelPath, staged, options.Execution))
            : GuardStage.Check(guards, modelPath, staged, options.Execution);
        if (verdict.Accuracy is { } accuracy)
            written = written.Select(t => accuracy.FirstOrDefault(a => a.Target == t.Report.TargetBits) is { } ap
                ? t with { Report = t.Report with { Accuracy = new AccuracyReport(ap.FloatAp, ap.QuantizedAp) } }
                : t).ToList();
        var repairs = artifacts.Select(a => a.Report.Repair).OfType<RepairReport>().ToList();
        if (verdict.Failed && repairs.Count > 0)
            verdict = verdict with
            {
                Failure = verdict.Failure + $" (after the repair raised widths to rate {string.Join(", ", repairs.Select(r => r.FinalRate.ToString("0.000", System.Globalization.CultureInfo.InvariantCulture)))}" +
                          (options.Guards.MaxRepairRate is { } cap ? $", the most --max-repair-rate {cap.ToString(System.Globalization.CultureInfo.InvariantCulture)} allows" : "") + ")",
            };
        // The reports carry the timings up to here, so writing them is the one stage they cannot include.
        var timings = clock.Timings;
        var results = ArtifactStage.WriteReports(output, written, timings, manifest, outputs);
        output.Publish();
        return new CompileResult(results, outputDirectory, verdict, timings, partition.FreeUnits.Count, partition.Heads.Count, curves.Runs)
        {
            CurveTiming = curves.Timing,
        };
    }

    private static CompileReport Report(string toolVersion, CompileOptions options, IReadOnlyList<string> features,
        UnitDiscoveryResult discovery, Partition partition, CurveSet curves, TargetAllocation target, RewriteResult rewrite,
        byte[] model, double measured, int samples, bool heldOut, IReadOnlyList<string> notes, ActivationPrice? activations, RepairOutcome? repair = null)
    {
        var allocation = target.Allocation;
        var repaired = repair?.Bits;
        double RepairedDistortion(string name)
        {
            var curve = partition.FreeCurves.First(c => c.Name == name);
            var b = repaired![name];
            return b == GuardRepair.FloatBits ? 0 : curve.Distortion[curve.Bits.ToList().IndexOf(b)];
        }
        var units = partition.FreeUnits.ToDictionary(u => u.Name, StringComparer.Ordinal);
        return new CompileReport
        {
            ToolVersion = toolVersion,
            TargetBits = target.Target,
            Rate = repair?.Report.FinalRate ?? allocation.Rate,
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
                if (repaired is not null && repaired[a.Name] != a.Bits)
                    return new UnitReport(a.Name, unit.Layer.Name, unit.Layer.OpType, unit.ChannelStart, unit.ChannelCount, a.Size,
                        repaired[a.Name], RepairedDistortion(a.Name));
                return new UnitReport(a.Name, unit.Layer.Name, unit.Layer.OpType, unit.ChannelStart, unit.ChannelCount, a.Size, a.Bits, a.Distortion);
            }).ToList(),
            Heads = partition.Heads,
            Skipped = discovery.Skipped,
            Curves = curves.Curves,
            Layers = rewrite.Layers,
            Sizes = new SizeReport(rewrite.Layers.Sum(l => l.FloatBytes), rewrite.Layers.Sum(l => l.IdealBits),
                rewrite.Layers.Sum(l => l.Bytes), model.LongLength),
            Distortion = new DistortionReport(repaired is null ? allocation.PredictedDistortion : allocation.Units.Sum(u => RepairedDistortion(u.Name)), measured, samples, heldOut, FeatureMetric.Describe(features, options.Features.Weights))
            {
                PredictedActivations = activations is { Priced: true } ? activations.Total : null,
            },
            Activations = activations,
            Notes = notes,
            CurveGains = curves.Gains,
            Compensation = Quantization.Compensator.Name(options.Rewrite.Compensation),
            Compensated = rewrite.Compensated ?? [],
            Repair = repair?.Report,
        };
    }

    /// <summary>
    /// A repair that did not meet --max-distortion while the activations' price is a large part of it (a third or more):
    /// raising weights cannot remove that part, so say what can. Null otherwise.
    /// </summary>
    internal static string? RepairActivationNote(RepairReport? repair, double? maxDistortion, ActivationPrice? activations) =>
        repair is { Met: false } && maxDistortion is > 0 and var max && activations is { Priced: true } a && a.Total >= max / 3
            ? $"the {a.Bits}-bit activations are priced at {a.Total:G3}, {100 * a.Total / max:0}% of --max-distortion {max:G3}, and no weight width removes that: " +
              $"--act16-tensors N quantizes the N tensors of the largest price at 16 bits ('{a.Tensors[0].Tensor}' first, {a.Tensors[0].Distortion:G3}), --act-bits 16 all of them"
            : null;

    /// <summary>Measured over predicted distortion above which a compile with quantized activations says why.</summary>
    internal const double MeasuredGapRatio = 3;

    /// <summary>Which layers' input statistics second-order rounding had to shrink (fewer rows than inputs), and what
    /// gives them more rows; null when none.</summary>
    internal static string? ShrinkageNote(IReadOnlyList<Rewrite.LayerCompensation>? compensated, int samples)
    {
        var shrunk = (compensated ?? []).Where(c => c.Shrinkage > 0).ToList();
        if (shrunk.Count == 0)
            return null;
        var rounded = compensated!.Count(c => c.Gptq);
        var largest = shrunk.OrderByDescending(c => c.Shrinkage).ThenBy(c => c.Layer, StringComparer.Ordinal).First();
        return $"second-order rounding: {shrunk.Count} of {rounded} layer(s) read input rows longer than the rows calibration keeps, so their " +
               $"covariance was shrunk toward its diagonal by what the rows support (up to {largest.Shrinkage:0.###}, '{largest.Layer}'; " +
               $"report.json compensation.layers[].shrinkage); more calibration samples (--calib-samples, {samples} now) give them more rows";
    }

    /// <summary>
    /// With quantized activations, a measured distortion far above the prediction: say what the prediction holds and
    /// how to see the parts apart. Unpriced activations (exact or fast curves, no rows) are the usual cause: on the
    /// full-size DETR-R50 at W4A8 they were 0.0062 of 0.0089. Null when the gap is small, activations are float or the
    /// prediction is unknown.
    /// </summary>
    internal static string? MeasuredGapNote(int actBits, double? weights, ActivationPrice? activations, double measured)
    {
        if (actBits == 0 || weights is not > 0)
            return null;
        var p = activations is { Priced: true } ? weights.Value + activations.Total : weights.Value;
        if (measured <= MeasuredGapRatio * p)
            return null;
        var priced = activations is { Priced: true, Unpriced.Count: 0 };
        return $"measured distortion {measured:G3} is {measured / p:0.#}x the predicted {p:G3}: " +
               (priced
                   ? $"the prediction holds the weights ({weights.Value:G3}) and the {actBits}-bit activations entering the quantized layers ({activations!.Total:G3}) " +
                     "as if their errors added; the rest is what they do together (or activations the speed target quantizes beyond the layer inputs); "
                   : $"the curves price each unit's weights, and {(activations is null ? "the" : $"{activations.Unpriced.Count} of the")} {actBits}-bit activations entering the quantized layers " +
                     "were not priced, so their error (and what the units do together) is only in the measured value; ") +
               "--act-bits 0 measures the weights alone, and --act-calibration mse chooses the ranges by squared error";
    }

    private static string Measured(double? distortion) => distortion is { } d ? d.ToString("G4", System.Globalization.CultureInfo.InvariantCulture) : "nothing comparable (a feature's size changed)";

    /// <summary>
    /// The choices a compile holds (<see cref="HeldSelections"/>) and the calibration and verification sets that carry
    /// the float ones (the loaded sets when there are none; disposing releases only the new ones).
    /// </summary>
    private sealed record HeldChoices(IReadOnlyList<HeldSelection> Held, CalibrationSet Data, VerificationSplit Verification,
        IReadOnlyList<string> Features) : IDisposable
    {
        /// <summary>Finds the choices on the way to <paramref name="features"/>, records the float ones and freezes
        /// <paramref name="canonical"/> (in place) to read them; with <paramref name="addScores"/> the scores they
        /// choose by join the features.</summary>
        public static HeldChoices Hold(Model canonical, IReadOnlyList<string> features, LoadedInputs loaded, bool addScores,
            Runtime.SessionOptions sessionOptions, IProgressSink progress, StageClock clock)
        {
            var held = HeldSelections.Find(canonical, features);
            if (held.Count == 0)
                return new HeldChoices(held, loaded.Data, loaded.Verification, features);
            var verification = loaded.Verification;
            var (data, verifyData) = clock.Time("hold", () =>
            {
                try
                {
                    return HeldSelections.Record(canonical, held, loaded.Data, loaded.Samples, verification.Data,
                        verification.Start + verification.Count, sessionOptions);
                }
                catch (Runtime.OrtException ex)
                {
                    throw new CompileException($"the float model does not run in ONNX Runtime on the calibration samples: {ex.Message.ReplaceLineEndings(" ")}");
                }
            });
            HeldSelections.Freeze(canonical, held);
            var scores = held.Select(h => canonical.Graph.FindValue(h.Scores)).OfType<Value>().Where(v => v.Producer is not null).ToList();
            foreach (var v in scores)
                ElementTypeInference.EnsureTyped(v);
            var scoreNames = scores.Where(v => v.Type?.ElementType == DataType.Float && !features.Contains(v.Name)).Select(v => v.Name).Distinct().ToList();
            var added = addScores && scoreNames.Count > 0;
            progress.Note($"{held.Count} selection(s) made from the data ({string.Join(", ", held.Select(h => $"{h.OpType} '{h.Node}'"))}) are held at the float " +
                          "model's choice while measuring, so a flipped choice does not pass for a layer's error; " +
                          (added ? $"the scores they choose by ({string.Join(", ", scoreNames)}) are measured as features too" :
                              $"name the scores they choose by ({string.Join(", ", held.Select(h => h.Scores).Distinct())}) with --feature to price the layers that compute them"));
            return new HeldChoices(held, data, verification with { Data = verifyData }, added ? [.. features, .. scoreNames] : features);
        }

        public void Dispose()
        {
            if (Held.Count == 0)
                return;
            Data.Dispose();
            if (!ReferenceEquals(Verification.Data, Data))
                Verification.Data.Dispose();
        }
    }
}
