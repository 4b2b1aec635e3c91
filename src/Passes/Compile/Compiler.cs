using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using OnnxQuant.Frontend;
using OnnxQuant.Passes.Calibration;
using OnnxQuant.Passes.Canonicalize;
using OnnxQuant.Passes.Curves;
using OnnxQuant.Passes.Data;
using OnnxQuant.Passes.Pipeline;
using OnnxQuant.Passes.Rewrite;
using OnnxQuant.Passes.Units;
using OnnxQuant.Passes.Verify;
using OnnxQuant.Runtime;
using OnnxQuant.Solvers;

namespace OnnxQuant.Passes.Compile;

/// <summary>One compiled target: its report and where its model went.</summary>
public sealed record TargetResult(CompileReport Report, string ModelPath, string ReportPath);

/// <summary>The outcome of a compile: every target, and whether an accuracy guard failed.</summary>
public sealed record CompileResult(IReadOnlyList<TargetResult> Targets, string OutputDirectory, bool GuardFailed, string? GuardMessage,
    IReadOnlyList<StageTime> Timings, int Units, int Heads, int CurveRuns);

/// <summary>
/// The whole compile: load and validate, canonicalize, find units, calibrate, measure (or load cached) curves,
/// allocate for each target, rewrite, verify in ONNX Runtime, and only then write the artifacts (atomically) — so a
/// bad input stops the compile before anything is written, and the input files are only ever read.
/// </summary>
public static class Compiler
{
    public const string Metric = "sum over features of ||y_q - y||^2 / ||y||^2 (relative squared error)";

