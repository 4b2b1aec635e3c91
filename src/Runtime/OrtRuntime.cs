using System.Runtime.InteropServices;
using OnnxQuant.Runtime.Native;
using Ort = Microsoft.ML.OnnxRuntime;

namespace OnnxQuant.Runtime;

/// <summary>
/// The loaded ONNX Runtime library and its one environment (the managed API's <see cref="Ort.OrtEnv"/>). ONNX Runtime
/// allows one environment per process and a library cannot be unloaded safely, so there is one process-wide instance,
/// created on first use from the default location (<see cref="OrtLibraryLocator"/>) or earlier through
/// <see cref="Initialize"/>.
/// </summary>
public sealed unsafe class OrtRuntime
{
    /// <summary>
    /// The oldest library the managed API works with: Microsoft.ML.OnnxRuntime.Managed 1.32 asks the library for the
    /// OrtApi table of version 31 when it starts.
    /// </summary>
    public const int MinimumMinorVersion = 31;

    private const string CudaProviderName = "CUDAExecutionProvider";
    private const string NativeLibraryName = "onnxruntime";
    private static readonly object Gate = new();
    private static OrtRuntime? _shared;
    private static nint _resolvedLibrary;
    private static bool _resolverRegistered;

    private readonly OrtHandle _cpuMemoryInfo;

    /// <summary>The managed API's environment; every managed session belongs to it.</summary>
    internal Ort.OrtEnv Env { get; }

    /// <summary>The C functions the managed API lacks (see <see cref="Native.OrtApi"/>), from the same library.</summary>
    internal OrtApi Native { get; }
    internal nint CpuMemoryInfo => _cpuMemoryInfo.DangerousGetHandle();
    internal nint DefaultAllocator { get; }

    /// <summary>Where the library was loaded from and why that path was chosen.</summary>
    public OrtLibraryLocation Library { get; }

    /// <summary>The library's version string, e.g. "1.32.0".</summary>
    public string Version { get; }

    /// <summary>Execution providers compiled into the library, e.g. CPUExecutionProvider, CUDAExecutionProvider.</summary>
    public IReadOnlyList<string> AvailableProviders { get; }

    /// <summary>True when the library was built with the CUDA execution provider (its CUDA libraries may still be missing).</summary>
    public bool HasCudaProvider => AvailableProviders.Contains(CudaProviderName);

    /// <summary>A notice receiver and whether the one-time fallback notice has reached it.</summary>
    private sealed class NoticeSink(Action<string> write)
    {
        public Action<string> Write { get; } = write;
        public int FallbackShown;
    }

    private readonly NoticeSink _defaultSink = new(message => Console.Error.WriteLine(message));
    private readonly AsyncLocal<NoticeSink?> _sink = new();

    /// <summary>
    /// Receives one-line notices (e.g. the `auto` provider falling back to CPU), each kind at most once per receiver.
    /// Defaults to standard error. Setting it applies to the current logical flow (async-local: the code that runs
    /// after it on this thread and the tasks and threads it starts), so concurrent commands keep their own receivers.
    /// </summary>
    public Action<string> Notify
    {
        get => (_sink.Value ?? _defaultSink).Write;
        set => _sink.Value = new NoticeSink(value ?? throw new ArgumentNullException(nameof(value)));
    }

    private readonly AsyncLocal<IReadOnlyList<string>?> _customOperators = new();

    /// <summary>
    /// Custom operator libraries (an exporter's own operators, e.g. a deployment toolkit's ONNX Runtime ops) that every
    /// session registers. Like <see cref="Notify"/> it applies to the current logical flow, so concurrent commands keep
    /// their own. Empty by default.
    /// </summary>
    public IReadOnlyList<string> CustomOperatorLibraries
    {
        get => _customOperators.Value ?? [];
        set
        {
            var paths = new List<string>();
            foreach (var path in value)
            {
                var full = Path.GetFullPath(path);
                if (!File.Exists(full))
                    throw new RuntimeSetupException($"custom operator library '{path}' does not exist: give the path of the shared library (.so) that registers the model's operators with ONNX Runtime");
                if (!paths.Contains(full))
                    paths.Add(full);
            }
            _customOperators.Value = paths;
        }
    }

