using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;
using OnnxQuant.Runtime;
using Spectre.Console;

namespace OnnxQuant.Cli;

/// <summary>
/// `onnxquant bench`: latency of a model in ONNX Runtime on random inputs of its declared shapes, optionally against a
/// second model run alternately in the same process (so both see the same machine state).
/// </summary>
internal static class BenchCommand
{
    private const int MaxRuns = 100_000;

    public static Command Create()
    {
        var model = new Argument<string>("model") { Description = "The ONNX model to time" };
        var ep = RuntimeCliOptions.ExecutionProvider();
        var threads = RuntimeCliOptions.Threads();
        var ortLib = RuntimeCliOptions.OrtLib();
        var customOps = RuntimeCliOptions.CustomOpLibraries();
        var runs = new Option<int>("--runs") { Description = "Timed runs per model", DefaultValueFactory = _ => 50 };
        var warmup = new Option<int>("--warmup") { Description = "Untimed runs per model before timing", DefaultValueFactory = _ => 5 };
        var shapes = new Option<string[]>("--shape")
        {
            Description = "Shape of an input with symbolic dimensions, e.g. --shape images=1x3x512x512 (repeatable)",
            HelpName = "NAME=DxDx...",
        };
        var vs = new Option<string?>("--vs") { Description = "A second model to time alternately; prints the latency ratio", HelpName = "OTHER.onnx" };
        var block = new Option<int>("--block")
        {
            Description = "With --vs: timed runs of one model per turn before the other takes its turn",
            DefaultValueFactory = _ => AlternatingTimer.DefaultBlock,
        };
        var settle = new Option<int>("--settle")
        {
            Description = "With --vs: untimed runs at the start of each turn, while the model recovers from the other's run " +
                          "(--block 1 --settle 0 alternates run by run)",
            DefaultValueFactory = _ => AlternatingTimer.DefaultSettle,
        };
        var seed = new Option<int>("--seed") { Description = "Seed of the random inputs", DefaultValueFactory = _ => 0 };
        var outputs = new Option<string[]>("--output")
        {
            Description = "Time only what these tensors need (repeatable): graph outputs, or inner tensors such as a backbone's, " +
                          "made outputs for the runs (post-processing whose cost depends on the data, e.g. NMS, then stays out); " +
                          "with --vs both models must have them",
            HelpName = "NAME",
        };
        var json = new Option<bool>("--json") { Description = "Print one JSON object instead of a table" };
        var profileRuns = new Option<int>("--profile-runs")
        {
            Description = "With --vs: runs per model under ONNX Runtime's profiler after the timed runs, for the time per op type (0 = no profile)",
            DefaultValueFactory = _ => 10,
        };

        var command = new Command("bench", "Time a model in ONNX Runtime: median and p90 latency after warm-up, and peak memory");
        command.Arguments.Add(model);
        foreach (var option in new Option[] { ep, threads, runs, warmup, block, settle, shapes, vs, outputs, seed, json, profileRuns, ortLib, customOps })
            command.Options.Add(option);
        command.SetAction(parse =>
        {
            var runCount = parse.GetValue(runs);
            var warmupCount = parse.GetValue(warmup);
            // Each timed run keeps its latency: the bounds keep memory and time finite.
            if (runCount is < 1 or > MaxRuns)
                throw new CliInputException($"--runs must be 1..{MaxRuns}, got {runCount}");
            if (warmupCount is < 0 or > MaxRuns)
                throw new CliInputException($"--warmup must be 0..{MaxRuns}, got {warmupCount}");
            var blockCount = parse.GetValue(block);
            if (blockCount is < 1 or > MaxRuns)
                throw new CliInputException($"--block must be 1..{MaxRuns}, got {blockCount}");
            var settleCount = parse.GetValue(settle);
            if (settleCount is < 0 or > MaxRuns)
                throw new CliInputException($"--settle must be 0..{MaxRuns}, got {settleCount}");
            var profileCount = parse.GetValue(profileRuns);
            if (profileCount is < 0 or > MaxRuns)
                throw new CliInputException($"--profile-runs must be 0..{MaxRuns}, got {profileCount}");
            var shapeMap = ParseShapes(parse.GetValue(shapes) ?? []);
            var options = RuntimeCliOptions.SessionOptions(parse, ep, threads);
            var runtime = RuntimeCliOptions.Initialize(parse, ortLib, customOps);

            var paths = new List<string> { parse.GetValue(model)! };
            if (parse.GetValue(vs) is { } other)
                paths.Add(other);
            var fetch = (parse.GetValue(outputs) ?? []).Distinct(StringComparer.Ordinal).ToList();
            var open = paths.Select(path => fetch.Count == 0
                ? (Func<SessionOptions, InferenceSession>)(o => InferenceSession.Create(path, o))
                : WithOutputs(path, fetch)).ToList();
            var fetched = fetch.Count > 0 ? fetch : null;
            var sessions = new List<InferenceSession>();
            try
            {
                foreach (var create in open)
                    sessions.Add(create(options));
                var unused = shapeMap.Keys.Where(name => sessions.All(s => s.Inputs.All(i => i.Name != name))).ToList();
                if (unused.Count > 0)
                    throw new CliInputException(
                        $"--shape names {string.Join(", ", unused)}, which is not an input of {string.Join(" or ", paths)}; inputs: {string.Join(", ", sessions.SelectMany(s => s.Inputs))}");
                var feeds = new List<IReadOnlyList<NamedTensor>>();
                for (var m = 0; m < sessions.Count; m++)
                {
                    // With --vs, each model takes the --shape values naming its own inputs.
                    var own = shapeMap.Where(s => sessions[m].Inputs.Any(i => i.Name == s.Key)).ToDictionary(s => s.Key, s => s.Value);
                    try
                    {
                        feeds.Add(RandomInputs.Create(RandomInputs.ResolveShapes(sessions[m].Inputs, own), parse.GetValue(seed)));
                    }
                    catch (Exception ex) when (ex is ArgumentException or NotSupportedException)
                    {
                        throw new CliInputException($"{paths[m]}: {ex.Message}");
                    }
                }

                var samples = AlternatingTimer.Time(
                    sessions.Select((session, m) => (Action)(() => session.Run(feeds[m], fetched))).ToList(), warmupCount, runCount, blockCount, settleCount);

                // The profiler costs time per node, so its runs come after the timed ones, in sessions of their own.
                var profiles = sessions.Count > 1 && profileCount > 0
                    ? OpProfile.Measure(open, options, feeds, profileCount, Math.Min(warmupCount, 2), fetched)
                    : null;
                var results = sessions.Select((s, m) => new ModelResult(paths[m], LatencyStats.From(samples[m]), feeds[m], profiles?[m])).ToList();
                var report = new BenchReport(results, runCount, warmupCount, sessions.Count > 1 ? new Turns(blockCount, settleCount) : null, options.IntraOpThreads, sessions[0].ActiveProvider,
                    options.Provider, ProcessMemory.PeakResidentBytes(), runtime.Version, fetched);
                if (parse.GetValue(json))
                    parse.InvocationConfiguration.Output.WriteLine(JsonSerializer.Serialize(report.ToJson(), JsonOptions));
                else
                    WriteTable(report, parse.InvocationConfiguration.Output);
                return ExitCodes.Ok;
            }
            finally
            {
                foreach (var session in sessions)
                    session.Dispose();
            }
        });
        return command;
    }