    public static CompileResult Run(string modelPath, string calibPath, string outputDirectory, CompileOptions options,
        string toolVersion, IProgressSink progress)
    {
        var timings = new List<StageTime>();
        var clock = Stopwatch.StartNew();
        void Stage(string name)
        {
            timings.Add(new StageTime(name, clock.Elapsed.TotalSeconds));
            clock.Restart();
        }

        Validate(options, modelPath, outputDirectory);
        var model = ModelIO.Load(modelPath);
        var modelHash = Sha256(ModelIO.ToBytes(model));
        var inputs = model.Graph.Inputs.Where(v => !v.IsInitializer).Select(v => Spec(v, modelPath)).ToList();
        var data = CalibrationSet.Load(calibPath, inputs);
        var notes = new List<string>();
        var samples = Math.Min(options.CalibSamples, data.Count);
        if (samples < options.CalibSamples)
            notes.Add($"calibration data holds {data.Count} samples; using all of them instead of {options.CalibSamples}");
        var verifyData = data;
        int verifyStart, verifyCount;
        bool heldOut;
        if (options.VerifyData is { } verifyPath)
        {
            verifyData = CalibrationSet.Load(verifyPath, inputs);
            verifyStart = 0;
            verifyCount = Math.Min(Math.Max(1, options.VerifySamples), verifyData.Count);
            heldOut = true;
        }
        else if (options.VerifySamples > 0 && data.Count > samples)
        {
            verifyStart = samples;
            verifyCount = Math.Min(options.VerifySamples, data.Count - samples);
            heldOut = true;
        }
        else
        {
            verifyStart = 0;
            verifyCount = Math.Min(samples, Math.Max(1, options.VerifySamples));
            heldOut = false;
            notes.Add("no samples beyond the calibration ones: verification reuses calibration samples (not held out); give --verify-data");
        }
        var dataHash = data.Hash(samples);
        Stage("load");

        var canonical = model.Clone();
        new PassManager(Canonicalization.Passes()).Run(canonical);
        var features = ResolveFeatures(canonical, options.Features);
        Stage("canonicalize");

        var discovery = UnitDiscovery.Discover(canonical, features, options);
        if (discovery.Units.Count == 0)
            throw new CompileException(discovery.Layers.Count == 0
                ? $"{modelPath}: no quantizable layer (Conv, Gemm or MatMul with a constant float weight) was found{(discovery.Skipped.Count > 0 ? $"; skipped: {string.Join("; ", discovery.Skipped.Select(s => $"{s.Name}: {s.Reason}"))}" : "")}"
                : $"{modelPath}: none of the {discovery.Layers.Count} quantizable layers reaches the features {string.Join(", ", features)}");
        progress.Note($"units: {discovery.Units.Count} in {discovery.Layers.Count - discovery.Heads.Count} layers, {discovery.Heads.Count} head layer(s), {discovery.Skipped.Count} skipped");
        Stage("discover");

        // ONNX Runtime's own thread count (0 = its default); results do not depend on it because curves and ranges are
        // rounded to 6 significant digits before any decision.
        var threadsOptions = new SessionOptions { IntraOpThreads = options.Threads, Optimization = GraphOptimization.Disabled };
        var runOptions = (threadsOptions with { Optimization = GraphOptimization.All })
            .WithConfig(SessionConfigKeys.QdqMatMulNBitsAccuracyLevel, "0");
        CalibrationTable? calibration = null;
        var cutCurves = options.Curves == CurveMode.Fast ? null : new CutCurveMeasurer(canonical, discovery.Units, features, samples, options);
        if (options.ActBits > 0 || options.Curves != CurveMode.Exact)
        {
            var targets = discovery.Layers.Select(l => l.Activation).Distinct()
                .Select(a => new CalibrationTarget(a, options.Curves == CurveMode.Fast
                    ? discovery.Layers.First(l => l.Activation == a).ActivationChannelAxis : null)).ToList();
            using var stage = progress.Begin("calibrate", samples);
            calibration = Calibrator.Run(canonical, data, samples, targets, options.ActCalibration, Math.Max(2, options.ActBits == 0 ? 8 : options.ActBits),
                threadsOptions, options.RunBatch, stage, cutCurves);
        }
        Stage("calibrate");

        var curveSet = LoadOrMeasureCurves(canonical, discovery.Units, features, data, samples, calibration, options, runOptions,
            progress, modelHash, dataHash, cutCurves);
        notes.AddRange(curveSet.Notes);
        Stage("curves");

        // Units whose curve is zero everywhere cannot be seen at the feature: treat them like heads.
        var zero = curveSet.Curves.Where(c => c.Distortion.All(d => d == 0)).Select(c => c.Name).ToHashSet(StringComparer.Ordinal);
        var freeUnits = discovery.Units.Where(u => !zero.Contains(u.Name)).ToList();
        var zeroLayers = discovery.Units.Where(u => zero.Contains(u.Name)).Select(u => u.Layer).Distinct()
            .Where(l => discovery.Units.Where(u => u.Layer == l).All(u => zero.Contains(u.Name))).ToList();
        freeUnits = freeUnits.Where(u => !zeroLayers.Contains(u.Layer)).ToList();
        if (freeUnits.Count == 0)
            throw new CompileException($"every unit's error curve is zero at the features {string.Join(", ", features)}: nothing to allocate (choose another --feature)");
        var heads = discovery.Heads.Select(h => new HeadReport(h.Name, h.OpType, h.Size, options.HeadBits,
                "does not reach the feature; kept at --head-bits outside the budget"))
            .Concat(zeroLayers.Select(h => new HeadReport(h.Name, h.OpType, h.Size, options.HeadBits,
                "error curve is zero at the feature; kept at --head-bits outside the budget")))
            .ToList();
        if (heads.Count > 0)
            notes.Add($"{heads.Count} layer(s) do not affect the feature and are kept at {options.HeadBits} bits outside the budget (see heads)");
        var curvesByName = curveSet.Curves.ToDictionary(c => c.Name, StringComparer.Ordinal);
        var freeCurves = freeUnits.Select(u => curvesByName[u.Name]).ToList();

        var floatForVerify = canonical;
        var verifier = new Verifier(floatForVerify, features, verifyData, verifyStart, verifyCount, runOptions, options.RunBatch);
        Stage("verify-setup");

        var perTarget = new List<(CompileReport Report, byte[] Model, double AllocateSeconds, double RewriteSeconds, double VerifySeconds)>();
        foreach (var target in options.TargetBits)
        {
            var watch = Stopwatch.StartNew();
            var minBits = options.MinBitsFor(target);
            var problem = new AllocationProblem(freeCurves, target, minBits, CurvePolicy.MakeMonotone);
            IBitAllocator allocator = options.Solver == SolverKind.Dp
                ? new DpAllocator()
                : new LagrangianAllocator(new LagrangianOptions(options.Epsilon));
            var allocation = allocator.Solve(problem);
            var allocateSeconds = watch.Elapsed.TotalSeconds;
            watch.Restart();

            var plans = BuildPlans(discovery, freeUnits, allocation, heads, options);
            var quantized = canonical.Clone();
            var rewrite = QdqRewriter.Apply(quantized, plans, calibration, options);
            var rewriteSeconds = watch.Elapsed.TotalSeconds;
            watch.Restart();

            var targetNotes = new List<string>(notes);
            double measured;
            using (var stage = progress.Begin($"verify {Format(target)} bits", 1))
            {
                try
                {
                    measured = CurveMeasurer.RoundDistortion(verifier.Measure(quantized));
                }
                catch (OrtException ex) when (rewrite.Layers.Any(l => l.Container == DataType.Int2))
                {
                    // INT2 needs opset 25, where some ops resolve to versions ONNX Runtime has no kernel for (e.g.
                    // RoiAlign-22 in 1.30). The same 2-bit values fit an INT4 container at opset 21.
                    var failedOpset = rewrite.Opset;
                    quantized = canonical.Clone();
                    rewrite = QdqRewriter.Apply(quantized, plans, calibration, options, allowInt2: false);
                    targetNotes.Add($"ONNX Runtime could not load the model with INT2 containers at opset {failedOpset} " +
                                    $"({FirstLine(ex.Message)}); 2-bit weights are stored in INT4 containers instead (same values, larger file)");
                    measured = CurveMeasurer.RoundDistortion(verifier.Measure(quantized));
                }
                stage.Advance();
            }
            var bytes = ModelIO.ToBytes(quantized);
            var verifySeconds = watch.Elapsed.TotalSeconds;

            var unitReports = allocation.Units.Select(a =>
            {
                var unit = freeUnits.First(u => u.Name == a.Name);
                return new UnitReport(a.Name, unit.Layer.Name, unit.Layer.OpType, unit.ChannelStart, unit.ChannelCount, a.Size, a.Bits, a.Distortion);
            }).ToList();
            var sizes = new SizeReport(
                rewrite.Layers.Sum(l => l.FloatBytes),
                rewrite.Layers.Sum(l => l.IdealBits),
                rewrite.Layers.Sum(l => l.Bytes),
                bytes.LongLength);
            targetNotes.AddRange(allocation.Warnings.Select(w => w.Message));
            if (options.ActBits > 0 && rewrite.WeightOnlyLayers.Count > 0)
                targetNotes.Add($"{rewrite.WeightOnlyLayers.Count} INT2 layer(s) keep float activations (ONNX Runtime 1.30 cannot fuse INT2 weights with quantized activations): {string.Join(", ", rewrite.WeightOnlyLayers)}");
            var report = new CompileReport(toolVersion, target, allocation.Rate, options.Solver.ToString().ToLowerInvariant(), minBits,
                features, options.Curves, curveSet.FromCache, options.Format == WeightFormat.Qdq ? "qdq" : "matmulnbits",
                options.ActBits, options.ActCalibration.ToString().ToLowerInvariant(), rewrite.Opset,
                unitReports, heads, discovery.Skipped, curveSet.Curves, rewrite.Layers, sizes,
                new DistortionReport(allocation.PredictedDistortion, measured, verifier.Samples, heldOut, Metric),
                targetNotes, []) { CurveGains = curveSet.Gains };
            perTarget.Add((report, bytes, allocateSeconds, rewriteSeconds, verifySeconds));
        }
        timings.Add(new StageTime("allocate", perTarget.Sum(t => t.AllocateSeconds)));
        timings.Add(new StageTime("rewrite", perTarget.Sum(t => t.RewriteSeconds)));
        timings.Add(new StageTime("verify", perTarget.Sum(t => t.VerifySeconds) + timings.First(t => t.Stage == "verify-setup").Seconds));
        timings.RemoveAll(t => t.Stage == "verify-setup");
        clock.Restart();

        // Everything is computed: now write. Each file atomically; the manifest last.
        Directory.CreateDirectory(outputDirectory);
        var results = new List<TargetResult>();
        var outputs = new List<ReportWriter.OutputFile>();
        var single = perTarget.Count == 1;
        foreach (var (report, bytes, _, _, _) in perTarget)
        {
            var dir = single ? outputDirectory : Path.Combine(outputDirectory, $"bits-{Format(report.TargetBits)}");
            var modelOut = Path.Combine(dir, "model.onnx");
            AtomicFile.Write(modelOut, s => s.Write(bytes));
            var relative = Path.GetRelativePath(outputDirectory, modelOut).Replace('\\', '/');
            outputs.Add(new ReportWriter.OutputFile(relative, Sha256(bytes), bytes.LongLength));
            results.Add(new TargetResult(report, modelOut, Path.Combine(dir, "report.json")));
        }
        Stage("write");
        var totalTimings = timings.ToList();
        for (var i = 0; i < results.Count; i++)
        {
            var report = results[i].Report with { Timings = totalTimings };
            results[i] = results[i] with { Report = report };
            var json = ReportWriter.Report(report);
            AtomicFile.Write(results[i].ReportPath, s => s.Write(json));
        }
        var manifest = ReportWriter.Manifest(toolVersion, Path.GetFileName(modelPath), modelHash, dataHash, samples,
            ManifestOptions(options, features), outputs);
        AtomicFile.Write(Path.Combine(outputDirectory, "manifest.json"), s => s.Write(manifest));

        string? guard = null;
        if (options.MaxDistortion is { } max)
        {
            var worst = results.Select(r => r.Report).Where(r => r.Distortion.Measured > max).ToList();
            if (worst.Count > 0)
                guard = $"accuracy guard failed: measured distortion {string.Join(", ", worst.Select(r => $"{r.Distortion.Measured.ToString("G4", CultureInfo.InvariantCulture)} at {Format(r.TargetBits)} bits"))} exceeds --max-distortion {max.ToString(CultureInfo.InvariantCulture)}";
        }
        return new CompileResult(results, outputDirectory, guard is not null, guard, totalTimings, freeUnits.Count, heads.Count, curveSet.Runs);
    }

