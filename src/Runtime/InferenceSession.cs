using OnnxQuant.Runtime.Native;
using Ort = Microsoft.ML.OnnxRuntime;

namespace OnnxQuant.Runtime;

/// <summary>
/// A model loaded into ONNX Runtime, ready to run. Runs are thread-safe; inputs are read in place (pinned for the call)
/// and outputs are copied into managed arrays before the native values are released.
/// </summary>
/// <remarks>
/// Sessions run through ONNX Runtime's managed API. The one exception is a model whose graph inputs or outputs carry an
/// element type the managed API has no enum value for (INT4, UINT4, INT2, UINT2, FLOAT8*, FLOAT4E2M1): the managed
/// session refuses to open it, so such a model runs through the few C functions in <see cref="NativeSessionCore"/>.
/// </remarks>
public sealed class InferenceSession : IDisposable
{
    private readonly ISessionCore _core;
    private readonly Dictionary<string, int> _inputIndex;
    private readonly HashSet<string> _outputNames;
    private bool _disposed;

    /// <summary>Graph inputs that must or may be fed (initializers are not listed).</summary>
    public IReadOnlyList<TensorInfo> Inputs => _core.Inputs;

    /// <summary>Graph outputs, in graph order.</summary>
    public IReadOnlyList<TensorInfo> Outputs => _core.Outputs;

    /// <summary>The provider the session actually runs on (never <see cref="ExecutionProvider.Auto"/>).</summary>
    public ExecutionProvider ActiveProvider { get; }

    /// <summary>Why <see cref="ExecutionProvider.Auto"/> fell back to CPU; null when it did not.</summary>
    public string? ProviderNotice { get; }

    /// <summary>The options the session was created with.</summary>
    public SessionOptions Options { get; }

    private InferenceSession(ISessionCore core, SessionOptions options, ExecutionProvider active, string? notice)
    {
        _core = core;
        Options = options;
        ActiveProvider = active;
        ProviderNotice = notice;
        _inputIndex = core.Inputs.Select((info, i) => (info.Name, i)).ToDictionary(p => p.Name, p => p.i);
        _outputNames = core.Outputs.Select(o => o.Name).ToHashSet();
    }

    /// <summary>Loads a model file (external data is resolved next to it).</summary>
    /// <exception cref="FileNotFoundException">No such file.</exception>
    /// <exception cref="OrtException">ONNX Runtime rejects the model.</exception>
    /// <exception cref="RuntimeSetupException">No library, or CUDA requested where it cannot run.</exception>
    public static InferenceSession Create(string modelPath, SessionOptions? options = null)
    {
        if (!File.Exists(modelPath))
            throw new FileNotFoundException($"model not found: {modelPath}", modelPath);
        var fullPath = Path.GetFullPath(modelPath);
        var runtime = OrtRuntime.Shared;
        options ??= SessionOptions.Default;
        return CreateWith(runtime, options, $"loading {modelPath}", nativeOptions =>
            ManagedOrNative(runtime, options, () => new Ort.InferenceSession(fullPath, nativeOptions),
                () => NativeSessionCore.FromPath(runtime, fullPath, nativeOptions), $"loading {modelPath}"));
    }

    /// <summary>Loads a serialized model from memory (external data paths resolve against the working directory).</summary>
    /// <exception cref="OrtException">ONNX Runtime rejects the model.</exception>
    /// <exception cref="RuntimeSetupException">No library, or CUDA requested where it cannot run.</exception>
    public static InferenceSession Create(byte[] model, SessionOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        var runtime = OrtRuntime.Shared;
        const string operation = "loading the model from memory";
        options ??= SessionOptions.Default;
        return CreateWith(runtime, options, operation, nativeOptions =>
            ManagedOrNative(runtime, options, () => new Ort.InferenceSession(model, nativeOptions),
                () => NativeSessionCore.FromBytes(runtime, model, nativeOptions), operation));
    }

    /// <summary>
    /// Builds a session from a model serialized on demand. The serialized bytes (as large as the weights) are
    /// collected before the session's first run when they pass <see cref="CollectAfterBytes"/>, so they never sit in
    /// the managed heap beside the runs' activations: a compile builds a few dozen sessions of a full-size model.
    /// </summary>
    public static InferenceSession Create(Func<byte[]> serialize, SessionOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(serialize);
        var bytes = serialize();
        var large = bytes.LongLength >= CollectAfterBytes;
        var session = Create(bytes, options);
        bytes = null;
        if (large)
            GC.Collect(2, GCCollectionMode.Forced, blocking: true, compacting: true);
        return session;
    }

    /// <summary>Serialized size from which <see cref="Create(Func{byte[]}, SessionOptions?)"/> collects the bytes at once.</summary>
    public const long CollectAfterBytes = 32L << 20;