    /// <summary>The process-wide runtime; loads the library from the default location on first use.</summary>
    /// <exception cref="RuntimeSetupException">No usable library.</exception>
    public static OrtRuntime Shared
    {
        get
        {
            if (Volatile.Read(ref _shared) is { } existing)
                return existing;
            return Initialize(null);
        }
    }

    /// <summary>
    /// Loads the library from <paramref name="libraryPath"/> (or the default lookup when null) and makes it the
    /// process-wide runtime. Calling it again with the same or no path returns the loaded runtime; a different path
    /// after loading is refused, since a process cannot switch ONNX Runtime libraries.
    /// </summary>
    /// <exception cref="RuntimeSetupException">The library is missing, not loadable or too old.</exception>
    public static OrtRuntime Initialize(string? libraryPath)
    {
        lock (Gate)
        {
            if (_shared is { } loaded)
            {
                if (libraryPath is null)
                    return loaded;
                var wanted = OrtLibraryLocator.Resolve(libraryPath).Path;
                if (wanted == loaded.Library.Path)
                    return loaded;
                throw new RuntimeSetupException(
                    $"ONNX Runtime is already loaded from {loaded.Library.Path}; it cannot be switched to {wanted} in the same process");
            }
            var runtime = new OrtRuntime(OrtLibraryLocator.Resolve(libraryPath));
            Volatile.Write(ref _shared, runtime);
            return runtime;
        }
    }

    private OrtRuntime(OrtLibraryLocation location)
    {
        Library = location;
        var library = LoadLibrary(location);
        Native = ReadApiTable(location, library);
        RouteManagedApiTo(library);
        try
        {
            // Log level ERROR: ORT's warnings (e.g. about unused initializers) are not the user's business.
            var options = new Ort.EnvironmentCreationOptions { logId = "onnxquant", logLevel = Ort.OrtLoggingLevel.ORT_LOGGING_LEVEL_ERROR };
            Env = Ort.OrtEnv.CreateInstanceWithOptions(ref options);
            Version = Env.GetVersionString();
            AvailableProviders = Env.GetAvailableProviders();
        }
        catch (Exception ex) when (ex is TypeInitializationException or Ort.OnnxRuntimeException or EntryPointNotFoundException)
        {
            var reason = ex is TypeInitializationException { InnerException: { } inner } ? inner.Message : ex.Message;
            throw new RuntimeSetupException(
                $"ONNX Runtime's managed API cannot start on {location.Path}: {reason}. {OrtLibraryLocator.SetupHint}", ex);
        }

        nint memoryInfo;
        Check(Native.CreateCpuMemoryInfo(1 /* OrtArenaAllocator */, 0 /* OrtMemTypeDefault */, &memoryInfo), "CreateCpuMemoryInfo");
        _cpuMemoryInfo = new OrtHandle(memoryInfo, Native.ReleaseMemoryInfo);
        nint allocator;
        Check(Native.GetAllocatorWithDefaultOptions(&allocator), "GetAllocatorWithDefaultOptions");
        DefaultAllocator = allocator; // owned by ORT: never released
    }

    private static nint LoadLibrary(OrtLibraryLocation location)
    {
        try
        {
            return NativeLibrary.Load(location.Path);
        }
        catch (Exception ex) when (ex is DllNotFoundException or BadImageFormatException)
        {
            throw new RuntimeSetupException(
                $"cannot load the ONNX Runtime library {location.Path}: {ex.Message}. {OrtLibraryLocator.SetupHint}", ex);
        }
    }