    private static void Validate(CompileOptions o, string modelPath, string outputDirectory)
    {
        if (!File.Exists(modelPath))
            throw new CompileException($"{modelPath}: model file not found");
        if (o.TargetBits.Count == 0)
            throw new CompileException("--target-bits needs at least one value");
        foreach (var t in o.TargetBits)
            if (!double.IsFinite(t) || t < 1 || t > 8)
                throw new CompileException($"--target-bits {t.ToString(CultureInfo.InvariantCulture)} is outside 1..8 average bits per weight");
        if (o.TargetBits.Distinct().Count() != o.TargetBits.Count)
            throw new CompileException("--target-bits lists a value twice");
        if (o.CandidateBits.Count == 0 || o.CandidateBits.Any(b => b is < 2 or > 8) || o.CandidateBits.Distinct().Count() != o.CandidateBits.Count)
            throw new CompileException($"--bits {string.Join(",", o.CandidateBits)}: candidate widths must be distinct and between 2 and 8");
        if (o.ActBits is not (0 or 8 or 16))
            throw new CompileException($"--act-bits {o.ActBits}: activations are quantized at 8 or 16 bits (0 = weights only)");
        if (o.HeadBits is < 2 or > 8)
            throw new CompileException($"--head-bits {o.HeadBits} is outside 2..8");
        if (o.CalibSamples < 1)
            throw new CompileException($"--calib-samples {o.CalibSamples}: need at least one sample");
        if (o.VerifySamples < 0)
            throw new CompileException($"--verify-samples {o.VerifySamples} is negative");
        if (o.GroupSize < 1)
            throw new CompileException($"--group-size {o.GroupSize}: need at least one channel per group");
        if (o.BlockSize is not (16 or 32 or 64 or 128))
            throw new CompileException($"--block-size {o.BlockSize}: MatMulNBits takes 16, 32, 64 or 128");
        if (o.MinBits is { } m && (m < 2 || m > 8))
            throw new CompileException($"--min-bits {m} is outside 2..8");
        if (o.Epsilon is <= 0 or > 1)
            throw new CompileException($"--epsilon {o.Epsilon.ToString(CultureInfo.InvariantCulture)} must be in (0, 1]");
        foreach (var t in o.TargetBits)
        {
            var least = Math.Max(o.MinBitsFor(t), o.CandidateBits.Min());
            if (o.CandidateBits.All(b => b < o.MinBitsFor(t)))
                throw new CompileException($"--min-bits {o.MinBitsFor(t)} is above every candidate width ({string.Join(",", o.CandidateBits)})");
            // Checked before any measurement so an impossible budget costs nothing.
            if (t < least)
                throw new CompileException($"infeasible budget: target {Format(t)} bits is below the least width {least} every unit must take (--min-bits/--bits); raise the target or lower the minimum");
        }
        if (o.Threads < 0)
            throw new CompileException($"--threads {o.Threads} is negative");
        if (File.Exists(outputDirectory))
            throw new CompileException($"{outputDirectory}: the output path is a file; -o names a folder");
        var modelFull = Path.GetFullPath(modelPath);
        var outputs = o.TargetBits.Count == 1
            ? [Path.GetFullPath(Path.Combine(outputDirectory, "model.onnx"))]
            : o.TargetBits.Select(t => Path.GetFullPath(Path.Combine(outputDirectory, $"bits-{Format(t)}", "model.onnx")));
        if (outputs.Contains(modelFull))
            throw new CompileException($"{modelPath}: the output would overwrite the input model; choose another -o folder");
    }

