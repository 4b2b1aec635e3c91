using System.Diagnostics;
using System.Globalization;
using OnnxQuant.Frontend;
using OnnxQuant.Passes.Calibration;
using OnnxQuant.Passes.Compile;
using OnnxQuant.Runtime;

namespace OnnxQuant.Benchmarks;

/// <summary>
/// Ratio benchmark `compile-stages`: one whole compile (no curve cache) with the time of each stage, and the ratio of
/// the whole compile to one float forward pass over the calibration samples (fastest of three; same session options, one sample per
/// run, as the compile runs a model with a fixed batch). Usage:
/// compile-stages [model=models/fixtures/detr_small.onnx] [calib=models/data/calib.npz] [--calib-samples 64] [--target-bits 4]
/// [--curves gain|exact|fast] [--feature NAME ...] [--verify-data FILE]. Also prints the peak resident memory of the
/// process against the bound 2 x model file + 1 GiB.
/// </summary>
public static class CompileStagesBenchmark
{
    public static RatioBenchmark Benchmark { get; } = new("compile-stages",
        "compile-stages [model] [calib] [--calib-samples 64] [--target-bits 4] [--curves gain|exact|fast] [--feature F]... [--verify-data F]: stage times, compile / float-forward ratio, peak memory", Run);

    private static int Run(string[] args)
    {
        var positional = new List<string>();
        var samples = 64;
        var targets = new List<double> { 4 };
        var curves = CurveMode.Gain;
        var features = new List<string>();
        string? verifyData = null;
        for (var i = 0; i < args.Length; i++)
        {
            if (args[i] == "--calib-samples") samples = int.Parse(args[++i], CultureInfo.InvariantCulture);
            else if (args[i] == "--target-bits") targets = args[++i].Split(',').Select(s => double.Parse(s, CultureInfo.InvariantCulture)).ToList();
            else if (args[i] == "--curves") curves = Enum.Parse<CurveMode>(args[++i], ignoreCase: true);
            else if (args[i] == "--feature") features.Add(args[++i]);
            else if (args[i] == "--verify-data") verifyData = args[++i];
            else positional.Add(args[i]);
        }
        var modelPath = positional.ElementAtOrDefault(0) ?? "models/fixtures/detr_small.onnx";
        var calibPath = positional.ElementAtOrDefault(1) ?? "models/data/calib.npz";

        var model = ModelIO.Load(modelPath);
        var inputs = model.Graph.Inputs.Where(v => !v.IsInitializer)
            .Select(v => new InputSpec(v.Name, v.Type!.ElementType, v.Type.Shape!.Dims.Select(d => d.Value is { } x && x > 0 ? x : (long?)null).ToList()))
            .ToList();
        var data = CalibrationSet.Load(calibPath, inputs);
        samples = Math.Min(samples, data.Count);

        // One float forward pass over the calibration samples.
        var options = new SessionOptions(); // the compile's curve sessions use ORT's default threads too
        using (var session = InferenceSession.Create(modelPath, options))
        {
            Forward(session, data, Math.Min(4, samples)); // warm-up
            // The fastest of three passes: the machine may be shared, and the ratio should not flatter the compile.
            var forward = double.PositiveInfinity;
            var clock = new Stopwatch();
            for (var pass = 0; pass < 3; pass++)
            {
                clock.Restart();
                Forward(session, data, samples);
                forward = Math.Min(forward, clock.Elapsed.TotalSeconds);
            }

            var outDir = Path.Combine(Path.GetTempPath(), $"onnxquant-bench-{Guid.NewGuid():N}");
            try
            {
                clock.Restart();
                var result = Compiler.Run(modelPath, calibPath, outDir,
                    new CompileOptions { TargetBits = targets, CalibSamples = samples, CacheDir = null, Curves = curves, Features = features, VerifyData = verifyData }, "bench", SilentProgress.Instance);
                var total = clock.Elapsed.TotalSeconds;
                Console.WriteLine($"compile-stages: {Path.GetFileName(modelPath)}, {samples} calibration samples, target {string.Join(",", targets)} bits, " +
                                  $"{result.Units} units, curves {curves.ToString().ToLowerInvariant()}, {result.CurveRuns} curve runs");
                Console.WriteLine($"{"stage",-14}{"seconds",10}{"share",9}");
                foreach (var stage in result.Timings)
                    Console.WriteLine($"{stage.Stage,-14}{stage.Seconds,10:0.00}{100 * stage.Seconds / total,8:0.0}%");
                Console.WriteLine($"{"total",-14}{total,10:0.00}");
                Console.WriteLine($"float forward over {samples} samples: {forward:0.000} s ({1000 * forward / samples:0.0} ms/sample)");
                Console.WriteLine($"ratio compile / float forward: {total / forward:0.0}x " +
                                  $"(curve runs / samples = {(double)result.CurveRuns / samples:0.0} cut runs per sample)");
                var peak = ProcessMemory.PeakResidentBytes();
                var bound = 2 * new FileInfo(modelPath).Length + (1L << 30);
                Console.WriteLine($"peak resident memory: {peak / (double)(1 << 20):0} MiB (bound 2 x model + 1 GiB = {bound / (double)(1 << 20):0} MiB)");
            }
            finally
            {
                if (Directory.Exists(outDir))
                    Directory.Delete(outDir, true);
            }
        }
        return 0;
    }

    private static void Forward(InferenceSession session, CalibrationSet data, int samples)
    {
        for (var s = 0; s < samples; s++)
            session.Run(data.Batch(s, 1).Select(b => new NamedTensor(b.Name, TensorData.FromBytes(b.DataType, b.Data, b.Shape))).ToList());
    }
}
