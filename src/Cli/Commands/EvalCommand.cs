using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;
using OnnxQuant.Data;
using OnnxQuant.Evaluation;
using OnnxQuant.Runtime;
using Spectre.Console;

namespace OnnxQuant.Cli;

/// <summary>
/// `onnxquant eval`: COCO box (and mask) AP of a detection model on a dataset, optionally side by side with a second
/// model (e.g. its quantized version) on the same data.
/// </summary>
internal static class EvalCommand
{
    public static Command Create()
    {
        var model = new Argument<string>("model") { Description = "The ONNX detection model (DETR or Mask R-CNN outputs)" };
        var data = new Option<string>("--data")
        {
            Description = "Images as .npz: one array per model input (or \"images\"), plus optional \"image_ids\" [N]",
            Required = true,
            HelpName = "DATA.npz",
        };
        var annotations = new Option<string>("--annotations")
        {
            Description = "Ground truth in COCO JSON (boxes; polygons or RLE masks for mask AP)",
            Required = true,
            HelpName = "GT.json",
        };
        var vs = new Option<string?>("--vs") { Description = "A second model to evaluate on the same data; prints both and the difference", HelpName = "OTHER.onnx" };
        var decoder = new Option<string?>("--decoder") { Description = "Output convention: detr or maskrcnn (default: chosen from the output names and shapes)" };
        decoder.AcceptOnlyFromAmong("detr", "maskrcnn");
        var batch = new Option<int>("--batch") { Description = "Images per run for models with a free batch axis", DefaultValueFactory = _ => 8 };
        var json = new Option<bool>("--json") { Description = "Print one JSON object instead of tables" };
        var bootstrap = new Option<int>("--bootstrap")
        {
            Description = "With --vs: resamples of the images (with replacement, fixed seed) for a 95 % interval of the AP difference; 0 = none",
            DefaultValueFactory = _ => 0,
        };
        var ep = RuntimeCliOptions.ExecutionProvider();
        var threads = RuntimeCliOptions.Threads();
        var ortLib = RuntimeCliOptions.OrtLib();
        var customOps = RuntimeCliOptions.CustomOpLibraries();

        var command = new Command("eval", "COCO AP, AP50, AP75 (boxes, and masks for Mask R-CNN) of a detection model on a dataset");
        command.Arguments.Add(model);
        foreach (var option in new Option[] { data, annotations, vs, decoder, batch, json, bootstrap, ep, threads, ortLib, customOps })
            command.Options.Add(option);
        command.SetAction(parse =>
        {
            var batchSize = parse.GetValue(batch);
            if (batchSize < 1)
                throw new CliInputException($"--batch must be at least 1, got {batchSize}");
            var resamples = parse.GetValue(bootstrap);
            if (resamples < 0)
                throw new CliInputException($"--bootstrap must be 0 (none) or a number of resamples, got {resamples}");
            if (resamples > 0 && parse.GetValue(vs) is null)
                throw new CliInputException("--bootstrap compares two models: give the second with --vs");
            var options = new EvaluationOptions
            {
                BatchSize = batchSize,
                Decoder = parse.GetValue(decoder) switch
                {
                    "detr" => DecoderKind.Detr,
                    "maskrcnn" => DecoderKind.MaskRcnn,
                    _ => null,
                },
            };
            var dataPath = parse.GetValue(data)!;
            var gtPath = parse.GetValue(annotations)!;
            var paths = new List<string> { parse.GetValue(model)! };
            if (parse.GetValue(vs) is { } other)
                paths.Add(other);
            foreach (var path in paths)
                if (!File.Exists(path))
                    throw new FileNotFoundException($"model not found: {path}", path);

            var arrays = Npz.Read(dataPath);
            var groundTruth = CocoDataset.Load(gtPath);
            var sessionOptions = RuntimeCliOptions.SessionOptions(parse, ep, threads);
            RuntimeCliOptions.Initialize(parse, ortLib, customOps);

            var results = new List<ModelEvaluation>();
            foreach (var path in paths)
            {
                using var session = InferenceSession.Create(path, sessionOptions);
                var result = WithProgress(parse.InvocationConfiguration.Error, path,
                    progress => DetectionEvaluator.Evaluate(session, arrays, groundTruth, options, progress));
                results.Add(new ModelEvaluation(path, result));
            }

            var comparisons = resamples > 0 ? Compare(results, resamples) : [];
            var output = parse.InvocationConfiguration.Output;
            if (parse.GetValue(json))
                output.WriteLine(JsonSerializer.Serialize(ToJson(results, comparisons), JsonOptions));
            else
            {
                WriteTables(results, output);
                foreach (var c in comparisons)
                    output.WriteLine(Describe(c, results));
            }
            return ExitCodes.Ok;
        });
        return command;
    }