    private static InputSpec Spec(Value v, string modelPath)
    {
        if (v.Type is not { } type)
            throw new CompileException($"{modelPath}: input '{v.Name}' is not a tensor or has no type");
        var dims = type.Shape?.Dims.Select(d => d.Value is { } x && x > 0 ? x : (long?)null).ToList()
            ?? throw new CompileException($"{modelPath}: input '{v.Name}' has no shape; calibration data cannot be checked against it");
        return new InputSpec(v.Name, type.ElementType, dims);
    }

    private static IReadOnlyList<string> ResolveFeatures(Model model, IReadOnlyList<string> requested)
    {
        var graph = model.Graph;
        if (requested.Count == 0)
        {
            var outputs = graph.Outputs.Where(o => o.Type?.ElementType == DataType.Float).Select(o => o.Name).ToList();
            if (outputs.Count == 0)
                throw new CompileException("the model has no float outputs to measure distortion on; name tensors with --feature");
            return outputs;
        }
        foreach (var f in requested)
        {
            var value = graph.FindValue(f) ?? throw new CompileException(
                $"--feature '{f}' names no tensor of the model (outputs: {string.Join(", ", graph.Outputs.Select(o => o.Name))})");
            if (value.Type is { } t && t.ElementType != DataType.Float)
                throw new CompileException($"--feature '{f}' is {t.ElementType}; distortion is measured on float tensors");
            if (value.IsInitializer || value.IsGraphInput)
                throw new CompileException($"--feature '{f}' is a model input or constant, not computed by the model");
        }
        return requested.Distinct().ToList();
    }

