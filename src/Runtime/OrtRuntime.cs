using System.Runtime.InteropServices;
using OnnxQuant.Runtime.Native;

namespace OnnxQuant.Runtime;

/// <summary>
/// The loaded ONNX Runtime library and its one environment. ONNX Runtime allows one environment per process and a
/// library cannot be unloaded safely, so there is one process-wide instance, created on first use from the default
/// location (<see cref="OrtLibraryLocator"/>) or earlier through <see cref="Initialize"/>.
/// </summary>
public sealed unsafe class OrtRuntime
{
    /// <summary>The API version this binding programs against; older libraries are asked for their own version.</summary>
    public const int TargetApiVersion = 30;

    /// <summary>The oldest library whose table has every slot the binding reads (CUDA V2 options arrived in 1.11).</summary>
    public const int MinimumApiVersion = 16;

    private const string CudaProviderName = "CUDAExecutionProvider";
    private static readonly object Gate = new();
    private static OrtRuntime? _shared;

    private readonly OrtHandle _env;
    private readonly OrtHandle _cpuMemoryInfo;
    private int _fallbackNoticeShown;

    internal OrtApi Api { get; }
    internal nint Env => _env.DangerousGetHandle();
    internal nint CpuMemoryInfo => _cpuMemoryInfo.DangerousGetHandle();
    internal nint DefaultAllocator { get; }

    /// <summary>Where the library was loaded from and why that path was chosen.</summary>
    public OrtLibraryLocation Library { get; }

    /// <summary>The library's version string, e.g. "1.30.0".</summary>
    public string Version { get; }

    /// <summary>Execution providers compiled into the library, e.g. CPUExecutionProvider, CUDAExecutionProvider.</summary>
    public IReadOnlyList<string> AvailableProviders { get; }

    /// <summary>True when the library was built with the CUDA execution provider (its CUDA libraries may still be missing).</summary>
    public bool HasCudaProvider => AvailableProviders.Contains(CudaProviderName);

    private Action<string> _notify = message => Console.Error.WriteLine(message);

    /// <summary>
    /// Receives one-line notices (e.g. the `auto` provider falling back to CPU), each kind at most once per receiver.
    /// Defaults to standard error; the CLI points it at its own error writer.
    /// </summary>
    public Action<string> Notify
    {
        get => _notify;
        set
        {
            _notify = value ?? throw new ArgumentNullException(nameof(value));
            Interlocked.Exchange(ref _fallbackNoticeShown, 0);
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
        nint library;
        try
        {
            library = NativeLibrary.Load(location.Path);
        }
        catch (Exception ex) when (ex is DllNotFoundException or BadImageFormatException)
        {
            throw new RuntimeSetupException(
                $"cannot load the ONNX Runtime library {location.Path}: {ex.Message}. {OrtLibraryLocator.SetupHint}", ex);
        }
        if (!NativeLibrary.TryGetExport(library, "OrtGetApiBase", out var getApiBase))
            throw new RuntimeSetupException(
                $"{location.Path} is not an ONNX Runtime library (it exports no OrtGetApiBase). {OrtLibraryLocator.SetupHint}");

        // OrtApiBase is { const OrtApi* (*GetApi)(uint32_t); const char* (*GetVersionString)(void); }.
        var apiBase = ((delegate* unmanaged<nint**>)getApiBase)();
        var getApi = (delegate* unmanaged<uint, void**>)apiBase[0];
        var getVersion = (delegate* unmanaged<byte*>)apiBase[1];
        Version = Utf8.Read(getVersion()) ?? "unknown";
        var apiVersion = Math.Min(TargetApiVersion, MinorVersion(Version));
        var table = apiVersion >= MinimumApiVersion ? getApi((uint)apiVersion) : null;
        if (table == null)
            throw new RuntimeSetupException(
                $"the ONNX Runtime library {location.Path} is version {Version}; OnnxQuant needs 1.{MinimumApiVersion} or newer. {OrtLibraryLocator.SetupHint}");
        Api = new OrtApi(table);

        nint env;
        fixed (byte* logId = "onnxquant"u8)
            // Log level ERROR: ORT's warnings (e.g. about unused initializers) are not the user's business.
            Api.Check(Api.CreateEnv(3, logId, &env), "CreateEnv");
        _env = new OrtHandle(env, Api.ReleaseEnv);

        nint memoryInfo;
        Api.Check(Api.CreateCpuMemoryInfo(1 /* OrtArenaAllocator */, 0 /* OrtMemTypeDefault */, &memoryInfo), "CreateCpuMemoryInfo");
        _cpuMemoryInfo = new OrtHandle(memoryInfo, Api.ReleaseMemoryInfo);

        nint allocator;
        Api.Check(Api.GetAllocatorWithDefaultOptions(&allocator), "GetAllocatorWithDefaultOptions");
        DefaultAllocator = allocator; // owned by ORT: never released

        byte** names;
        int count;
        Api.Check(Api.GetAvailableProviders(&names, &count), "GetAvailableProviders");
        var providers = new string[count];
        for (var i = 0; i < count; i++)
            providers[i] = Utf8.Read(names[i]) ?? "";
        Api.Check(Api.ReleaseAvailableProviders(names, count), "ReleaseAvailableProviders");
        AvailableProviders = providers;
    }

    private static int MinorVersion(string version)
    {
        var parts = version.Split('.');
        return parts.Length >= 2 && parts[0] == "1" && int.TryParse(parts[1], out var minor) ? minor : TargetApiVersion;
    }

    /// <summary>Reports a CPU fallback once per receiver, so calibration loops creating many sessions stay quiet.</summary>
    internal void NotifyFallbackOnce(string message)
    {
        if (Interlocked.Exchange(ref _fallbackNoticeShown, 1) == 0)
            Notify(message);
    }

    internal static string CudaMissingMessage(OrtRuntime runtime, string? detail) =>
        $"the ONNX Runtime library {runtime.Library.Path} (version {runtime.Version}) cannot run the CUDA execution provider"
        + (detail is null ? $" (it provides only {string.Join(", ", runtime.AvailableProviders)})" : $": {detail}")
        + ". Point ONNXQUANT_ORT_LIB or --ort-lib at a CUDA-enabled libonnxruntime.so, e.g. the runtimes/linux-x64/native "
        + "folder of the Microsoft.ML.OnnxRuntime.Gpu package (with CUDA 12 and cuDNN 9 installed), or use --ep cpu";
}
