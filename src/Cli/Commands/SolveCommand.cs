using System.CommandLine;
using System.Globalization;
using System.Text;
using System.Text.Json;
using OnnxQuant.Solvers;
using Spectre.Console;

namespace OnnxQuant.Cli;

/// <summary>
/// <c>onnxquant solve curves.json --target-bits 3.5 [--solver dp|lagrangian] [--min-bits 2] [--epsilon 0.02] [--json]</c>:
/// solves the bit allocation for a curves file (schema onnxquant.curves/1) and prints it as a table or JSON.
/// Several comma-separated targets print the rate-distortion front; a target that is infeasible is reported in its
/// row while the others are solved.
/// </summary>
internal static class SolveCommand
{
    public static Command Create()
    {
        var curves = new Argument<string>("curves") { Description = "Curves file (JSON, schema onnxquant.curves/1)" };
        var targets = new Option<string>("--target-bits")
        {
            Description = "Target average bits per weight; several comma-separated targets (2,3,4) print the front",
            Required = true,
        };
        var solver = new Option<string>("--solver")
        {
            Description = "dp (exact) or lagrangian (convex-hull search)",
            DefaultValueFactory = _ => "dp",
        };
        solver.AcceptOnlyFromAmong("dp", "lagrangian");
        var minBits = new Option<int>("--min-bits")
        {
            Description = "Least width of any unit that is not pinned",
            DefaultValueFactory = _ => 2,
        };
        var epsilon = new Option<double>("--epsilon")
        {
            Description = "Lagrangian rate tolerance: stop once the rate is within epsilon below the target",
            DefaultValueFactory = _ => 0.02,
        };
        var monotone = new Option<bool>("--monotone")
        {
            Description = "Replace curves that rise with more bits by their running minimum (default: use as given, with a warning)",
        };
        var json = new Option<bool>("--json") { Description = "Print JSON instead of a table" };
        var tieTolerance = new Option<double>("--tie-tolerance")
        {
            Description = "Decide on curves snapped to a grid of this fraction of sqrt(max D) in sqrt(D), so differences below it cannot change the allocation (0 = curves to the last digit)",
            DefaultValueFactory = _ => TieRule.DefaultTolerance,
        };

        var command = new Command("solve", "Choose a bit width per unit from a curves file so the average meets the target with the least distortion");
        command.Arguments.Add(curves);
        foreach (var option in new Option[] { targets, solver, minBits, epsilon, monotone, json, tieTolerance })
            command.Options.Add(option);
        command.SetAction(parse =>
        {
            var targetList = ParseTargets(parse.GetValue(targets)!);
            // Units that apply one weight (tied_to) are allocated as one, as the compile that wrote them did.
            var (units, tiedTo) = TiedCurves.Merge(CurvesFile.Read(parse.GetValue(curves)!), OnnxQuant.Passes.Quantization.StableRounding.Round);
            var policy = parse.GetValue(monotone) ? CurvePolicy.MakeMonotone : CurvePolicy.UseAsGiven;
            var problem = new AllocationProblem(units, targetList[0], parse.GetValue(minBits), policy, parse.GetValue(tieTolerance));
            var solverName = parse.GetValue(solver)!;
            IBitAllocator allocator = solverName == "dp"
                ? new DpAllocator()
                : new LagrangianAllocator(new LagrangianOptions(parse.GetValue(epsilon)));

            var output = parse.InvocationConfiguration.Output;
            var error = parse.InvocationConfiguration.Error;
            if (tiedTo.Count > 0)
                error.WriteLine($"note: {tiedTo.Count} tied unit(s) take the width of the unit they are tied to (their curves are added to its)");
            if (targetList.Count == 1)
            {
                var allocation = allocator.Solve(problem);
                WriteWarnings(error, allocation.Warnings);
                if (parse.GetValue(json))
                    output.Write(SolveJson.Single(solverName, allocation));
                else
                    SolveTable.Single(output, solverName, problem, allocation);
                return ExitCodes.Ok;
            }

            var front = ParetoSweep.Run(problem, targetList, allocator);
            if (!front.Feasible.Any())
                throw front.Points[0].Error!;
            WriteWarnings(error, front.Feasible.SelectMany(p => p.Allocation!.Warnings).Distinct());
            if (parse.GetValue(json))
                output.Write(SolveJson.Front(solverName, front));
            else
                SolveTable.Front(output, solverName, problem, front);
            return ExitCodes.Ok;
        });
        return command;
    }