    private static CurveSet LoadOrMeasureCurves(Model canonical, IReadOnlyList<QuantUnit> units, IReadOnlyList<string> features,
        CalibrationSet data, int samples, CalibrationTable? calibration, CompileOptions options, SessionOptions runOptions,
        IProgressSink progress, string modelHash, string dataHash, CutCurveMeasurer? cutCurves)
    {
        CurveCache? cache = options.CacheDir is { } dir ? new CurveCache(dir) : null;
        var key = CurveCache.Key(Sha256(ModelIO.ToBytes(canonical)), dataHash, CurveOptionParts(options, features));
        var unitKeys = units.Select(u => (u.Name, u.Size)).ToList();
        if (cache?.TryLoad(key, unitKeys) is { } cached)
        {
            progress.Note($"curves: loaded from cache {cache.PathOf(key)}");
            return new CurveSet(cached, options.Curves, true, 0);
        }
        var set = cutCurves?.Measure(data, runOptions, progress)
            ?? CurveMeasurer.Measure(canonical, units, features, data, samples, calibration, options, runOptions, progress);
        cache?.Store(key, set.Curves);
        return set;
    }

    private static IEnumerable<string> CurveOptionParts(CompileOptions o, IReadOnlyList<string> features) =>
    [
        "features=" + string.Join(",", features),
        "bits=" + string.Join(",", o.CandidateBits.OrderBy(b => b)),
        "samples=" + o.CalibSamples,
        "granularity=" + o.Granularity,
        "group=" + o.GroupSize,
        "exclude=" + string.Join(",", o.Exclude),
        "format=" + o.Format,
        "block=" + o.BlockSize,
        "curves=" + o.Curves,
        .. o.Curves == CurveMode.Fast ? [] : CutCurveMeasurer.KeyParts(),
    ];

