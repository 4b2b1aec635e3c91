using System.Reflection;
using System.Runtime.InteropServices;

namespace OnnxQuant.Runtime;

/// <summary>Where the ONNX Runtime library was found.</summary>
public enum OrtLibrarySource
{
    /// <summary>Given explicitly (the CLI's --ort-lib or <see cref="OrtRuntime.Initialize"/>).</summary>
    Explicit,
    /// <summary>The ONNXQUANT_ORT_LIB environment variable.</summary>
    EnvironmentVariable,
    /// <summary>The native asset of the official NuGet package, deployed beside the application.</summary>
    Package,
}

/// <summary>A resolved library path and how it was chosen.</summary>
public sealed record OrtLibraryLocation(string Path, OrtLibrarySource Source);

/// <summary>
/// Finds libonnxruntime: an explicit path first, then $ONNXQUANT_ORT_LIB (both overrides for a custom build), then the
/// native asset of the Microsoft.ML.OnnxRuntime package (or .Gpu.Linux in a CUDA build) that NuGet deployed beside the
/// application: flat in a RID-specific deployment such as the tool package, under runtimes/RID/native otherwise.
/// </summary>
public static class OrtLibraryLocator
{
    public const string EnvironmentVariable = "ONNXQUANT_ORT_LIB";

    /// <summary>The file name of the native library on Linux, as the official packages ship it.</summary>
    public const string LibraryFileName = "libonnxruntime.so";

    /// <summary>The ONNX Runtime version of the packages this build references (OnnxRuntimeVersion in Directory.Build.props).</summary>
    public static string PackagedVersion { get; } = typeof(OrtLibraryLocator).Assembly
        .GetCustomAttributes<AssemblyMetadataAttribute>().FirstOrDefault(a => a.Key == "OnnxRuntimeVersion")?.Value ?? "unknown";

    public static string SetupHint =>
        $"OnnxQuant ships ONNX Runtime {PackagedVersion} in its package: reinstall the tool or rebuild the repository "
        + $"(`dotnet build`), or point --ort-lib or {EnvironmentVariable} at a libonnxruntime.so of ONNX Runtime 1.31 or newer "
        + "(for CUDA: the runtimes/linux-x64/native folder of the Microsoft.ML.OnnxRuntime.Gpu.Linux package)";

    /// <summary>
    /// Resolves the library to load. A path given explicitly or through the environment must exist (a typo should not
    /// silently fall through to another library); otherwise the packaged library beside the application.
    /// </summary>
    /// <exception cref="RuntimeSetupException">No usable path; the message says how to get one.</exception>
    public static OrtLibraryLocation Resolve(string? explicitPath, Func<string, string?>? getEnv = null, string? applicationFolder = null)
    {
        getEnv ??= Environment.GetEnvironmentVariable;
        if (!string.IsNullOrWhiteSpace(explicitPath))
            return new OrtLibraryLocation(RequireFile(explicitPath, "--ort-lib"), OrtLibrarySource.Explicit);
        var fromEnv = getEnv(EnvironmentVariable);
        if (!string.IsNullOrWhiteSpace(fromEnv))
            return new OrtLibraryLocation(RequireFile(fromEnv, EnvironmentVariable), OrtLibrarySource.EnvironmentVariable);
        var candidates = PackagedCandidates(applicationFolder ?? AppContext.BaseDirectory);
        foreach (var candidate in candidates)
            if (File.Exists(candidate))
                return new OrtLibraryLocation(Path.GetFullPath(candidate), OrtLibrarySource.Package);
        throw new RuntimeSetupException(
            $"ONNX Runtime library not found: --ort-lib and {EnvironmentVariable} are not set and the packaged library is missing "
            + $"({string.Join(", ", candidates)}). {SetupHint}");
    }

    /// <summary>Where NuGet's native asset lands: flat for a RID-specific deployment, under runtimes/RID/native for a portable one.</summary>
    internal static IReadOnlyList<string> PackagedCandidates(string applicationFolder)
    {
        var arch = RuntimeInformation.ProcessArchitecture.ToString().ToLowerInvariant();
        return new[] { RuntimeInformation.RuntimeIdentifier, $"linux-{arch}" }.Distinct()
            .Select(rid => Path.Combine(applicationFolder, "runtimes", rid, "native", LibraryFileName))
            .Prepend(Path.Combine(applicationFolder, LibraryFileName))
            .ToList();
    }

    private static string RequireFile(string path, string origin)
    {
        // A folder is accepted when it holds the library, as NuGet's native folders do.
        if (Directory.Exists(path))
        {
            foreach (var name in new[] { LibraryFileName, LibraryFileName + ".1" })
            {
                var candidate = Path.Combine(path, name);
                if (File.Exists(candidate))
                    return Path.GetFullPath(candidate);
            }
            throw new RuntimeSetupException($"ONNX Runtime library not found: the folder {path} (from {origin}) holds no {LibraryFileName}. {SetupHint}");
        }
        if (!File.Exists(path))
            throw new RuntimeSetupException($"ONNX Runtime library not found: {path} (from {origin}) does not exist. {SetupHint}");
        return Path.GetFullPath(path);
    }
}
