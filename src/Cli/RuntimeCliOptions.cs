using System.CommandLine;
using OnnxQuant.Runtime;

namespace OnnxQuant.Cli;

/// <summary>
/// The ONNX Runtime options every command that runs models shares (--ort-lib, --ep, --threads), and the one place that
/// turns them into a loaded runtime and session options. Each command adds fresh instances from these factories.
/// </summary>
internal static class RuntimeCliOptions
{
    public static Option<string?> OrtLib() => new("--ort-lib")
    {
        Description = "Path to libonnxruntime.so (or its folder) to use instead of $ONNXQUANT_ORT_LIB or the ONNX Runtime that ships with the tool",
        HelpName = "PATH",
    };

    public static Option<string[]> CustomOpLibraries() => new("--custom-op-library")
    {
        Description = "Shared library (.so) that registers the model's custom operators with ONNX Runtime (e.g. an exporter's or deployment toolkit's ops library); repeat for several",
        HelpName = "PATH",
    };

    public static Option<string> ExecutionProvider()
    {
        var option = new Option<string>("--ep")
        {
            Description = "Execution provider: cpu, cuda (needs a CUDA build: -p:OnnxQuantCuda=true, or --ort-lib) or auto (CUDA when it works, else CPU)",
            DefaultValueFactory = _ => "cpu",
        };
        option.AcceptOnlyFromAmong("cpu", "cuda", "auto");
        return option;
    }

    public static Option<int> Threads() => new("--threads")
    {
        Description = "Intra-op threads for ONNX Runtime; 0 lets it choose",
        DefaultValueFactory = _ => 0,
    };

    /// <summary>
    /// Loads the library the user asked for (or the default one) and sends its one-line notices to the command's
    /// error writer.
    /// </summary>
    /// <exception cref="RuntimeSetupException">No usable library.</exception>
    public static OrtRuntime Initialize(ParseResult parse, Option<string?> ortLib, Option<string[]> customOps)
    {
        var runtime = OrtRuntime.Initialize(parse.GetValue(ortLib));
        var error = parse.InvocationConfiguration.Error;
        runtime.Notify = line => error.WriteLine(line);
        runtime.CustomOperatorLibraries = parse.GetValue(customOps) ?? [];
        return runtime;
    }

    /// <summary>
    /// --threads, at most the machine's cores: more only adds threads that wait on each other (and their stacks), so
    /// a larger value is capped with a note on stderr.
    /// </summary>
    /// <exception cref="CliInputException">A negative thread count.</exception>
    public static int ThreadCount(ParseResult parse, Option<int> threads)
    {
        var count = parse.GetValue(threads);
        if (count < 0)
            throw new CliInputException($"--threads must be >= 0 (0 lets ONNX Runtime choose), got {count}");
        var cores = Environment.ProcessorCount;
        if (count <= cores)
            return count;
        parse.InvocationConfiguration.Error.WriteLine($"note: --threads {count} is more than the {cores} cores of this machine; using {cores}");
        return cores;
    }

    /// <summary>Session options from --ep and --threads.</summary>
    /// <exception cref="CliInputException">A negative thread count.</exception>
    public static SessionOptions SessionOptions(ParseResult parse, Option<string> ep, Option<int> threads)
    {
        var count = ThreadCount(parse, threads);
        return new SessionOptions
        {
            Provider = OnnxQuant.Runtime.SessionOptions.ParseProvider(parse.GetValue(ep) ?? "cpu"),
            IntraOpThreads = count,
        };
    }
}