    /// <summary>Checks the version before the managed API does (it fails with a bare type-initializer error).</summary>
    private static OrtApi ReadApiTable(OrtLibraryLocation location, nint library)
    {
        if (!NativeLibrary.TryGetExport(library, "OrtGetApiBase", out var getApiBase))
            throw new RuntimeSetupException(
                $"{location.Path} is not an ONNX Runtime library (it exports no OrtGetApiBase). {OrtLibraryLocator.SetupHint}");
        // OrtApiBase is { const OrtApi* (*GetApi)(uint32_t); const char* (*GetVersionString)(void); }.
        var apiBase = ((delegate* unmanaged<nint**>)getApiBase)();
        var getApi = (delegate* unmanaged<uint, void**>)apiBase[0];
        var version = Utf8.Read(((delegate* unmanaged<byte*>)apiBase[1])()) ?? "unknown";
        var table = MinorVersion(version) >= MinimumMinorVersion ? getApi(MinimumMinorVersion) : null;
        if (table == null)
            throw new RuntimeSetupException(
                $"the ONNX Runtime library {location.Path} is version {version}; OnnxQuant needs 1.{MinimumMinorVersion} or newer. {OrtLibraryLocator.SetupHint}");
        return new OrtApi(table);
    }

    /// <summary>
    /// Makes the managed API's P/Invokes ("onnxruntime") bind to the library loaded here, so an override and the
    /// packaged library go through one path and the managed API and <see cref="Native"/> share one library. Must run
    /// before the managed API's first native call, which is why <see cref="Shared"/> comes first everywhere.
    /// </summary>
    private static void RouteManagedApiTo(nint library)
    {
        _resolvedLibrary = library;
        if (_resolverRegistered)
            return;
        Ort.OrtEnv.DisableDllImportResolver = true; // the package's own resolver would search on its own
        NativeLibrary.SetDllImportResolver(typeof(Ort.OrtEnv).Assembly,
            (name, _, _) => name == NativeLibraryName ? _resolvedLibrary : 0);
        _resolverRegistered = true;
    }

    private static int MinorVersion(string version)
    {
        var parts = version.Split('.');
        return parts.Length >= 2 && parts[0] == "1" && int.TryParse(parts[1], out var minor) ? minor : 0;
    }

    /// <summary>Turns a returned OrtStatus of a <see cref="Native"/> call into an <see cref="OrtException"/>.</summary>
    internal void Check(nint status, string operation) => Native.Check(status, operation);

    /// <summary>Reports a CPU fallback once per receiver, so calibration loops creating many sessions stay quiet.</summary>
    internal void NotifyFallbackOnce(string message)
    {
        var sink = _sink.Value ?? _defaultSink;
        if (Interlocked.Exchange(ref sink.FallbackShown, 1) == 0)
            sink.Write(message);
    }

    internal const string CudaDirections =
        "build OnnxQuant with `-p:OnnxQuantCuda=true` (it then uses the Microsoft.ML.OnnxRuntime.Gpu.Linux package) or point "
        + OrtLibraryLocator.EnvironmentVariable + " or --ort-lib at the runtimes/linux-x64/native folder of that package";

    internal static string CudaMissingMessage(OrtRuntime runtime, string? detail)
    {
        var prefix = $"the ONNX Runtime library {runtime.Library.Path} (version {runtime.Version}) cannot run the CUDA execution provider";
        var folder = Path.GetDirectoryName(runtime.Library.Path) ?? ".";
        if (File.Exists(Path.Combine(folder, "libonnxruntime_providers_cuda.so")))
            // A CUDA build whose provider could not start: what is missing is CUDA itself, not the library.
            return $"{prefix}: {detail ?? "unknown error"}. Install the CUDA and cuDNN libraries this ONNX Runtime build "
                + "was made for (make them findable through LD_LIBRARY_PATH) on a machine with an NVIDIA GPU, or use --ep cpu";
        return prefix
            + (detail is null ? $" (it provides only {string.Join(", ", runtime.AvailableProviders)})" : $": {detail}")
            + $". For CUDA, {CudaDirections}; or use --ep cpu";
    }
}
