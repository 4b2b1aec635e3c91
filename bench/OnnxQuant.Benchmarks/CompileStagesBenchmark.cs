using System.Diagnostics;
using System.Globalization;
using OnnxQuant.Frontend;
using OnnxQuant.Passes.Calibration;
using OnnxQuant.Passes.Compile;
using OnnxQuant.Runtime;
using OnnxQuant.Passes.Pipeline;
using OnnxQuant.Passes.Curves;
using OnnxQuant.Passes.Units;
using OnnxQuant.Passes.Quantization;
using OnnxQuant.Passes.Artifact;

namespace OnnxQuant.Benchmarks;

/// <summary>
/// Ratio benchmark `compile-stages`: one whole compile (no curve cache) with the time of each stage, and the ratio of
/// the whole compile to one float forward pass over the calibration samples (fastest of three; same session options, one sample per
/// run, as the compile runs a model with a fixed batch). Usage:
/// compile-stages [model=models/fixtures/detr_small.onnx] [calib=models/data/calib.npz] [--calib-samples 64] [--target-bits 4]
/// [--verify-data eval.npz] [--curves gain|exact|fast] [--compensation none|bias|gptq|all] [--feature name,...]
/// [--row-samples N] (samples the layer input rows come from) [--segment-layers N] (layers per cut session)
/// [--gain MIN,MAX,ERROR,LOW[,relay|direct]] (gain sampling, as in curve-quality). The
/// compile's options are the CLI's defaults otherwise (compensation all, none with fast curves). Peak resident memory
/// is the process's high-water mark (VmHWM) reset before the compile (Linux: /proc/self/clear_refs), so the float
/// pass's session, closed by then, does not count.
/// </summary>
public static class CompileStagesBenchmark
{
    public static RatioBenchmark Benchmark { get; } = new("compile-stages",
        "compile-stages [model] [calib] [--calib-samples 64] [--target-bits 4] [--verify-data F] [--curves gain|exact|fast] [--compensation M] [--feature a,b] [--row-samples N] [--segment-layers N] [--gain MIN,MAX,ERROR,LOW[,relay|direct]]: " +
        "stage times, compile / float-forward ratio, peak memory", Run);

