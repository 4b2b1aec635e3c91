using System.CommandLine;
using System.Globalization;
using OnnxQuant.Passes.Allocate;
using OnnxQuant.Passes.Artifact;
using OnnxQuant.Passes.Calibration;
using OnnxQuant.Passes.Compile;
using OnnxQuant.Passes.Curves;
using OnnxQuant.Passes.Guards;
using OnnxQuant.Passes.Load;
using OnnxQuant.Passes.Pipeline;
using OnnxQuant.Passes.Quantization;
using OnnxQuant.Passes.Rewrite;
using OnnxQuant.Passes.Units;
using Spectre.Console;

namespace OnnxQuant.Cli;

/// <summary>
/// <c>onnxquant compile model.onnx --target-bits 4 --calib calib.npz -o out/</c>: calibrates, measures error curves,
/// allocates bits, rewrites to QDQ, verifies in ONNX Runtime and writes out/model.onnx, report.json and manifest.json.
/// Progress goes to stderr (a live bar on a terminal, plain lines otherwise); the summary table to stdout.
/// </summary>
internal static class CompileCommand
{
    public static Command Create()
    {
        var model = new Argument<string>("model") { Description = "The float ONNX model" };
        var calib = new Option<string>("--calib") { Description = "Calibration data: .npz keyed by input name, .npy (single input), or a folder of them", Required = true };
        var output = new Option<string>("--output", "-o") { Description = "Output folder", DefaultValueFactory = _ => "out" };
        var targets = new Option<string>("--target-bits") { Description = "Average weight bits; several comma-separated targets (2,3,4) compile the front from one calibration", DefaultValueFactory = _ => "4" };
        var calibSamples = new Option<int>("--calib-samples") { Description = "Samples for calibration and curves", DefaultValueFactory = _ => 64 };
        var verifyData = new Option<string?>("--verify-data") { Description = "Held-out data for verification (default: the samples after the calibration ones)" };
        var verifySamples = new Option<int>("--verify-samples") { Description = "Held-out samples (after the calibration ones) for verification", DefaultValueFactory = _ => 16 };
        var feature = new Option<string[]>("--feature") { Description = "Tensor(s) whose distortion the curves measure (default: the model's float outputs); NAME=W weighs one W times in the sum", AllowMultipleArgumentsPerToken = true };
        var taskAnnotations = new Option<string?>("--task-annotations") { Description = "COCO annotations of the calibration images (or of --task-data): measure on the detection outputs, each weighed by the box AP that noise in it costs; \"self\": the float model's own detections of score 0.5 or more stand in for annotations" };
        var taskData = new Option<string?>("--task-data") { Description = "Images (.npz) that --task-annotations describes, instead of the calibration data" };
        var bits = new Option<string>("--bits") { Description = "Candidate weight widths", DefaultValueFactory = _ => "2,3,4,5,6,8" };
        var minBits = new Option<int?>("--min-bits") { Description = "Least width of a unit (default: max(2, floor(target) - 2))" };
        var solver = new Option<string>("--solver") { Description = "dp (exact) or lagrangian", DefaultValueFactory = _ => "dp" };
        solver.AcceptOnlyFromAmong("dp", "lagrangian");
        var epsilon = new Option<double>("--epsilon") { Description = "Lagrangian rate tolerance", DefaultValueFactory = _ => 0.02 };
        var actBits = new Option<int>("--act-bits") { Description = "Bits of activations entering quantized layers: 8, 16, or 0 for weight-only", DefaultValueFactory = _ => 8 };
        var actCalibration = new Option<string>("--act-calibration") { Description = "Activation range method: minmax (exact range, read in the graph), mse (least squared rounding error; whole tensors leave ONNX Runtime, so calibration is slower), percentile (99.99th), entropy (KL divergence; clips the tails that box regression reads, see the README)", DefaultValueFactory = _ => "minmax" };
        actCalibration.AcceptOnlyFromAmong("minmax", "percentile", "entropy", "mse");
        var act16Tensors = new Option<int>("--act16-tensors") { Description = "Quantize the N activation tensors of the largest priced error (report.json activations) at 16 bits instead of 8, for targets with A16W8 layers (size target, gain curves)", DefaultValueFactory = _ => 0 };
        var granularity = new Option<string>("--granularity") { Description = "Unit of allocation: a layer, or a group of output channels", DefaultValueFactory = _ => "layer" };
        granularity.AcceptOnlyFromAmong("layer", "group");
        var groupSize = new Option<int>("--group-size") { Description = "Output channels per unit with --granularity group", DefaultValueFactory = _ => 64 };
        var exclude = new Option<string[]>("--exclude") { Description = "Keep layers in float: node name patterns (* ?) or op types", AllowMultipleArgumentsPerToken = true };
        var headBits = new Option<int>("--head-bits") { Description = "Width of layers that do not reach the feature, kept outside the budget", DefaultValueFactory = _ => 8 };
        var format = new Option<string>("--format") { Description = "qdq, or matmulnbits (MatMul weights packed weight-only)", DefaultValueFactory = _ => "qdq" };
        format.AcceptOnlyFromAmong("qdq", "matmulnbits");
        var deploy = new Option<string>("--deploy")
        {
            Description = "size (smallest file) or speed (Q/DQ placed for ONNX Runtime's integer CPU kernels, INT8 and MatMulNBits containers)",
            DefaultValueFactory = _ => "size",
        };
        deploy.AcceptOnlyFromAmong("size", "speed");
        var blockSize = new Option<int>("--block-size") { Description = "MatMulNBits block length", DefaultValueFactory = _ => 32 };
        var keepInitializerInputs = new Option<bool>("--keep-initializer-inputs") { Description = "List initializers that the model also has as graph inputs among the quantized model's inputs again (those left in float; quantized weights cannot be overridden)" };
        var compensation = new Option<string?>("--compensation") { Description = "What compensates the weights' rounding error: none, bias (mean output shift folded into the bias), gptq (second-order rounding through the inverse input second moments) or all (default; none with --curves fast, whose proxy prices rounding to nearest)" };
        compensation.AcceptOnlyFromAmong("none", "bias", "gptq", "all");
        var smooth = new Option<string?>("--smooth")
        {
            Description = "Activation-aware scaling of normalization outputs into the linear layers that read them (SmoothQuant/AWQ, powers of two, exact in float): " +
                          "auto (default; each site scaled where the closed-form error drops) or off. Off with --emit-qat-recipe, whose student keeps the teacher's normalizations",
        };
        smooth.AcceptOnlyFromAmong("auto", "off");
        var smoothSamples = new Option<int>("--smooth-samples") { Description = "Calibration samples (the first ones) whose activations choose the scaling", DefaultValueFactory = _ => 4 };
        var runBatch = new Option<int>("--run-batch") { Description = "Samples stacked into one ONNX Runtime run when the model's batch axis is symbolic", DefaultValueFactory = _ => 8 };
        var curves = new Option<string>("--curves") { Description = "gain (closed-form local error x propagation gain measured on a few samples), exact (measured at every width on every sample) or fast (diagonal proxy scaled by one measured width)", DefaultValueFactory = _ => "gain" };
        curves.AcceptOnlyFromAmong("gain", "exact", "fast");
        var curvesFile = new Option<string?>("--curves-file") { Description = "Use these curves (onnxquant.curves/1, e.g. from --write-curves) instead of measuring; must match the model's units and --bits" };
        var writeCurves = new Option<string?>("--write-curves") { Description = "Also write the curves used (onnxquant.curves/1) to this file, for --curves-file or onnxquant solve" };
        var cacheDir = new Option<string?>("--cache-dir") { Description = "Curve cache folder (default $XDG_CACHE_HOME/onnxquant/curves)" };
        var noCache = new Option<bool>("--no-cache") { Description = "Measure curves without reading or writing the cache" };
        var maxDistortion = new Option<double?>("--max-distortion") { Description = "Keep the measured distortion at most this: raise widths where the curves gain most per bit (float when 8 bits is not enough) until it holds; exit 3 when even that fails" };
        var maxDrop = new Option<double?>("--max-drop") { Description = "Keep the bbox AP drop at most this many points (needs --eval-data and --eval-annotations), repaired as --max-distortion; exit 3 when even that fails" };
        var maxRepairRate = new Option<double?>("--max-repair-rate") { Description = "Average weight bits the guard repair may reach (float counts 32; default: no limit)" };
        var evalData = new Option<string?>("--eval-data") { Description = "Evaluation .npz for --max-drop" };
        var evalAnnotations = new Option<string?>("--eval-annotations") { Description = "COCO annotations JSON for --max-drop" };
        var noBaseline = new Option<bool>("--no-baseline") { Description = "Do not measure the uniform baseline (every unit at the width nearest each target; one more verification per width)" };
        var threads = RuntimeCliOptions.Threads();
        var ortLib = RuntimeCliOptions.OrtLib();
        var customOps = RuntimeCliOptions.CustomOpLibraries();
        var quiet = new Option<bool>("--quiet", "-q") { Description = "No progress, only errors and the summary" };
        var emitRecipe = new Option<string?>("--emit-qat-recipe") { Description = "Also write a QAT recipe (onnxquant.qat-recipe/1) of the allocation, for the Q-DETR trainer (one target only)" };
        var recipeAttentionBits = new Option<int>("--qat-attention-bits") { Description = "Attention q/k/v and softmax bits written into the QAT recipe (0: float, as the compiled model keeps them, so the student starts at its outputs)", DefaultValueFactory = _ => 0 };

        var command = new Command("compile", "Quantize a model to a mixed-precision QDQ model: calibrate, measure error curves, allocate bits, rewrite, verify");
        command.Arguments.Add(model);
        foreach (var option in new Option[] { calib, output, targets, calibSamples, verifyData, verifySamples, feature, taskAnnotations, taskData, bits, minBits, solver, epsilon,
                     actBits, actCalibration, act16Tensors, granularity, groupSize, exclude, headBits, format, deploy, blockSize, keepInitializerInputs, compensation, smooth, smoothSamples, curves, curvesFile, writeCurves, cacheDir, noCache,
                     maxDistortion, maxDrop, maxRepairRate, evalData, evalAnnotations, noBaseline, threads, runBatch, ortLib, customOps, quiet, emitRecipe, recipeAttentionBits })
            command.Options.Add(option);

        command.SetAction(parse =>
        {
            var options = new CompileOptions
            {
                Data = new DataOptions
                {
                    CalibSamples = parse.GetValue(calibSamples),
                    VerifySamples = parse.GetValue(verifySamples),
                    VerifyData = parse.GetValue(verifyData),
                },
                Features = FeatureOptions.Parse(SplitAll(parse.GetValue(feature)), parse.GetValue(taskAnnotations), parse.GetValue(taskData)),
                Units = new UnitOptions
                {
                    Granularity = parse.GetValue(granularity) == "group" ? Granularity.Group : Granularity.Layer,
                    GroupSize = parse.GetValue(groupSize),
                    Exclude = SplitAll(parse.GetValue(exclude)),
                    HeadBits = parse.GetValue(headBits),
                },
                Smoothing = new OnnxQuant.Passes.Smoothing.SmoothingOptions
                {
                    // A QAT recipe maps the artifact's weights onto the teacher's layers, whose normalizations keep
                    // their constants: scaling would give the student other weights than the artifact's.
                    Mode = parse.GetValue(smooth) == "off" || (parse.GetValue(smooth) is null && parse.GetValue(emitRecipe) is not null)
                        ? OnnxQuant.Passes.Smoothing.SmoothingMode.Off : OnnxQuant.Passes.Smoothing.SmoothingMode.Auto,
                    Samples = parse.GetValue(smoothSamples),
                },
                Calibration = new CalibrationOptions
                {
                    ActBits = parse.GetValue(actBits),
                    Act16Tensors = parse.GetValue(act16Tensors),
                    ActCalibration = parse.GetValue(actCalibration) switch
                    {
                        "percentile" => CalibrationMethod.Percentile,
                        "entropy" => CalibrationMethod.Entropy,
                        "mse" => CalibrationMethod.Mse,
                        _ => CalibrationMethod.MinMax,
                    },
                },
                Curves = new CurveOptions
                {
                    CandidateBits = ParseList(parse.GetValue(bits)!, "--bits", s => int.Parse(s, CultureInfo.InvariantCulture)),
                    Mode = parse.GetValue(curves) switch { "fast" => CurveMode.Fast, "exact" => CurveMode.Exact, _ => CurveMode.Gain },
                    CacheDir = parse.GetValue(noCache) ? null : parse.GetValue(cacheDir) ?? DefaultCacheDir(),
                    CurvesFile = parse.GetValue(curvesFile),
                },
                Allocation = new AllocationOptions
                {
                    TargetBits = ParseList(parse.GetValue(targets)!, "--target-bits", s => double.Parse(s, CultureInfo.InvariantCulture)),
                    MinBits = parse.GetValue(minBits),
                    Solver = parse.GetValue(solver) == "dp" ? SolverKind.Dp : SolverKind.Lagrangian,
                    Epsilon = parse.GetValue(epsilon),
                },
                Rewrite = new RewriteOptions
                {
                    Format = parse.GetValue(format) == "matmulnbits" ? WeightFormat.MatMulNBits : WeightFormat.Qdq,
                    BlockSize = parse.GetValue(blockSize),
                    KeepInitializerInputs = parse.GetValue(keepInitializerInputs),
                    Compensation = parse.GetValue(compensation) is { } named ? Compensator.Parse(named)
                        : parse.GetValue(curves) == "fast" ? Compensation.None : Compensation.All,
                    Deploy = parse.GetValue(deploy) == "speed" ? DeployTarget.Speed : DeployTarget.Size,
                },
                Guards = new GuardOptions
                {
                    MaxDistortion = parse.GetValue(maxDistortion),
                    MaxDrop = parse.GetValue(maxDrop),
                    MaxRepairRate = parse.GetValue(maxRepairRate),
                    EvalData = parse.GetValue(evalData),
                    EvalAnnotations = parse.GetValue(evalAnnotations),
                },
                Baseline = new OnnxQuant.Passes.Verify.BaselineOptions { Uniform = !parse.GetValue(noBaseline) },
                Execution = new ExecutionOptions
                {
                    Threads = RuntimeCliOptions.ThreadCount(parse, threads),
                    RunBatch = parse.GetValue(runBatch),
                },
            };
            var recipePath = parse.GetValue(emitRecipe);
            if (recipePath is not null && options.Allocation.TargetBits.Count != 1)
                throw new CliInputException("--emit-qat-recipe needs exactly one --target-bits value: a recipe describes one allocation");
            if (recipePath is not null && parse.GetValue(smooth) == "auto")
                throw new CliInputException("--emit-qat-recipe with --smooth auto: the recipe's student keeps the teacher's normalizations, so the scaled weights would not match; drop --smooth");
            if (recipePath is not null && options.Calibration.Act16Tensors > 0)
                throw new CliInputException("--emit-qat-recipe with --act16-tensors: the QAT trainer's student exports 8-bit activation quantizers, so it could not match the 16-bit tensors; drop --act16-tensors");
            var attentionBits = parse.GetValue(recipeAttentionBits);
            if (recipePath is not null && attentionBits != OnnxQuant.QatBridge.BitWidths.FloatBits)
                OnnxQuant.QatBridge.BitWidths.CheckBits(attentionBits, "--qat-attention-bits");
            var curvesOut = parse.GetValue(writeCurves);
            var modelPath = parse.GetValue(model)!;
            var outDir = parse.GetValue(output)!;
            // Files written beside the artifact are checked before any work: never an input, a folder, or inside the
            // artifact folder (which the next compile replaces whole).
            var inputs = ArtifactStage.Inputs(modelPath, parse.GetValue(calib)!, options.Data.VerifyData, options.Curves.CurvesFile,
                options.Guards.EvalData, options.Guards.EvalAnnotations);
            if (curvesOut is not null)
                OutputFolder.CheckFileOutput("--write-curves", curvesOut, inputs, outDir);
            if (recipePath is not null)
            {
                OutputFolder.CheckFileOutput("--emit-qat-recipe", recipePath, inputs, outDir);
                OutputFolder.CheckFileOutput("--emit-qat-recipe (its weights)", OnnxQuant.QatBridge.CompileRecipe.WeightsPath(recipePath), inputs, outDir);
            }
            if (curvesOut is not null && recipePath is not null && Path.GetFullPath(curvesOut) == Path.GetFullPath(recipePath))
                throw new CliInputException($"--write-curves and --emit-qat-recipe both name {curvesOut}; give two files");
            RuntimeCliOptions.Initialize(parse, ortLib, customOps);

            var error = parse.InvocationConfiguration.Error;
            var stdout = parse.InvocationConfiguration.Output;
            var result = WithProgress(error, parse.GetValue(quiet), sink =>
                Compiler.Run(modelPath, parse.GetValue(calib)!, outDir, options, VersionCommand.ToolVersion, sink));

            WriteSummary(stdout, result, result.Guards.Accuracy);
            if (curvesOut is not null)
            {
                OnnxQuant.Solvers.CurvesFile.WriteFile(curvesOut, result.Targets[0].Report.Curves);
                stdout.WriteLine($"written: {curvesOut} (curves, {result.Targets[0].Report.Curves.Count} units)");
            }
            if (recipePath is not null)
            {
                // The written artifact, not the in-memory graph: the recipe describes exactly the file a user deploys
                // (where it stores values computed from weights alone, the same model with those weights).
                var artifact = result.Targets[0].WithWeights ?? OnnxQuant.Frontend.ModelIO.Load(result.Targets[0].ModelPath);
                var weightsPath = OnnxQuant.QatBridge.CompileRecipe.WeightsPath(recipePath);
                var recipe = OnnxQuant.QatBridge.CompileRecipe.FromReport(result.Targets[0].Report, modelPath, attentionBits, artifact,
                    Path.GetFileName(weightsPath));
                OnnxQuant.QatBridge.CompileRecipe.WriteArtifactWeights(recipe, artifact, weightsPath);
                OnnxQuant.QatBridge.QatRecipeJson.Write(recipe, recipePath);
                stdout.WriteLine($"written: {recipePath} (QAT recipe, {recipe.Layers.Count} layers, {recipe.FloatLayers.Count} float)");
            }
            if (result.GuardMessage is { } guard)
            {
                error.WriteLine($"error: {guard}");
                return ExitCodes.AccuracyGuard;
            }
            return ExitCodes.Ok;
        });
        return command;
    }