    /// <summary>Opens the model with <paramref name="names"/> as its only graph outputs (inner tensors included) and
    /// without the nodes they do not need: ONNX Runtime runs every node of a graph whatever a run fetches.</summary>
    private static Func<SessionOptions, InferenceSession> WithOutputs(string path, IReadOnlyList<string> names)
    {
        OnnxQuant.Frontend.Model model;
        try
        {
            model = OnnxQuant.Frontend.ModelIO.Load(path);
        }
        catch (OnnxQuant.Frontend.FrontendException ex)
        {
            throw new CliInputException($"{path}: {ex.Message}");
        }
        var graph = model.Graph;
        var values = names.Select(name =>
        {
            var value = graph.FindValue(name)
                ?? throw new CliInputException($"--output '{name}': {path} has no tensor of that name; its outputs: {string.Join(", ", graph.Outputs.Select(o => o.Name))}");
            OnnxQuant.Frontend.ElementTypeInference.EnsureTyped(value);
            return value;
        }).ToList();
        graph.KeepOnlyOutputs(values);
        var bytes = OnnxQuant.Frontend.ModelIO.ToBytes(model);
        return o => InferenceSession.Create(bytes, o);
    }

    /// <summary>Parses repeated NAME=DxDx... values (dimensions also comma-separated); the last '=' splits, since input names may contain '='.</summary>
    internal static IReadOnlyDictionary<string, long[]> ParseShapes(IEnumerable<string> values)
    {
        var result = new Dictionary<string, long[]>();
        foreach (var value in values)
        {
            var split = value.LastIndexOf('=');
            if (split <= 0)
                throw new CliInputException($"--shape '{value}' is not NAME=DxDx... (e.g. images=1x3x512x512)");
            var name = value[..split];
            var text = value[(split + 1)..];
            var dims = text.Length == 0 ? [] : text.Split('x', ',');
            var shape = new long[dims.Length];
            for (var k = 0; k < dims.Length; k++)
                if (!long.TryParse(dims[k], NumberStyles.None, CultureInfo.InvariantCulture, out shape[k]))
                    throw new CliInputException($"--shape '{value}': '{dims[k]}' is not a dimension (a whole number >= 0)");
            if (!result.TryAdd(name, shape))
                throw new CliInputException($"--shape gives input '{name}' twice");
        }
        return result;
    }

