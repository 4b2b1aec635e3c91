namespace OnnxQuant.Runtime.Tests;

public sealed class OrtLibraryLocatorTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("onnxquant-locator-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static Func<string, string?> Env(params (string Key, string Value)[] vars) =>
        key => vars.FirstOrDefault(v => v.Key == key).Value;

    [Fact]
    public void PrefersTheExplicitPath()
    {
        var explicitLib = Path.Combine(_dir, "explicit.so");
        var envLib = Path.Combine(_dir, "env.so");
        File.WriteAllText(explicitLib, "");
        File.WriteAllText(envLib, "");
        var location = OrtLibraryLocator.Resolve(explicitLib, Env((OrtLibraryLocator.EnvironmentVariable, envLib), ("HOME", _dir)));
        Assert.Equal(new OrtLibraryLocation(explicitLib, OrtLibrarySource.Explicit), location);
    }

    [Fact]
    public void UsesTheEnvironmentVariableThenTheCache()
    {
        var envLib = Path.Combine(_dir, "env.so");
        File.WriteAllText(envLib, "");
        Assert.Equal(OrtLibrarySource.EnvironmentVariable,
            OrtLibraryLocator.Resolve(null, Env((OrtLibraryLocator.EnvironmentVariable, envLib), ("HOME", _dir))).Source);

        var cached = Path.Combine(_dir, "xdg", "onnxquant", "ort", "1.30.0", "libonnxruntime.so.1");
        Directory.CreateDirectory(Path.GetDirectoryName(cached)!);
        File.WriteAllText(cached, "");
        var location = OrtLibraryLocator.Resolve(null, Env(("XDG_CACHE_HOME", Path.Combine(_dir, "xdg")), ("HOME", "/nowhere")));
        Assert.Equal(new OrtLibraryLocation(cached, OrtLibrarySource.Cache), location);
        Assert.Equal(Path.Combine(_dir, ".cache", "onnxquant", "ort", "1.30.0", "libonnxruntime.so.1"),
            OrtLibraryLocator.CachePath(Env(("HOME", _dir))));
    }

    [Fact]
    public void AcceptsAFolderHoldingTheLibrary()
    {
        var lib = Path.Combine(_dir, "libonnxruntime.so");
        File.WriteAllText(lib, "");
        Assert.Equal(lib, OrtLibraryLocator.Resolve(_dir, Env()).Path);
    }

    [Fact]
    public void SaysHowToGetALibraryWhenNoneIsFound()
    {
        var ex = Assert.Throws<RuntimeSetupException>(() => OrtLibraryLocator.Resolve(null, Env(("HOME", _dir))));
        Assert.Contains("ONNX Runtime library not found", ex.Message);
        Assert.Contains("dotnet cake --target=setup-ort", ex.Message);
        Assert.Contains("ONNXQUANT_ORT_LIB", ex.Message);
        Assert.Contains(Path.Combine(_dir, ".cache"), ex.Message);
    }

    [Fact]
    public void AMissingExplicitPathDoesNotFallThrough()
    {
        var missing = Path.Combine(_dir, "missing.so");
        var ex = Assert.Throws<RuntimeSetupException>(() => OrtLibraryLocator.Resolve(missing, Env()));
        Assert.Contains(missing, ex.Message);
        Assert.Contains("--ort-lib", ex.Message);
        var fromEnv = Assert.Throws<RuntimeSetupException>(() => OrtLibraryLocator.Resolve(null, Env((OrtLibraryLocator.EnvironmentVariable, missing))));
        Assert.Contains(OrtLibraryLocator.EnvironmentVariable, fromEnv.Message);
    }

    [Fact]
    public void RefusesToSwitchLibrariesOnceLoaded()
    {
        var loaded = OrtRuntime.Shared;
        Assert.Same(loaded, OrtRuntime.Initialize(null));
        Assert.Same(loaded, OrtRuntime.Initialize(loaded.Library.Path));
        var other = Path.Combine(_dir, "other.so");
        File.WriteAllText(other, "");
        var ex = Assert.Throws<RuntimeSetupException>(() => OrtRuntime.Initialize(other));
        Assert.Contains("already loaded", ex.Message);
    }
}