    private static ISessionCore ManagedOrNative(OrtRuntime runtime, SessionOptions options, Func<Ort.InferenceSession> managed, Func<ISessionCore> native, string operation)
    {
        try
        {
            // Only the CPU arena is shrunk: the key names each device's arena, and the CPU EP's is the one runs grow.
            return new ManagedSessionCore(managed(), options.ReleaseArenaAfterRun && options.Provider != ExecutionProvider.Cuda);
        }
        catch (Ort.OnnxRuntimeException ex) when (OrtErrors.IsUnregisteredElementType(ex))
        {
            // ORT opened the model; only the managed metadata reader refused an INT4/INT2/FLOAT8... input or output.
            return native();
        }
        catch (Ort.OnnxRuntimeException ex)
        {
            throw OrtErrors.From(ex, operation);
        }
    }

    private static InferenceSession CreateWith(OrtRuntime runtime, SessionOptions options, string operation, Func<Ort.SessionOptions, ISessionCore> create)
    {
        switch (options.Provider)
        {
            case ExecutionProvider.Cpu:
                return new InferenceSession(CreateCore(runtime, options, cuda: false, create), options, ExecutionProvider.Cpu, null);
            case ExecutionProvider.Cuda:
                if (!runtime.HasCudaProvider)
                    throw new RuntimeSetupException(OrtRuntime.CudaMissingMessage(runtime, null));
                return new InferenceSession(CreateCore(runtime, options, cuda: true, create), options, ExecutionProvider.Cuda, null);
            default:
                string reason;
                if (runtime.HasCudaProvider)
                {
                    try
                    {
                        return new InferenceSession(CreateCore(runtime, options, cuda: true, create), options, ExecutionProvider.Cuda, null);
                    }
                    catch (RuntimeSetupException ex) when (ex.InnerException is OrtException ort)
                    {
                        reason = ort.ShortMessage;
                    }
                    catch (OrtException ex)
                    {
                        // A CUDA build can also fail only when the session initializes the provider (no driver, no GPU).
                        reason = ex.ShortMessage;
                    }
                }
                else
                {
                    reason = $"the library provides only {string.Join(", ", runtime.AvailableProviders)}";
                }
                var notice = $"notice: --ep auto runs on CPU: CUDA is not available ({OneLine(reason)}); {OrtRuntime.CudaDirections} to use the GPU";
                var session = new InferenceSession(CreateCore(runtime, options, cuda: false, create), options, ExecutionProvider.Cpu, notice);
                runtime.NotifyFallbackOnce(notice);
                return session;
        }
    }

    private static ISessionCore CreateCore(OrtRuntime runtime, SessionOptions options, bool cuda, Func<Ort.SessionOptions, ISessionCore> create)
    {
        using var native = BuildOptions(runtime, options, cuda);
        var core = create(native);
        // Parsing the model and building the session leave their scratch free in the C heap.
        if (options.ReleaseNativeHeap)
            NativeHeap.Release();
        return core;
    }

    private static Ort.SessionOptions BuildOptions(OrtRuntime runtime, SessionOptions options, bool cuda)
    {
        var threads = options.IntraOpThreads;
        if (threads < 0)
            throw new ArgumentException($"IntraOpThreads must be >= 0 (0 = ONNX Runtime's default), got {threads}");
        var native = new Ort.SessionOptions();
        try
        {
            try
            {
                // Same numbers as ORT's GraphOptimizationLevel; ORT itself refuses a value it does not know.
                native.GraphOptimizationLevel = (Ort.GraphOptimizationLevel)(int)options.Optimization;
            }
            catch (Ort.OnnxRuntimeException ex)
            {
                throw OrtErrors.From(ex, "SetSessionGraphOptimizationLevel");
            }
            if (options.Deterministic)
            {
                native.ExecutionMode = Ort.ExecutionMode.ORT_SEQUENTIAL;
                native.InterOpNumThreads = 1;
                if (threads == 0)
                    threads = 1;
            }
            if (threads > 0)
                native.IntraOpNumThreads = threads;
            if (!options.MemoryArena)
                native.EnableCpuMemArena = false;
            if (!options.MemoryPattern)
                native.EnableMemoryPattern = false;
            if (options.OptimizedModelPath is { } optimized)
                native.OptimizedModelFilePath = Path.GetFullPath(optimized);
            if (options.ProfilePrefix is { } prefix)
            {
                native.ProfileOutputPathPrefix = prefix;
                native.EnableProfiling = true;
            }
            foreach (var entry in options.ConfigEntries)
            {
                try
                {
                    native.AddSessionConfigEntry(entry.Key, entry.Value);
                }
                catch (Ort.OnnxRuntimeException ex)
                {
                    throw OrtErrors.From(ex, $"session config entry {entry.Key}={entry.Value}");
                }
            }
            foreach (var library in runtime.CustomOperatorLibraries)
            {
                try
                {
                    native.RegisterCustomOpLibrary(library);
                }
                catch (Ort.OnnxRuntimeException ex)
                {
                    throw new RuntimeSetupException($"custom operator library '{library}' could not be registered ({ex.Message.Trim()}): " +
                                                    $"it must export RegisterCustomOps and be built for ONNX Runtime {runtime.Version} or older", ex);
                }
            }
            if (cuda)
                AppendCuda(runtime, native, options.DeviceId);
            return native;
        }
        catch
        {
            native.Dispose();
            throw;
        }
    }