    internal static string DefaultCacheDir()
    {
        var cacheHome = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
        if (string.IsNullOrEmpty(cacheHome))
            cacheHome = Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache");
        return Path.Combine(cacheHome, "onnxquant", "curves");
    }

    private static List<T> ParseList<T>(string text, string option, Func<string, T> parse)
    {
        var parts = text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (parts.Length == 0)
            throw new CliInputException($"{option} needs at least one value");
        try
        {
            return parts.Select(parse).ToList();
        }
        catch (FormatException)
        {
            throw new CliInputException($"{option} '{text}': expected comma-separated numbers");
        }
        catch (OverflowException)
        {
            throw new CliInputException($"{option} '{text}': a value is out of range");
        }
    }

    private static List<string> SplitAll(string[]? values) =>
        (values ?? []).SelectMany(v => v.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)).ToList();

    private static CompileResult WithProgress(TextWriter error, bool quiet, Func<IProgressSink, CompileResult> work)
    {
        if (quiet)
            return work(SilentProgress.Instance);
        var interactive = ReferenceEquals(error, Console.Error) && !Console.IsErrorRedirected;
        if (!interactive)
            return work(new LineProgress(error));
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });
        CompileResult? result = null;
        var notes = new List<string>();
        console.Progress().AutoClear(false).Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(),
                new ElapsedTimeColumn(), new RemainingTimeColumn())
            .Start(ctx => result = work(new SpectreProgress(ctx, notes)));
        foreach (var note in notes)
            error.WriteLine(note);
        return result!;
    }

    private sealed class SpectreProgress(ProgressContext context, List<string> notes) : IProgressSink
    {
        public IStageProgress Begin(string stage, int total) => new Stage(context.AddTask(Markup.Escape(stage), maxValue: Math.Max(1, total)));

        public void Note(string message) => notes.Add(message);

        private sealed class Stage(ProgressTask task) : IStageProgress
        {
            public void Advance(int steps = 1) => task.Increment(steps);

            public void Dispose()
            {
                task.Value = task.MaxValue;
                task.StopTask();
            }
        }
    }

    private static void WriteSummary(TextWriter output, CompileResult result, IReadOnlyList<TargetAccuracy>? aps)
    {
        var interactive = ReferenceEquals(output, Console.Out) && !Console.IsOutputRedirected;
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(output),
            Ansi = interactive ? AnsiSupport.Detect : AnsiSupport.No,
            ColorSystem = interactive ? ColorSystemSupport.Detect : ColorSystemSupport.NoColors,
            Interactive = InteractionSupport.No,
        });
        if (!interactive)
            console.Profile.Width = 120;
        var first = result.Targets[0].Report;
        console.WriteLine($"{result.Units} units, {result.Heads} head layer(s) at {(first.Heads.Count > 0 ? first.Heads[0].Bits : 8)} bits, " +
                          $"curves {first.CurveMode.ToString().ToLowerInvariant()}{(first.CurvesFromCache ? " (cache)" : result.CurveRuns == 0 ? " (curves file)" : $" ({result.CurveRuns} runs)")}, " +
                          $"activations {(first.ActBits == 0 ? "float" : $"{first.ActBits}-bit {first.ActCalibration}")}, format {first.WeightFormat}{(first.Deploy is null ? "" : ", deploy speed")}, opset {first.Opset}");
        var table = new Table().AddColumns("target", "rate", "bits used", "predicted", "measured", "uniform", "weights", "vs float", "model");
        foreach (var column in table.Columns.Skip(1).Take(7))
            column.RightAligned();
        if (aps is not null)
            table.AddColumns("AP float", "AP quant");
        foreach (var t in result.Targets)
        {
            var r = t.Report;
            var used = string.Join(" ", r.Units.GroupBy(u => u.Bits).OrderBy(g => g.Key).Select(g => $"{g.Key}b:{g.Count()}"));
            var row = new List<string>
            {
                F(r.TargetBits, "0.##"), F(r.Rate, "0.000"), used, F(r.Distortion.Predicted, "G3"), F(r.Distortion.Measured, "G3"),
                r.Baseline is { Skipped: null } b ? $"{b.Bits}b: {F(b.Measured, "G3")}" : "-",
                $"{r.Sizes.QuantizedWeightBytes / 1024.0:0.0} KiB", $"{(double)r.Sizes.FloatWeightBytes / Math.Max(1, r.Sizes.QuantizedWeightBytes):0.0}x",
                Path.GetRelativePath(result.OutputDirectory, t.ModelPath),
            };
            if (aps?.FirstOrDefault(a => a.Target == r.TargetBits) is { } ap)
            {
                row.Add(F(ap.FloatAp * 100, "0.0"));
                row.Add(F(ap.QuantizedAp * 100, "0.0"));
            }
            table.AddRow(row.Select(Markup.Escape).ToArray());
        }
        console.Write(table);
        console.WriteLine($"distortion: {first.Distortion.Metric}, measured on {first.Distortion.Samples} {(first.Distortion.HeldOut ? "held-out" : "calibration")} samples; " +
                          (first.Baseline is { Skipped: { } skipped } ? $"uniform baseline {skipped}" : "uniform: every unit at the width nearest the target, measured the same way"));
        console.WriteLine("stages: " + string.Join(", ", result.Timings.Select(s => $"{s.Stage} {s.Seconds:0.0}s")));
        foreach (var note in result.Targets.SelectMany(t => t.Report.Notes).Distinct())
            console.WriteLine("note: " + (note.Length > 240 ? note[..237] + "... (whole note in report.json)" : note));
        console.WriteLine($"written: {Path.Combine(result.OutputDirectory, "manifest.json")}");
    }

    private static string F(double value, string format) => value.ToString(format, CultureInfo.InvariantCulture);
}