    private static IReadOnlyList<(string, string)> ManifestOptions(CompileOptions o, IReadOnlyList<string> features) =>
    [
        ("target_bits", string.Join(",", o.TargetBits.Select(Format))),
        ("calib_samples", o.CalibSamples.ToString(CultureInfo.InvariantCulture)),
        ("verify_samples", o.VerifySamples.ToString(CultureInfo.InvariantCulture)),
        ("verify_data", o.VerifyData is null ? "calibration file" : Path.GetFileName(o.VerifyData)),
        ("features", string.Join(",", features)),
        ("bits", string.Join(",", o.CandidateBits)),
        ("min_bits", o.MinBits?.ToString(CultureInfo.InvariantCulture) ?? "auto"),
        ("solver", o.Solver.ToString().ToLowerInvariant()),
        ("epsilon", o.Epsilon.ToString(CultureInfo.InvariantCulture)),
        ("act_bits", o.ActBits.ToString(CultureInfo.InvariantCulture)),
        ("act_calibration", o.ActCalibration.ToString().ToLowerInvariant()),
        ("granularity", o.Granularity.ToString().ToLowerInvariant()),
        ("group_size", o.GroupSize.ToString(CultureInfo.InvariantCulture)),
        ("exclude", string.Join(",", o.Exclude)),
        ("head_bits", o.HeadBits.ToString(CultureInfo.InvariantCulture)),
        ("format", o.Format.ToString().ToLowerInvariant()),
        ("block_size", o.BlockSize.ToString(CultureInfo.InvariantCulture)),
        ("curves", o.Curves.ToString().ToLowerInvariant()),
        ("max_distortion", o.MaxDistortion?.ToString(CultureInfo.InvariantCulture) ?? "none"),
    ];

    private static IReadOnlyList<LayerPlan> BuildPlans(UnitDiscoveryResult discovery, IReadOnlyList<QuantUnit> freeUnits,
        Allocation allocation, IReadOnlyList<HeadReport> heads, CompileOptions options)
    {
        var plans = new List<LayerPlan>();
        var headNames = heads.Select(h => h.Layer).ToHashSet(StringComparer.Ordinal);
        foreach (var layer in discovery.Layers)
        {
            var bits = new int[layer.Channels];
            if (headNames.Contains(layer.Name))
                Array.Fill(bits, options.HeadBits);
            else
            {
                var units = freeUnits.Where(u => u.Layer == layer).ToList();
                if (units.Count == 0)
                    continue;
                foreach (var u in units)
                    Array.Fill(bits, allocation.BitsOf(u.Name), u.ChannelStart, u.ChannelCount);
            }
            plans.Add(new LayerPlan(layer, bits));
        }
        return plans;
    }

    internal static string Sha256(byte[] bytes) => Convert.ToHexString(SHA256.HashData(bytes)).ToLowerInvariant();

    internal static string Format(double bits) => bits.ToString("0.##", CultureInfo.InvariantCulture);

    private static string FirstLine(string message) =>
        message.ReplaceLineEndings("\n").Split('\n', StringSplitOptions.RemoveEmptyEntries).FirstOrDefault()?.Trim() ?? "";
}