    /// <summary>"3.5" or "2,3,4" (invariant culture, dot decimal separator).</summary>
    internal static IReadOnlyList<double> ParseTargets(string text)
    {
        var parts = text.Split(',', StringSplitOptions.TrimEntries);
        var values = new List<double>();
        foreach (var part in parts)
        {
            if (!double.TryParse(part, NumberStyles.Float, CultureInfo.InvariantCulture, out var value) || !double.IsFinite(value) || value <= 0)
                throw new CliInputException($"--target-bits: '{part}' is not a positive number (give e.g. 3.5 or 2,3,4)");
            values.Add(value);
        }
        return values;
    }

    private static void WriteWarnings(TextWriter error, IEnumerable<SolverWarning> warnings)
    {
        foreach (var warning in warnings)
            error.WriteLine($"warning: {warning.Message}");
    }
}

/// <summary>Tables for <c>onnxquant solve</c> (Spectre.Console, no colour so redirected output stays plain).</summary>
internal static class SolveTable
{
    public static void Single(TextWriter writer, string solver, AllocationProblem problem, Allocation allocation)
    {
        var console = Console(writer);
        console.WriteLine($"solver {solver}, target {F(allocation.TargetBits)} bits: rate {F(allocation.Rate)}, predicted distortion {G(allocation.PredictedDistortion)}");
        console.WriteLine(Describe(allocation.Stats));
        var table = new Table().Border(TableBorder.Rounded);
        table.AddColumn("unit");
        table.AddColumn(new TableColumn("size").RightAligned());
        table.AddColumn(new TableColumn("bits").RightAligned());
        table.AddColumn(new TableColumn("distortion").RightAligned());
        foreach (var (u, i) in allocation.Units.Select((u, i) => (u, i)))
        {
            var pinned = problem.Units[i].PinnedBits is not null ? " (pinned)" : "";
            table.AddRow(Markup.Escape(u.Name), u.Size.ToString(CultureInfo.InvariantCulture), u.Bits + pinned, G(u.Distortion));
        }
        console.Write(table);
    }

    public static void Front(TextWriter writer, string solver, AllocationProblem problem, ParetoFront front)
    {
        var console = Console(writer);
        console.WriteLine($"solver {solver}: rate-distortion front over {front.Points.Count} targets");
        var summary = new Table().Border(TableBorder.Rounded);
        summary.AddColumn(new TableColumn("target").RightAligned());
        summary.AddColumn(new TableColumn("rate").RightAligned());
        summary.AddColumn(new TableColumn("distortion").RightAligned());
        summary.AddColumn("solver statistics");
        foreach (var point in front.Points)
        {
            if (point.Allocation is { } a)
                summary.AddRow(F(point.TargetBits), F(a.Rate), G(a.PredictedDistortion), Markup.Escape(Describe(a.Stats)));
            else
                summary.AddRow(F(point.TargetBits), "-", "-", Markup.Escape(point.Error!.Message));
        }
        console.Write(summary);

        var feasible = front.Feasible.ToList();
        var bits = new Table().Border(TableBorder.Rounded);
        bits.AddColumn("unit");
        bits.AddColumn(new TableColumn("size").RightAligned());
        foreach (var point in feasible)
            bits.AddColumn(new TableColumn($"bits @ {F(point.TargetBits)}").RightAligned());
        for (var i = 0; i < problem.Units.Count; i++)
        {
            var row = new List<string> { Markup.Escape(problem.Units[i].Name), problem.Units[i].Size.ToString(CultureInfo.InvariantCulture) };
            row.AddRange(feasible.Select(p => p.Allocation!.Units[i].Bits.ToString(CultureInfo.InvariantCulture)));
            bits.AddRow(row.ToArray());
        }
        console.Write(bits);
    }

    internal static string Describe(SolverStats stats) => DescribeSolver(stats) +
        (stats.TieTolerance > 0 ? $", tie tolerance {G(stats.TieTolerance)} (step {G(stats.TieStep)} in sqrt(D))" : "");

