using System.CommandLine;

namespace OnnxQuant.Cli;

/// <summary>Exit codes every command shares.</summary>
public static class ExitCodes
{
    public const int Ok = 0;
    /// <summary>
    /// Internal error: a bug in the tool, never the user's input (an unexpected exception, an invariant broken, or
    /// ONNX Runtime rejecting a model the compiler wrote). Printed with what to attach to a bug report.
    /// </summary>
    public const int InternalError = 1;
    /// <summary>Bad input: the file, data, options or budget the user gave cannot be used.</summary>
    public const int BadInput = 2;
    /// <summary>An accuracy guard (--max-distortion, --max-drop) failed.</summary>
    public const int AccuracyGuard = 3;
}

/// <summary>The `onnxquant` command tree and its one error policy.</summary>
public static class CliApp
{
    /// <summary>Global `--verbose`: stack traces on errors and more detail in progress output.</summary>
    public static readonly Option<bool> Verbose = new("--verbose")
    {
        Description = "Print stack traces on errors and more detail while working",
        Recursive = true,
    };

    public static RootCommand BuildRoot()
    {
        var root = new RootCommand("OnnxQuant: post-training mixed-precision quantization compiler for ONNX detection models");
        root.Options.Add(Verbose);
        // Each command lives in its own file under Commands/ and is registered here, in the order `--help` lists them.
        foreach (var command in Commands.All())
            root.Subcommands.Add(command);
        return root;
    }

    /// <summary>Runs the CLI with the given arguments and returns the process exit code.</summary>
    public static int Run(string[] args, TextWriter? stdout = null, TextWriter? stderr = null)
    {
        stdout ??= Console.Out;
        stderr ??= Console.Error;
        var root = BuildRoot();
        var parse = root.Parse(args);
        var config = new InvocationConfiguration
        {
            EnableDefaultExceptionHandler = false,
            Output = stdout,
            Error = stderr,
        };
        // A malformed command line is the user's to fix: one line naming the option, exit 2, no help screen.
        if (parse.Errors.Count > 0)
        {
            var command = parse.CommandResult.Command;
            var name = command is RootCommand ? "onnxquant" : $"onnxquant {command.Name}";
            var messages = string.Join("; ", parse.Errors.Select(e => e.Message.TrimEnd('.')).Distinct());
            stderr.WriteLine($"error: {ErrorReporter.OneLine(messages)} (`{name} --help` lists the options)");
            return ExitCodes.BadInput;
        }
        try
        {
            return parse.Invoke(config);
        }
        catch (Exception ex)
        {
            return ErrorReporter.Report(ex, stderr, parse.GetValue(Verbose));
        }
    }
}

/// <summary>
/// Turns exceptions into one line on stderr and an exit code. Errors about the user's input or environment (files,
/// data, options, budgets, permissions, a full disk, missing or looping paths) exit 2 without a stack trace; anything
/// else is a bug and exits 1 with its trace.
/// </summary>
public static class ErrorReporter
{
    public static int Report(Exception ex, TextWriter stderr, bool verbose)
    {
        if (ex is System.Reflection.TargetInvocationException { InnerException: { } inner })
            ex = inner;
        var exitCode = UserErrors.Classify(ex);
        if (exitCode is { } code)
        {
            stderr.WriteLine($"error: {OneLine(ex.Message)}");
            if (verbose)
                stderr.WriteLine(ex.ToString());
            return code;
        }
        // Not the user's fault: say so, and say what a bug report needs.
        stderr.WriteLine($"internal error: {OneLine(ex.Message)}");
        stderr.WriteLine($"This is a bug in onnxquant {VersionCommand.ToolVersion}, not a problem with your input. Please report it with:");
        stderr.WriteLine($"  - the command line: onnxquant {string.Join(" ", Environment.GetCommandLineArgs().Skip(1))}");
        if (ex is OnnxQuant.Passes.InternalFailureException { DebugDirectory: { } debug })
            stderr.WriteLine($"  - the folder {debug} (the failing model and the error)");
        stderr.WriteLine("  - the trace below");
        stderr.WriteLine(ex.ToString());
        return ExitCodes.InternalError;
    }

    internal static string OneLine(string message) =>
        string.Join(' ', message.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries));
}