    private static int Run(string[] args)
    {
        var positional = new List<string>();
        var samples = 64;
        var targets = new List<double> { 4 };
        string? verifyData = null, compensation = null;
        var curveMode = CurveMode.Gain;
        IReadOnlyList<string> features = [];
        var gain = GainSettings.Default;
        for (var i = 0; i < args.Length; i++)
        {
            if (args[i] == "--calib-samples") samples = int.Parse(args[++i], CultureInfo.InvariantCulture);
            else if (args[i] == "--target-bits") targets = args[++i].Split(',').Select(s => double.Parse(s, CultureInfo.InvariantCulture)).ToList();
            else if (args[i] == "--verify-data") verifyData = args[++i];
            else if (args[i] == "--curves") curveMode = Enum.Parse<CurveMode>(args[++i], ignoreCase: true);
            else if (args[i] == "--compensation") compensation = args[++i];
            else if (args[i] == "--feature") features = args[++i].Split(',');
            else if (args[i] == "--row-samples") gain = gain with { RowSamples = int.Parse(args[++i], CultureInfo.InvariantCulture) };
            else if (args[i] == "--segment-layers") gain = gain with { SegmentLayers = int.Parse(args[++i], CultureInfo.InvariantCulture) };
            else if (args[i] == "--gain") gain = CurveQualityBenchmark.ParseGain(args[++i], gain);
            else positional.Add(args[i]);
        }
        var compensate = compensation is not null ? Compensator.Parse(compensation)
            : curveMode == CurveMode.Fast ? Compensation.None : Compensation.All;
        var modelPath = positional.ElementAtOrDefault(0) ?? "models/fixtures/detr_small.onnx";
        var calibPath = positional.ElementAtOrDefault(1) ?? "models/data/calib.npz";

        var model = ModelIO.Load(modelPath);
        var inputs = model.Graph.Inputs.Where(v => !v.IsInitializer)
            .Select(v => new InputSpec(v.Name, v.Type!.ElementType, v.Type.Shape!.Dims.Select(d => d.Value is { } x && x > 0 ? x : (long?)null).ToList()))
            .ToList();
        // One float forward pass over the calibration samples.
        var options = new SessionOptions(); // the compile's curve sessions use ORT's default threads too
        var forward = double.PositiveInfinity;
        var clock = new Stopwatch();
        using (var data = CalibrationSet.Load(calibPath, inputs))
        using (var session = InferenceSession.Create(modelPath, options))
        {
            samples = Math.Min(samples, data.Count);
            Forward(session, data, Math.Min(4, samples)); // warm-up
            // The fastest of three passes: the machine may be shared, and the ratio should not flatter the compile. A pass
            // of minutes (Swin-T and ViT-B at 512x512: 5 and 7 minutes) is its own average and is not repeated.
            var spent = 0.0;
            for (var pass = 0; pass < 3 && spent < RepeatPassesUnderSeconds; pass++)
            {
                clock.Restart();
                Forward(session, data, samples);
                forward = Math.Min(forward, clock.Elapsed.TotalSeconds);
                spent += clock.Elapsed.TotalSeconds;
            }
        }
        // The float session and this pass's data are gone before the compile starts, so the peak below is the compile's.
        var outDir = Path.Combine(Path.GetTempPath(), $"onnxquant-bench-{Guid.NewGuid():N}");
        try
        {
            ResetPeakResident();
            var memory = new MemoryTrace();
            clock.Restart();
            var result = Compiler.Run(modelPath, calibPath, outDir,
                new CompileOptions
                {
                    Allocation = new() { TargetBits = targets },
                    Data = new() { CalibSamples = samples, VerifyData = verifyData },
                    Features = new() { Features = features },
                    Curves = new() { CacheDir = null, Mode = curveMode, Gain = gain },
                    Rewrite = new() { Compensation = compensate },
                }, "bench", memory);
            var total = clock.Elapsed.TotalSeconds;
            Console.WriteLine($"compile-stages: {Path.GetFileName(modelPath)}, {samples} calibration samples, target {string.Join(",", targets)} bits, " +
                              $"{result.Units} units, curves {curveMode.ToString().ToLowerInvariant()}, compensation {Compensator.Name(compensate)}, {result.CurveRuns} curve runs");
            Console.WriteLine($"{"stage",-14}{"seconds",10}{"share",9}");
            foreach (var stage in result.Timings)
                Console.WriteLine($"{stage.Stage,-14}{stage.Seconds,10:0.00}{100 * stage.Seconds / total,8:0.0}%");
            Console.WriteLine($"{"total",-14}{total,10:0.00}");
            Console.WriteLine($"float forward over {samples} samples: {forward:0.000} s ({1000 * forward / samples:0.0} ms/sample)");
            Console.WriteLine($"ratio compile / float forward: {total / forward:0.0}x " +
                              $"(curve runs / samples = {(double)result.CurveRuns / samples:0.0})");
            if (result.CurveTiming is { } t)
                Console.WriteLine($"curves: cache fill {t.CacheFill:0.00} s, sessions {t.Sessions:0.00} s, quantize {t.Quantize:0.00} s, " +
                                  $"local errors {t.LocalErrors:0.00} s, cut runs {t.Runs:0.00} s");
            var modelBytes = new FileInfo(modelPath).Length;
            Console.WriteLine($"peak resident memory: {PeakResidentBytes() >> 20} MiB (bound 2 x model + 1 GiB = {(2 * modelBytes + (1L << 30)) >> 20} MiB)");
            Console.WriteLine("resident memory at stage boundaries (MiB): " + string.Join(", ", memory.Points));
            foreach (var note in result.Targets[0].Report.Notes.Where(n => n.StartsWith("curve", StringComparison.Ordinal) || n.StartsWith("gain relays", StringComparison.Ordinal)))
                Console.WriteLine("note: " + note);
        }
        finally
        {
            if (Directory.Exists(outDir))
                Directory.Delete(outDir, true);
        }
        return 0;
    }

    /// <summary>Float passes are repeated only while they have taken less than this in all.</summary>
    private const double RepeatPassesUnderSeconds = 120;

    /// <summary>Sets the resident high-water mark to the current resident size (Linux 4.0 and later; elsewhere the
    /// peak stays the process's).</summary>
    private static void ResetPeakResident()
    {
        try
        {
            File.WriteAllText("/proc/self/clear_refs", "5");
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
        }
    }

    /// <summary>The process's resident high-water mark (Linux VmHWM); 0 where /proc is not available.</summary>
    private static long PeakResidentBytes() => Resident("VmHWM:");

    /// <summary>A line of /proc/self/status in bytes (VmHWM, VmRSS); 0 where /proc is not available.</summary>
    private static long Resident(string key)
    {
        const string status = "/proc/self/status";
        if (!File.Exists(status))
            return 0;
        var line = File.ReadLines(status).FirstOrDefault(l => l.StartsWith(key, StringComparison.Ordinal));
        return line is null ? 0 : long.Parse(line.Split([' ', '\t'], StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) * 1024;
    }

    /// <summary>Records the resident memory (now / high-water mark) when each stage of the compile ends, to show which
    /// stage holds what.</summary>
    private sealed class MemoryTrace : IProgressSink
    {
        public List<string> Points { get; } = [];

        public IStageProgress Begin(string stage, int total) => new End(this, stage);

        public void Note(string message) { }

        private sealed class End(MemoryTrace trace, string stage) : IStageProgress
        {
            public void Advance(int steps = 1) { }

            public void Dispose() => trace.Points.Add($"{stage} {Resident("VmRSS:") >> 20}/{PeakResidentBytes() >> 20}");
        }
    }

    private static void Forward(InferenceSession session, CalibrationSet data, int samples)
    {
        for (var s = 0; s < samples; s++)
            session.Run(data.Batch(s, 1).Select(b => new NamedTensor(b.Name, TensorData.FromBytes(b.DataType, b.Data, b.Shape))).ToList());
    }
}