    private static string DescribeSolver(SolverStats stats) => stats switch
    {
        DpStats dp when dp.IsExact => $"dp: exact, {dp.Cells} budget cells of {dp.CostUnit} weight-bits, choice table {dp.TableBytes} bytes",
        DpStats dp => $"dp: bucketed, {dp.Cells} budget cells of {dp.BucketSize} weight-bits (exact cell {dp.CostUnit}), " +
                      $"optimality gap <= {G(dp.OptimalityGapBound)}",
        LagrangianStats lg => $"lagrangian: lambda {lg.Lambda.ToString("G6", CultureInfo.InvariantCulture)}, {lg.Iterations} iterations, " +
                              $"epsilon {F(lg.Epsilon)}{(lg.WindowMissed ? ", window missed (best feasible hull point)" : "")}",
        _ => stats.Solver,
    };

    private static IAnsiConsole Console(TextWriter writer)
    {
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Ansi = AnsiSupport.No,
            ColorSystem = ColorSystemSupport.NoColors,
            Interactive = InteractionSupport.No,
            Out = new AnsiConsoleOutput(writer),
        });
        // Redirected output has no terminal width; keep rows unwrapped for files and tests.
        if (!ReferenceEquals(writer, System.Console.Out) || System.Console.IsOutputRedirected)
            console.Profile.Width = 240;
        return console;
    }

    private static string F(double v) => v.ToString("0.####", CultureInfo.InvariantCulture);
    private static string G(double v) => v.ToString("G6", CultureInfo.InvariantCulture);
}

/// <summary>
/// JSON for <c>onnxquant solve --json</c>: {"solver", "target_bits", "rate", "distortion", "allocation": {name: bits}}
/// plus deterministic "stats" (never the elapsed time), so identical inputs give identical bytes.
/// </summary>
internal static class SolveJson
{
    public static string Single(string solver, Allocation allocation) => Write(w => WriteAllocation(w, solver, allocation));

    public static string Front(string solver, ParetoFront front) => Write(w =>
    {
        w.WriteStartObject();
        w.WriteString("solver", solver);
        w.WriteStartArray("front");
        foreach (var point in front.Points)
        {
            if (point.Allocation is { } a)
            {
                WriteAllocation(w, solver, a);
                continue;
            }
            w.WriteStartObject();
            w.WriteString("solver", solver);
            w.WriteNumber("target_bits", point.TargetBits);
            w.WriteString("error", point.Error!.Message);
            if (point.Error.Reason is { } reason)
                w.WriteString("reason", reason.ToString());
            w.WriteEndObject();
        }
        w.WriteEndArray();
        w.WriteEndObject();
    });

    private static void WriteAllocation(Utf8JsonWriter w, string solver, Allocation allocation)
    {
        w.WriteStartObject();
        w.WriteString("solver", solver);
        w.WriteNumber("target_bits", allocation.TargetBits);
        w.WriteNumber("rate", allocation.Rate);
        w.WriteNumber("distortion", allocation.PredictedDistortion);
        w.WriteStartObject("allocation");
        foreach (var unit in allocation.Units)
            w.WriteNumber(unit.Name, unit.Bits);
        w.WriteEndObject();
        w.WriteStartObject("stats");
        switch (allocation.Stats)
        {
            case DpStats dp:
                w.WriteBoolean("exact", dp.IsExact);
                w.WriteNumber("cells", dp.Cells);
                w.WriteNumber("cost_unit", dp.CostUnit);
                w.WriteNumber("bucket_size", dp.BucketSize);
                w.WriteNumber("table_bytes", dp.TableBytes);
                w.WriteNumber("optimality_gap_bound", dp.OptimalityGapBound);
                break;
            case LagrangianStats lg:
                w.WriteNumber("lambda", lg.Lambda);
                w.WriteNumber("iterations", lg.Iterations);
                w.WriteNumber("epsilon", lg.Epsilon);
                w.WriteBoolean("window_missed", lg.WindowMissed);
                break;
        }
        w.WriteNumber("tie_tolerance", allocation.Stats.TieTolerance);
        w.WriteNumber("tie_step", allocation.Stats.TieStep);
        w.WriteEndObject();
        w.WriteEndObject();
    }

    private static string Write(Action<Utf8JsonWriter> body)
    {
        using var stream = new MemoryStream();
        using (var writer = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true, NewLine = "\n" }))
            body(writer);
        stream.WriteByte((byte)'\n');
        return Encoding.UTF8.GetString(stream.ToArray());
    }
}