    private static readonly JsonSerializerOptions JsonOptions = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        WriteIndented = true,
    };

    private sealed record ModelResult(string Path, LatencyStats Latency, IReadOnlyList<NamedTensor> Inputs, OpProfile? Profile);

    private sealed record BenchReport(IReadOnlyList<ModelResult> Models, int Runs, int Warmup, Turns? Turns, int Threads,
        ExecutionProvider ActiveProvider, ExecutionProvider RequestedProvider, long PeakRssBytes, string OrtVersion,
        IReadOnlyList<string>? Outputs = null)
    {
        /// <summary>Median latency of the --vs model divided by the first model's: below 1 means the other is faster.</summary>
        public double? Ratio => Models.Count > 1 ? Models[1].Latency.MedianMs / Models[0].Latency.MedianMs : null;

        public BenchJson ToJson()
        {
            var first = Models[0];
            return new BenchJson(first.Path, Name(ActiveProvider), Name(RequestedProvider), Runs, Warmup, Turns, Threads,
                Round(first.Latency.MedianMs), Round(first.Latency.P90Ms), Round(first.Latency.MeanMs), Round(first.Latency.MinMs),
                Math.Round(PeakRssBytes / 1048576.0, 1), OrtVersion,
                first.Inputs.Select(i => new InputJson(i.Name, i.Data.DataType.ToString(), i.Data.Shape)).ToList(),
                Models.Count > 1 ? new VsJson(Models[1].Path, Round(Models[1].Latency.MedianMs), Round(Models[1].Latency.P90Ms), Round(Models[1].Latency.MeanMs)) : null,
                Ratio is { } r ? Math.Round(r, 4) : null,
                Models.All(m => m.Profile is not null)
                    ? Models.Select(m => new ProfileJson(m.Path, m.Profile!.Runs, Round(m.Profile.MsPerRun),
                        m.Profile.Ops.Select(o => new OpJson(o.OpType, Round(o.MsPerRun), Math.Round(o.NodesPerRun, 2))).ToList())).ToList()
                    : null,
                Outputs);
        }
    }

    private static string Name(ExecutionProvider provider) => provider.ToString().ToLowerInvariant();

    private static double Round(double ms) => Math.Round(ms, 4);

    /// <summary>How the models alternated: timed runs per turn, untimed runs starting each turn.</summary>
    private sealed record Turns(int Block, int Settle);

    private sealed record InputJson(string Name, string Type, long[] Shape);

    private sealed record VsJson(string Model, double MedianMs, double P90Ms, double MeanMs);

    private sealed record OpJson(string OpType, double MsPerRun, double NodesPerRun);

    private sealed record ProfileJson(string Model, int Runs, double MsPerRun, IReadOnlyList<OpJson> Ops);

    private sealed record BenchJson(string Model, string Ep, string EpRequested, int Runs, int Warmup, Turns? Turns, int Threads,
        double MedianMs, double P90Ms, double MeanMs, double MinMs, double PeakRssMb, string OrtVersion,
        IReadOnlyList<InputJson> Inputs, VsJson? Vs, double? Ratio, IReadOnlyList<ProfileJson>? Profiles, IReadOnlyList<string>? Outputs);

    private static void WriteTable(BenchReport report, TextWriter output)
    {
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(output),
            Ansi = ReferenceEquals(output, Console.Out) && !Console.IsOutputRedirected ? AnsiSupport.Detect : AnsiSupport.No,
            ColorSystem = ReferenceEquals(output, Console.Out) && !Console.IsOutputRedirected ? ColorSystemSupport.Detect : ColorSystemSupport.NoColors,
        });
        if (!ReferenceEquals(output, Console.Out) || Console.IsOutputRedirected)
            console.Profile.Width = 160; // captured output: wide enough that paths do not wrap
        var table = new Table().AddColumns("model", "ep", "median ms", "p90 ms", "mean ms", "min ms", "runs");
        foreach (var m in report.Models)
            table.AddRow(Markup.Escape(m.Path), Name(report.ActiveProvider), F(m.Latency.MedianMs), F(m.Latency.P90Ms), F(m.Latency.MeanMs),
                F(m.Latency.MinMs), m.Latency.Runs.ToString(CultureInfo.InvariantCulture));
        console.Write(table);
        var threads = report.Threads == 0 ? "ONNX Runtime default" : report.Threads.ToString(CultureInfo.InvariantCulture);
        var turns = report.Turns is { } t ? $", turns of {t.Block} timed runs after {t.Settle} untimed" : "";
        console.WriteLine($"ONNX Runtime {report.OrtVersion}, threads: {threads}, warm-up runs: {report.Warmup}{turns}");
        if (report.Outputs is { } timed)
            console.WriteLine($"timed up to: {string.Join(", ", timed)} (only what they need runs)");
        console.WriteLine($"peak resident memory: {report.PeakRssBytes / 1048576.0:F1} MiB");
        if (report.Ratio is { } ratio)
            console.WriteLine($"latency ratio (median {report.Models[1].Path} / {report.Models[0].Path}): {ratio:F3}");
        if (report.Models.All(m => m.Profile is not null) && report.Models.Count > 1)
            WriteProfile(console, report.Models[0], report.Models[1]);
    }

    /// <summary>Time per op type of both models side by side, op types ordered by the larger of the two times.</summary>
    private static void WriteProfile(IAnsiConsole console, ModelResult first, ModelResult second)
    {
        var a = first.Profile!.Ops.ToDictionary(o => o.OpType, StringComparer.Ordinal);
        var b = second.Profile!.Ops.ToDictionary(o => o.OpType, StringComparer.Ordinal);
        var table = new Table().AddColumns("op type", "ms/run (model)", "nodes", "ms/run (--vs)", "nodes");
        foreach (var op in a.Keys.Union(b.Keys).OrderByDescending(k => Math.Max(a.GetValueOrDefault(k)?.MsPerRun ?? 0, b.GetValueOrDefault(k)?.MsPerRun ?? 0))
                     .ThenBy(k => k, StringComparer.Ordinal))
        {
            var x = a.GetValueOrDefault(op);
            var y = b.GetValueOrDefault(op);
            table.AddRow(Markup.Escape(op), x is null ? "-" : F(x.MsPerRun), x is null ? "-" : N(x.NodesPerRun),
                y is null ? "-" : F(y.MsPerRun), y is null ? "-" : N(y.NodesPerRun));
        }
        table.AddRow("(all nodes)", F(first.Profile.Ops.Sum(o => o.MsPerRun)), N(first.Profile.Ops.Sum(o => o.NodesPerRun)),
            F(second.Profile.Ops.Sum(o => o.MsPerRun)), N(second.Profile.Ops.Sum(o => o.NodesPerRun)));
        console.WriteLine($"time per op type (ONNX Runtime profiler, {first.Profile.Runs} runs per model after the timed runs; " +
                          "kernel time only, so the totals are below the latency):");
        console.Write(table);
    }

    private static string N(double nodes) => nodes.ToString("0.##", CultureInfo.InvariantCulture);

    private static string F(double ms) => ms.ToString("F3", CultureInfo.InvariantCulture);
}