    private sealed record ModelEvaluation(string Path, EvaluationResult Result);

    private sealed record Comparison(string Kind, BootstrapComparison Result);

    // The second model against the first, per metric kind both have, on the same images.
    private static List<Comparison> Compare(IReadOnlyList<ModelEvaluation> results, int resamples)
    {
        var (a, b) = (results[0].Result, results[1].Result);
        var list = new List<Comparison> { new("bbox", PairedBootstrap.Compare(a.BboxMatches, b.BboxMatches, resamples)) };
        if (a.SegmMatches is { } sa && b.SegmMatches is { } sb)
            list.Add(new("segm", PairedBootstrap.Compare(sa, sb, resamples)));
        return list;
    }

    private static string Describe(Comparison c, IReadOnlyList<ModelEvaluation> results)
    {
        var r = c.Result;
        string S(double v) => v.ToString("+0.0000;-0.0000;0.0000", CultureInfo.InvariantCulture);
        var verdict = r.Lower > 0 || r.Upper < 0
            ? "the interval excludes 0: these images resolve the difference"
            : "the interval includes 0: the difference is within what the choice of images moves";
        var (second, first) = (Path.GetFileName(results[1].Path), Path.GetFileName(results[0].Path));
        if (second == first)
            (second, first) = (results[1].Path, results[0].Path);
        return $"{c.Kind} AP {second} - {first}: {S(r.Difference)}, " +
               $"95 % interval [{S(r.Lower)}, {S(r.Upper)}] over {r.Resamples} image resamples (seed {r.Seed}); higher on " +
               $"{(100 * r.SecondHigher).ToString("0.#", CultureInfo.InvariantCulture)} % of them; {verdict}";
    }