    private static void AppendCuda(OrtRuntime runtime, Ort.SessionOptions native, int deviceId)
    {
        try
        {
            using var cuda = new Ort.OrtCUDAProviderOptions();
            cuda.UpdateOptions(new Dictionary<string, string> { ["device_id"] = deviceId.ToString(System.Globalization.CultureInfo.InvariantCulture) });
            native.AppendExecutionProvider_CUDA(cuda);
        }
        catch (Ort.OnnxRuntimeException ex)
        {
            var error = OrtErrors.From(ex, "appending the CUDA execution provider");
            throw new RuntimeSetupException(OrtRuntime.CudaMissingMessage(runtime, error.ShortMessage), error);
        }
    }

    /// <summary>
    /// Stops the profiler of a session created with <see cref="SessionOptions.ProfilePrefix"/> and returns the path of
    /// the JSON trace it wrote (read it with <see cref="OpProfile.Read"/>).
    /// </summary>
    /// <exception cref="InvalidOperationException">The session was created without profiling.</exception>
    public string EndProfiling()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (Options.ProfilePrefix is null)
            throw new InvalidOperationException("the session was created without profiling (SessionOptions.ProfilePrefix)");
        return _core.EndProfiling();
    }

    /// <summary>
    /// Runs the model. Inputs are matched by name; <paramref name="outputNames"/> selects outputs (default: all, in
    /// graph order). Returns the outputs in the requested order, copied into managed memory.
    /// </summary>
    /// <exception cref="ArgumentException">An input or output name the model does not have, or an input given twice.</exception>
    /// <exception cref="OrtException">ONNX Runtime refuses the inputs (missing input, wrong type or shape) or fails.</exception>
    public IReadOnlyList<NamedTensor> Run(IReadOnlyList<NamedTensor> inputs, IReadOnlyList<string>? outputNames = null)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ArgumentNullException.ThrowIfNull(inputs);
        var seen = new HashSet<string>();
        foreach (var input in inputs)
        {
            if (!_inputIndex.ContainsKey(input.Name))
                throw new ArgumentException($"the model has no input '{input.Name}'; its inputs are: {string.Join(", ", Inputs.Select(x => x.ToString()))}");
            if (!seen.Add(input.Name))
                throw new ArgumentException($"input '{input.Name}' is given twice");
        }
        var outputs = outputNames ?? Outputs.Select(o => o.Name).ToList();
        foreach (var name in outputs)
            if (!_outputNames.Contains(name))
                throw new ArgumentException($"the model has no output '{name}'; its outputs are: {string.Join(", ", Outputs.Select(o => o.Name))}");
        return _core.Run(inputs, outputs);
    }

    /// <summary>Runs one batch after another, yielding each batch's outputs before the next runs, so a caller that
    /// reduces them as they come never holds more than one batch of outputs.</summary>
    public IEnumerable<IReadOnlyList<NamedTensor>> RunBatches(IEnumerable<IReadOnlyList<NamedTensor>> batches, IReadOnlyList<string>? outputNames = null)
    {
        ArgumentNullException.ThrowIfNull(batches);
        foreach (var batch in batches)
            yield return Run(batch, outputNames);
    }

    private static string OneLine(string text) => text.ReplaceLineEndings(" ").Trim();

    public void Dispose()
    {
        if (_disposed)
            return;
        _disposed = true;
        _core.Dispose();
        if (Options.ReleaseNativeHeap)
            NativeHeap.Release();
    }
}

/// <summary>One loaded model behind <see cref="InferenceSession"/>; names are checked before <see cref="Run"/>.</summary>
internal interface ISessionCore : IDisposable
{
    IReadOnlyList<TensorInfo> Inputs { get; }
    IReadOnlyList<TensorInfo> Outputs { get; }
    NamedTensor[] Run(IReadOnlyList<NamedTensor> inputs, IReadOnlyList<string> outputNames);

    /// <summary>Stops the profiler and returns the path of the trace it wrote.</summary>
    string EndProfiling();
}
