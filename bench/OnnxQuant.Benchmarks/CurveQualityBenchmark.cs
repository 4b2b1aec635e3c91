using System.Diagnostics;
using System.Globalization;
using OnnxQuant.Passes.Compile;
using OnnxQuant.Passes.Curves;
using OnnxQuant.Passes.Pipeline;

namespace OnnxQuant.Benchmarks;

/// <summary>
/// Ratio benchmark `curve-quality`: how good the allocations of gain curves are against exact curves (the F-LBQ
/// reference) on one model, and what each costs. One exact compile and one gain compile per setting, all at the
/// budgets 8, 6, 5, 4, 3 with held-out verification; prints per budget the measured distortion of each allocation,
/// the gain/exact ratio, the rank correlation of predicted and measured distortion over the budgets, and the curve
/// runs and seconds of each. Usage:
/// curve-quality [model=models/fixtures/detr_small.onnx] [calib=models/data/calib.npz] [--verify-data models/data/eval.npz]
/// [--calib-samples 64] [--gain MIN,MAX,ERROR,LOW[,relay|direct] ...] (LOW: samples the gain at the lowest width is also measured on, 0 = not)
/// </summary>
public static class CurveQualityBenchmark
{
    public static RatioBenchmark Benchmark { get; } = new("curve-quality",
        "curve-quality [model] [calib] [--verify-data F] [--calib-samples 64] [--gain MIN,MAX,ERROR,LOW[,relay|direct] ...]: gain vs exact allocations", Run);

    private static readonly double[] Budgets = [8, 6, 5, 4, 3];

    /// <summary>MIN,MAX,ERROR,LOW[,relay|direct] (samples per gain, the error bar that stops adding samples, the
    /// low-width gain's samples, whether gains are chained through relay values) over <paramref name="basis"/>'s other
    /// settings.</summary>
    internal static GainSettings ParseGain(string text, GainSettings basis)
    {
        var p = text.Split(',');
        return basis with
        {
            MinSamples = int.Parse(p[0], CultureInfo.InvariantCulture), MaxSamples = int.Parse(p[1], CultureInfo.InvariantCulture),
            RelativeError = double.Parse(p[2], CultureInfo.InvariantCulture), LowWidthSamples = int.Parse(p[3], CultureInfo.InvariantCulture),
            Relay = p.Length < 5 ? basis.Relay : p[4] switch
            {
                "relay" => true,
                "direct" => false,
                _ => throw new ArgumentException($"--gain: the fifth field is 'relay' or 'direct', not '{p[4]}'"),
            },
        };
    }

    private static int Run(string[] args)
    {
        var positional = new List<string>();
        var samples = 64;
        var verify = "models/data/eval.npz";
        var settings = new List<GainSettings>();
        for (var i = 0; i < args.Length; i++)
        {
            if (args[i] == "--calib-samples") samples = int.Parse(args[++i], CultureInfo.InvariantCulture);
            else if (args[i] == "--verify-data") verify = args[++i];
            else if (args[i] == "--gain")
                settings.Add(ParseGain(args[++i], GainSettings.Default));
            else positional.Add(args[i]);
        }
        if (settings.Count == 0)
            settings.Add(GainSettings.Default);
        var model = positional.ElementAtOrDefault(0) ?? "models/fixtures/detr_small.onnx";
        var calib = positional.ElementAtOrDefault(1) ?? "models/data/calib.npz";
        var root = Path.Combine(Path.GetTempPath(), $"onnxquant-curve-quality-{Guid.NewGuid():N}");
        try
        {
            (CompileResult Result, double Seconds) Compile(string name, CurveMode mode, GainSettings gain)
            {
                var clock = Stopwatch.StartNew();
                var result = Compiler.Run(model, calib, Path.Combine(root, name), new CompileOptions
                {
                    Allocation = new() { TargetBits = Budgets },
                    Curves = new() { Mode = mode, Gain = gain, CacheDir = null },
                    Data = new() { CalibSamples = samples, VerifyData = verify },
                }, "bench", SilentProgress.Instance);
                var curveSeconds = result.Timings.Where(t => t.Stage == "curves").Sum(t => t.Seconds);
                return (result, curveSeconds);
            }
            var (exact, exactSeconds) = Compile("exact", CurveMode.Exact, GainSettings.Default);
            Console.WriteLine($"curve-quality: {Path.GetFileName(model)}, {samples} calibration samples, budgets {string.Join(",", Budgets)}, " +
                              $"no compensation; exact curves: {exact.CurveRuns} runs, {exactSeconds:0.0} s");
            double Measured(CompileResult r, double b) => r.Targets.Single(t => t.Report.TargetBits == b).Report.Distortion.Measured;
            foreach (var (gain, index) in settings.Select((g, i) => (g, i)))
            {
                var (result, seconds) = Compile($"gain-{index}", CurveMode.Gain, gain);
                var ratios = Budgets.Select(b => Measured(result, b) / Measured(exact, b)).ToList();
                var predicted = result.Targets.Select(t => t.Report.Distortion.Predicted).ToList();
                var measured = result.Targets.Select(t => t.Report.Distortion.Measured).ToList();
                Console.WriteLine($"gain samples {gain.MinSamples}..{gain.MaxSamples}, error {gain.RelativeError.ToString(CultureInfo.InvariantCulture)}, " +
                                  $"low-width gain on {gain.LowWidthSamples} sample(s), {(gain.Relay ? "relays" : "no relays")}: {result.CurveRuns} runs, {seconds:0.0} s " +
                                  $"({exactSeconds / seconds:0.0}x cheaper than exact)");
                Console.WriteLine("  budget  gain measured  exact measured  gain/exact");
                foreach (var (b, k) in Budgets.Select((b, k) => (b, k)))
                    Console.WriteLine($"  {b,6}  {Measured(result, b),13:G4}  {Measured(exact, b),14:G4}  {ratios[k],10:0.000}");
                Console.WriteLine($"  rank correlation predicted vs measured: {FastCurveProxy.RankCorrelation(predicted, measured):0.000}; " +
                                  $"worst gain/exact at 4 and 3 bits: {Math.Max(ratios[3], ratios[4]):0.000}");
            }
        }
        finally
        {
            if (Directory.Exists(root))
                Directory.Delete(root, true);
        }
        return 0;
    }
}
