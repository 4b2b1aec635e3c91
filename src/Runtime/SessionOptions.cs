namespace OnnxQuant.Runtime;

/// <summary>Where a session runs.</summary>
public enum ExecutionProvider
{
    /// <summary>The CPU execution provider (always available).</summary>
    Cpu,
    /// <summary>The CUDA execution provider; session creation fails when the library or machine lacks it.</summary>
    Cuda,
    /// <summary>CUDA when it works, otherwise CPU with a one-line notice.</summary>
    Auto,
}

/// <summary>ONNX Runtime's graph optimization levels.</summary>
public enum GraphOptimization
{
    /// <summary>No graph rewriting: every node and tensor name of the model survives (calibration needs this).</summary>
    Disabled = 0,
    Basic = 1,
    Extended = 2,
    All = 99,
}

/// <summary>One ONNX Runtime session configuration entry (see onnxruntime_session_options_config_keys.h).</summary>
public sealed record SessionConfigEntry(string Key, string Value);

/// <summary>Well-known session configuration keys.</summary>
public static class SessionConfigKeys
{
    /// <summary>
    /// Accuracy level of the MatMulNBits kernels ORT fuses DequantizeLinear->MatMul into. ORT defaults to 4 (int8
    /// activations, 0.3-0.6 % relative error); "0" keeps the float computation exact.
    /// </summary>
    public const string QdqMatMulNBitsAccuracyLevel = "session.qdq_matmulnbits_accuracy_level";
}

/// <summary>How a session is created. Immutable; derive variants with `with`.</summary>
public sealed record SessionOptions
{
    public ExecutionProvider Provider { get; init; } = ExecutionProvider.Cpu;

    /// <summary>CUDA device ordinal (ignored on CPU).</summary>
    public int DeviceId { get; init; }

    /// <summary>Intra-op threads; 0 lets ONNX Runtime choose (one per physical core).</summary>
    public int IntraOpThreads { get; init; }

    public GraphOptimization Optimization { get; init; } = GraphOptimization.All;

    /// <summary>
    /// ONNX Runtime's CPU memory arena, which keeps the largest run's buffers for the session's life. Off, each run's
    /// buffers go back when the run ends: for a session whose runs return many large tensors (calibration) that is
    /// gigabytes less resident memory, for a few allocations per run.
    /// </summary>
    public bool MemoryArena { get; init; } = true;

    /// <summary>
    /// ONNX Runtime's memory pattern: each run's intermediate tensors planned into one block sized from the first
    /// runs. Off, tensors come from the arena one by one and a freed buffer is reused at once: for a graph whose extra
    /// outputs keep many tensors' consumers apart (calibration's reductions of every layer input) that was 214 MB less
    /// peak memory and no slower on a 512x512 DETR-R50.
    /// </summary>
    public bool MemoryPattern { get; init; } = true;

    /// <summary>
    /// Hands the C heap's free pages back to the OS once the session is built and again once it is closed
    /// (<see cref="NativeHeap.Release"/>): for the few large sessions of a phase (calibration, verification), whose
    /// model parse and buffers would otherwise stay resident through the next phase. Not for a series of similar
    /// sessions: each would fault the pages the previous one gave back in again (20 cut sessions of DETR-R50 took
    /// 1.3 s longer to build).
    /// </summary>
    public bool ReleaseNativeHeap { get; init; }

    /// <summary>
    /// Frees the CPU arena's unused chunks when each run ends (ONNX Runtime's arena shrinkage). The arena grows in
    /// powers of two and keeps what it grew, so a session whose runs read many large intermediate tensors (calibration's
    /// reductions over every layer input) held 335 MB more than the runs use on a 512x512 DETR-R50, but shrinking made
    /// calibration's runs 40 % slower there: for sessions with few runs. Runs of the CPU arena only; ignored for a model run through the C functions.
    /// </summary>
    public bool ReleaseArenaAfterRun { get; init; }

    /// <summary>Session configuration entries, applied in order.</summary>
    public IReadOnlyList<SessionConfigEntry> ConfigEntries { get; init; } = [];

    /// <summary>
    /// Bit-identical results across runs and machines with the same library: sequential execution and, when
    /// <see cref="IntraOpThreads"/> is 0, one intra-op thread, since kernels split reductions by thread count.
    /// </summary>
    public bool Deterministic { get; init; }

    /// <summary>
    /// Where ONNX Runtime writes the model after its graph optimizations (fusions included) when the session is
    /// created; null writes nothing. The file shows which kernels the session really runs.
    /// </summary>
    public string? OptimizedModelPath { get; init; }

    /// <summary>
    /// Turns on ONNX Runtime's profiler: every node run is recorded with its op type and duration into a JSON trace
    /// whose file name starts with this prefix; <see cref="InferenceSession.EndProfiling"/> closes it. Null = off.
    /// </summary>
    public string? ProfilePrefix { get; init; }

    /// <summary>Default CPU session with full optimization.</summary>
    public static SessionOptions Default { get; } = new();

    /// <summary>What calibration uses: optimizations off so every tensor name survives, deterministic.</summary>
    public static SessionOptions Calibration { get; } = new() { Optimization = GraphOptimization.Disabled, Deterministic = true };

    /// <summary>A copy with one more configuration entry.</summary>
    public SessionOptions WithConfig(string key, string value) => this with { ConfigEntries = [.. ConfigEntries, new SessionConfigEntry(key, value)] };

    /// <summary>Parses a provider name as the CLI spells it: cpu, cuda or auto.</summary>
    /// <exception cref="ArgumentException">Any other name.</exception>
    public static ExecutionProvider ParseProvider(string name) => name.Trim().ToLowerInvariant() switch
    {
        "cpu" => ExecutionProvider.Cpu,
        "cuda" => ExecutionProvider.Cuda,
        "auto" => ExecutionProvider.Auto,
        _ => throw new ArgumentException($"unknown execution provider '{name}': use cpu, cuda or auto"),
    };
}