    /// <summary>
    /// Runs <paramref name="work"/> with progress on stderr: a live bar on a terminal, otherwise a plain line at
    /// every quarter so logs stay short.
    /// </summary>
    private static EvaluationResult WithProgress(TextWriter error, string path, Func<Action<int, int>, EvaluationResult> work)
    {
        var interactive = ReferenceEquals(error, Console.Error) && !Console.IsErrorRedirected;
        if (interactive)
        {
            var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });
            EvaluationResult? result = null;
            console.Progress().AutoClear(true).Start(ctx =>
            {
                var task = ctx.AddTask(Markup.Escape($"eval {Path.GetFileName(path)}"));
                result = work((done, total) =>
                {
                    task.MaxValue = total;
                    task.Value = done;
                });
            });
            return result!;
        }
        var lastQuarter = 0;
        return work((done, total) =>
        {
            var quarter = 4 * done / total;
            if (quarter > lastQuarter)
            {
                lastQuarter = quarter;
                error.WriteLine($"eval {path}: {done}/{total} images");
            }
        });
    }

    private static readonly JsonSerializerOptions JsonOptions = new() { WriteIndented = true };

    /// <summary>The twelve COCO numbers under COCO's own names.</summary>
    private sealed record MetricsJson(
        double? AP, double? AP50, double? AP75, double? APs, double? APm, double? APl,
        double? AR1, double? AR10, double? AR100, double? ARs, double? ARm, double? ARl)
    {
        public static MetricsJson? From(CocoMetrics? m) => m is null ? null
            : new(m.AP, m.AP50, m.AP75, m.APs, m.APm, m.APl, m.AR1, m.AR10, m.AR100, m.ARs, m.ARm, m.ARl);

        /// <summary>this - other for every metric defined in both.</summary>
        public MetricsJson Minus(MetricsJson o) => new(
            D(AP, o.AP), D(AP50, o.AP50), D(AP75, o.AP75), D(APs, o.APs), D(APm, o.APm), D(APl, o.APl),
            D(AR1, o.AR1), D(AR10, o.AR10), D(AR100, o.AR100), D(ARs, o.ARs), D(ARm, o.ARm), D(ARl, o.ARl));

        private static double? D(double? a, double? b) => a is { } x && b is { } y ? x - y : null;
    }

    /// <summary>The --vs model's metrics minus the first model's, and the bootstrap of the AP difference when asked.</summary>
    private sealed record DeltaJson(
        [property: JsonPropertyName("bbox")] MetricsJson Bbox,
        [property: JsonPropertyName("segm")] MetricsJson? Segm,
        [property: JsonPropertyName("bootstrap"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] Dictionary<string, BootstrapJson>? Bootstrap);

    private sealed record BootstrapJson(
        [property: JsonPropertyName("ap_difference")] double Difference,
        [property: JsonPropertyName("lower_95")] double Lower,
        [property: JsonPropertyName("upper_95")] double Upper,
        [property: JsonPropertyName("second_higher")] double SecondHigher,
        [property: JsonPropertyName("resamples")] int Resamples,
        [property: JsonPropertyName("seed")] int Seed);

    private sealed record VsJson(
        [property: JsonPropertyName("model")] string Model,
        [property: JsonPropertyName("decoder")] string Decoder,
        [property: JsonPropertyName("bbox")] MetricsJson Bbox,
        [property: JsonPropertyName("segm")] MetricsJson? Segm);

    private sealed record EvalJson(
        [property: JsonPropertyName("model")] string Model,
        [property: JsonPropertyName("decoder")] string Decoder,
        [property: JsonPropertyName("images")] int Images,
        [property: JsonPropertyName("detections")] int Detections,
        [property: JsonPropertyName("bbox")] MetricsJson Bbox,
        [property: JsonPropertyName("segm")] MetricsJson? Segm,
        [property: JsonPropertyName("vs")] VsJson? Vs,
        [property: JsonPropertyName("delta")] DeltaJson? Delta);

    private static EvalJson ToJson(IReadOnlyList<ModelEvaluation> results, IReadOnlyList<Comparison> comparisons)
    {
        var a = results[0];
        var bbox = MetricsJson.From(a.Result.Bbox)!;
        var segm = MetricsJson.From(a.Result.Segm);
        VsJson? vs = null;
        DeltaJson? delta = null;
        if (results.Count > 1)
        {
            var b = results[1];
            var bboxB = MetricsJson.From(b.Result.Bbox)!;
            var segmB = MetricsJson.From(b.Result.Segm);
            vs = new VsJson(b.Path, Name(b.Result.Decoder), bboxB, segmB);
            delta = new DeltaJson(bboxB.Minus(bbox), segm is not null && segmB is not null ? segmB.Minus(segm) : null,
                comparisons.Count == 0 ? null : comparisons.ToDictionary(c => c.Kind, c => new BootstrapJson(
                    c.Result.Difference, c.Result.Lower, c.Result.Upper, c.Result.SecondHigher, c.Result.Resamples, c.Result.Seed)));
        }
        return new EvalJson(a.Path, Name(a.Result.Decoder), a.Result.ImageCount, a.Result.DetectionCount, bbox, segm, vs, delta);
    }

    private static string Name(DecoderKind kind) => kind == DecoderKind.Detr ? "detr" : "maskrcnn";

    private static void WriteTables(IReadOnlyList<ModelEvaluation> results, TextWriter output)
    {
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(output),
            Ansi = ReferenceEquals(output, Console.Out) && !Console.IsOutputRedirected ? AnsiSupport.Detect : AnsiSupport.No,
            ColorSystem = ReferenceEquals(output, Console.Out) && !Console.IsOutputRedirected ? ColorSystemSupport.Detect : ColorSystemSupport.NoColors,
        });
        var first = results[0].Result;
        console.WriteLine($"{first.ImageCount} images, decoder {Name(first.Decoder)}, {first.DetectionCount} detections");
        var kinds = new List<(string Title, Func<EvaluationResult, CocoMetrics?> Get)> { ("bbox", r => r.Bbox) };
        if (results.Any(r => r.Result.Segm is not null))
            kinds.Add(("segm", r => r.Segm));
        foreach (var (title, get) in kinds)
        {
            var table = new Table { Title = new TableTitle(title) };
            table.AddColumn("metric");
            foreach (var r in results)
                table.AddColumn(new TableColumn(Markup.Escape(Path.GetFileName(r.Path))).RightAligned());
            if (results.Count > 1)
                table.AddColumn(new TableColumn("diff").RightAligned());
            var metrics = results.Select(r => get(r.Result)).ToList();
            for (var i = 0; i < 12; i++)
            {
                var name = (metrics.First(m => m is not null)!).Summary[i].Name;
                var values = metrics.Select(m => m?.Summary[i].Value).ToList();
                var row = new List<string> { name };
                row.AddRange(values.Select(F));
                if (results.Count > 1)
                    row.Add(values[0] is { } x && values[1] is { } y ? (y - x).ToString("+0.000;-0.000;0.000", CultureInfo.InvariantCulture) : "n/a");
                table.AddRow(row.ToArray());
            }
            console.Write(table);
        }
    }

    private static string F(double? v) => v is { } x ? x.ToString("F3", CultureInfo.InvariantCulture) : "n/a";
}
