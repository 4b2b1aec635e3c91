using System.Globalization;
using OnnxQuant.Data;
using OnnxQuant.Frontend;
using OnnxQuant.Passes.Artifact;
using OnnxQuant.Passes.Compile;
using OnnxQuant.Passes.Curves;
using OnnxQuant.Passes.Pipeline;
using OnnxQuant.Passes.Rewrite;
using OnnxQuant.Runtime;

namespace OnnxQuant.Benchmarks;

/// <summary>
/// Ratio benchmark `deploy-speed`: compiles each model at W8A8 and W4-mixed (A8) for both deploy targets, then times
/// the float model and the four artifacts in one process, in alternating turns of runs (<see cref="AlternatingTimer"/>: machine load affects all alike),
/// at each thread count. Prints median latencies, the ratio float / quantized, weight bytes against float and the
/// measured distortion. Models: a ResNet-18-shaped network built in code (<see cref="ResNetGraph"/>, 224x224),
/// the bundled small DETR, and any `--model PATH --calib PATH` pair. Curves are `fast` (latency does not depend on
/// how the bits were chosen, and the benchmark should not spend its time measuring curves). `--feature A,B` names the
/// fixed-size tensors the `--model` compiles are verified on (a Mask-RCNN's detections change size with the data).
/// Usage: deploy-speed [--threads 1,2] [--runs 40] [--calib-samples 16] [--no-resnet] [--no-detr] [--feature A,B] [--model M --calib C]...
/// </summary>
public static class DeploySpeedBenchmark
{
    public static RatioBenchmark Benchmark { get; } = new("deploy-speed",
        "deploy-speed [--threads 1,2] [--runs 40] [--calib-samples 16] [--no-resnet] [--no-detr] [--feature A,B] [--model M --calib C]...: " +
        "float / quantized latency of the size and speed targets", Run);

    private sealed record Variant(string Name, string Path, CompileReport? Report);

    // The features of the --model compiles (the built and bundled models use their outputs).
    private static IReadOnlyList<string> _features = [];

