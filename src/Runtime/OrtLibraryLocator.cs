namespace OnnxQuant.Runtime;

/// <summary>Where the ONNX Runtime library was found.</summary>
public enum OrtLibrarySource
{
    /// <summary>Given explicitly (the CLI's --ort-lib or <see cref="OrtRuntime.Initialize"/>).</summary>
    Explicit,
    /// <summary>The ONNXQUANT_ORT_LIB environment variable.</summary>
    EnvironmentVariable,
    /// <summary>The cache folder the build's setup-ort task fills.</summary>
    Cache,
}

/// <summary>A resolved library path and how it was chosen.</summary>
public sealed record OrtLibraryLocation(string Path, OrtLibrarySource Source);

/// <summary>
/// Finds libonnxruntime: an explicit path first, then $ONNXQUANT_ORT_LIB, then the cache folder
/// ($XDG_CACHE_HOME or ~/.cache)/onnxquant/ort/1.30.0/libonnxruntime.so.1 that `dotnet cake --target=setup-ort` fills.
/// </summary>
public static class OrtLibraryLocator
{
    public const string EnvironmentVariable = "ONNXQUANT_ORT_LIB";
    public const string BundledVersion = "1.30.0";
    public const string SetupHint =
        "Run `dotnet tool restore && dotnet cake --target=setup-ort` in the OnnxQuant repository to fetch ONNX Runtime "
        + BundledVersion + " into the cache, or point --ort-lib or " + EnvironmentVariable
        + " at a libonnxruntime.so (for CUDA: the runtimes/linux-x64/native folder of the Microsoft.ML.OnnxRuntime.Gpu package)";

    /// <summary>The cache file the setup task writes, whether or not it exists.</summary>
    public static string CachePath(Func<string, string?>? getEnv = null)
    {
        getEnv ??= Environment.GetEnvironmentVariable;
        var cacheHome = getEnv("XDG_CACHE_HOME");
        if (string.IsNullOrEmpty(cacheHome))
            cacheHome = Path.Combine(getEnv("HOME") ?? Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache");
        return Path.Combine(cacheHome, "onnxquant", "ort", BundledVersion, "libonnxruntime.so.1");
    }

    /// <summary>
    /// Resolves the library to load. A path given explicitly or through the environment must exist (a typo should not
    /// silently fall through to another library); the cache is the last resort.
    /// </summary>
    /// <exception cref="RuntimeSetupException">No usable path; the message says how to get one.</exception>
    public static OrtLibraryLocation Resolve(string? explicitPath, Func<string, string?>? getEnv = null)
    {
        getEnv ??= Environment.GetEnvironmentVariable;
        if (!string.IsNullOrWhiteSpace(explicitPath))
            return new OrtLibraryLocation(RequireFile(explicitPath, "--ort-lib"), OrtLibrarySource.Explicit);
        var fromEnv = getEnv(EnvironmentVariable);
        if (!string.IsNullOrWhiteSpace(fromEnv))
            return new OrtLibraryLocation(RequireFile(fromEnv, EnvironmentVariable), OrtLibrarySource.EnvironmentVariable);
        var cached = CachePath(getEnv);
        if (File.Exists(cached))
            return new OrtLibraryLocation(cached, OrtLibrarySource.Cache);
        throw new RuntimeSetupException(
            $"ONNX Runtime library not found: --ort-lib and {EnvironmentVariable} are not set and {cached} does not exist. {SetupHint}");
    }

    private static string RequireFile(string path, string origin)
    {
        // A folder is accepted when it holds the library, as NuGet's native folders do.
        if (Directory.Exists(path))
        {
            foreach (var name in new[] { "libonnxruntime.so", "libonnxruntime.so.1" })
            {
                var candidate = Path.Combine(path, name);
                if (File.Exists(candidate))
                    return Path.GetFullPath(candidate);
            }
            throw new RuntimeSetupException($"ONNX Runtime library not found: the folder {path} (from {origin}) holds no libonnxruntime.so. {SetupHint}");
        }
        if (!File.Exists(path))
            throw new RuntimeSetupException($"ONNX Runtime library not found: {path} (from {origin}) does not exist. {SetupHint}");
        return Path.GetFullPath(path);
    }
}
