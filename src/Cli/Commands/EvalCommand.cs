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
        var ep = RuntimeCliOptions.ExecutionProvider();
        var threads = RuntimeCliOptions.Threads();
        var ortLib = RuntimeCliOptions.OrtLib();

        var command = new Command("eval", "COCO AP, AP50, AP75 (boxes, and masks for Mask R-CNN) of a detection model on a dataset");
        command.Arguments.Add(model);
        foreach (var option in new Option[] { data, annotations, vs, decoder, batch, json, ep, threads, ortLib })
            command.Options.Add(option);
        command.SetAction(parse =>
        {
            var batchSize = parse.GetValue(batch);
            if (batchSize < 1)
                throw new CliInputException($"--batch must be at least 1, got {batchSize}");
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
            RuntimeCliOptions.Initialize(parse, ortLib);

            var results = new List<ModelEvaluation>();
            foreach (var path in paths)
            {
                using var session = InferenceSession.Create(path, sessionOptions);
                var result = WithProgress(parse.InvocationConfiguration.Error, path,
                    progress => DetectionEvaluator.Evaluate(session, arrays, groundTruth, options, progress));
                results.Add(new ModelEvaluation(path, result));
            }

            var output = parse.InvocationConfiguration.Output;
            if (parse.GetValue(json))
                output.WriteLine(JsonSerializer.Serialize(ToJson(results), JsonOptions));
            else
                WriteTables(results, output);
            return ExitCodes.Ok;
        });
        return command;
    }

    private sealed record ModelEvaluation(string Path, EvaluationResult Result);

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

    /// <summary>The --vs model's metrics minus the first model's.</summary>
    private sealed record DeltaJson(
        [property: JsonPropertyName("bbox")] MetricsJson Bbox,
        [property: JsonPropertyName("segm")] MetricsJson? Segm);

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

    private static EvalJson ToJson(IReadOnlyList<ModelEvaluation> results)
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
            delta = new DeltaJson(bboxB.Minus(bbox), segm is not null && segmB is not null ? segmB.Minus(segm) : null);
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