    private static int Run(string[] args)
    {
        var threads = new List<int> { 1, 2 };
        var runs = 40;
        var samples = 16;
        var models = new List<(string Name, string Model, string Calib)>();
        var resnet = true;
        var detr = true;
        for (var i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--threads": threads = args[++i].Split(',').Select(t => int.Parse(t, CultureInfo.InvariantCulture)).ToList(); break;
                case "--runs": runs = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--calib-samples": samples = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--no-resnet": resnet = false; break;
                case "--no-detr": detr = false; break;
                case "--feature": _features = args[++i].Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries); break;
                case "--model":
                    var path = args[++i];
                    if (i + 2 >= args.Length || args[i + 1] != "--calib")
                        throw new ArgumentException("--model PATH must be followed by --calib PATH");
                    i++;
                    models.Add((Path.GetFileNameWithoutExtension(path), path, args[++i]));
                    break;
                default: throw new ArgumentException($"unknown argument '{args[i]}'");
            }
        }
        var work = Path.Combine(Path.GetTempPath(), $"onnxquant-deploy-speed-{Guid.NewGuid():N}");
        Directory.CreateDirectory(work);
        try
        {
            if (resnet)
            {
                var model = Path.Combine(work, "resnet18.onnx");
                ModelIO.Save(ResNetGraph.Build(), model);
                var calib = Path.Combine(work, "resnet18_calib.npz");
                var count = samples + 8; // the last 8 verify
                Npz.Write(calib, [new NamedArray("images", NpyArray.FromFloats(ResNetGraph.Images(count, 224), count, 3, 224, 224))]);
                models.Insert(0, ("resnet18 (built, 224x224)", model, calib));
            }
            if (detr && File.Exists("models/fixtures/detr_small.onnx"))
                models.Insert(resnet ? 1 : 0, ("detr_small (bundled, 128x128)", "models/fixtures/detr_small.onnx", "models/data/calib.npz"));

            var rows = new List<string>();
            foreach (var (name, model, calib) in models)
            {
                var own = name.Contains("(bundled", StringComparison.Ordinal) || name.Contains("(built", StringComparison.Ordinal);
                var variants = Compile(name, model, calib, samples, Path.Combine(work, rows.Count.ToString(CultureInfo.InvariantCulture)), own ? [] : _features);
                foreach (var t in threads)
                    rows.Add(Time(name, variants, t, runs));
            }
            Console.WriteLine();
            Console.WriteLine("| model | threads | float ms | W8A8 size | W8A8 speed | W4 mixed size | W4 mixed speed |");
            Console.WriteLine("| --- | --- | --- | --- | --- | --- | --- |");
            foreach (var row in rows)
                Console.WriteLine(row);
            Console.WriteLine("(cells: median ms and float / quantized latency ratio)");
            return 0;
        }
        finally
        {
            Directory.Delete(work, recursive: true);
        }
    }

    private static List<Variant> Compile(string name, string model, string calib, int samples, string outDir, IReadOnlyList<string> features)
    {
        var variants = new List<Variant> { new("float", model, null) };
        foreach (var deploy in new[] { DeployTarget.Size, DeployTarget.Speed })
        {
            var dir = Path.Combine(outDir, deploy.ToString().ToLowerInvariant());
            var options = new CompileOptions
            {
                Data = new() { CalibSamples = samples, VerifySamples = 8 },
                Features = new() { Features = features },
                // One curve cache per model: both targets share the curves (they do not depend on the deploy target).
                Curves = new() { Mode = CurveMode.Fast, CacheDir = Path.Combine(outDir, "curves") },
                Allocation = new() { TargetBits = [8, 4] },
                Rewrite = new() { Deploy = deploy },
            };
            var result = Compiler.Run(model, calib, dir, options, "bench", SilentProgress.Instance);
            foreach (var target in result.Targets)
                variants.Add(new Variant($"W{target.Report.TargetBits:0} {deploy.ToString().ToLowerInvariant()}", target.ModelPath, target.Report));
        }
        Console.WriteLine($"{name}: float weights {variants[1].Report!.Sizes.FloatWeightBytes / 1048576.0:0.00} MiB");
        Console.WriteLine($"{"artifact",-12}{"weights/float",15}{"measured D",13}{"act. cost",12}{"integer kernels",17}{"weight DQ left",16}");
        foreach (var v in variants.Skip(1))
        {
            var r = v.Report!;
            Console.WriteLine($"{v.Name,-12}{(double)r.Sizes.QuantizedWeightBytes / r.Sizes.FloatWeightBytes,15:0.000}{r.Distortion.Measured,13:G3}" +
                              $"{(r.Deploy is { } d ? d.ActivationCost(r.Distortion.Measured).ToString("G3", CultureInfo.InvariantCulture) : "-"),12}" +
                              $"{(r.Deploy?.IntegerKernels.ToString(CultureInfo.InvariantCulture) ?? "-"),17}{(r.Deploy?.WeightDequantizeLeft.ToString(CultureInfo.InvariantCulture) ?? "-"),16}");
        }
        return variants;
    }

    private static string Time(string name, List<Variant> variants, int threads, int runs)
    {
        var options = new SessionOptions { IntraOpThreads = threads };
        var sessions = variants.Select(v => InferenceSession.Create(v.Path, options)).ToList();
        try
        {
            var feeds = sessions.Select(s => RandomInputs.Create(RandomInputs.ResolveShapes(s.Inputs, new Dictionary<string, long[]>()), 0)).ToList();
            var samples = AlternatingTimer.Time(sessions.Select((session, m) => (Action)(() => session.Run(feeds[m]))).ToList(), 3, runs);
            var medians = samples.Select(s => LatencyStats.From(s).MedianMs).ToList();
            // Columns in the table's order: W8 size, W8 speed, W4 size, W4 speed.
            string Cell(string variant)
            {
                var m = variants.FindIndex(v => v.Name == variant);
                return m < 0 ? "-" : $"{medians[m]:0.00} ({medians[0] / medians[m]:0.00}x)";
            }
            return $"| {name} | {threads} | {medians[0]:0.00} | {Cell("W8 size")} | {Cell("W8 speed")} | {Cell("W4 size")} | {Cell("W4 speed")} |";
        }
        finally
        {
            foreach (var s in sessions)
                s.Dispose();
        }
    }
}
