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
    public void UsesTheEnvironmentVariableThenThePackagedLibrary()
    {
        var envLib = Path.Combine(_dir, "env.so");
        File.WriteAllText(envLib, "");
        Assert.Equal(OrtLibrarySource.EnvironmentVariable,
            OrtLibraryLocator.Resolve(null, Env((OrtLibraryLocator.EnvironmentVariable, envLib)), _dir).Source);

        // A portable deployment keeps NuGet's runtimes/RID/native layout; a RID-specific one (the tool) is flat.
        var portable = Path.Combine(_dir, "runtimes", "linux-x64", "native", "libonnxruntime.so");
        Directory.CreateDirectory(Path.GetDirectoryName(portable)!);
        File.WriteAllText(portable, "");
        Assert.Equal(new OrtLibraryLocation(portable, OrtLibrarySource.Package), OrtLibraryLocator.Resolve(null, Env(), _dir));
        var flat = Path.Combine(_dir, "libonnxruntime.so");
        File.WriteAllText(flat, "");
        Assert.Equal(new OrtLibraryLocation(flat, OrtLibrarySource.Package), OrtLibraryLocator.Resolve(null, Env(), _dir));
    }

    [Fact]
    public void TheTestsRunOnThePackagedLibraryOfThePinnedVersion()
    {
        // No override in CI: the library is the official package's native asset that NuGet copied to the output.
        var runtime = OrtRuntime.Shared;
        if (runtime.Library.Source != OrtLibrarySource.Package)
            return; // a developer pointed ONNXQUANT_ORT_LIB at another build on purpose
        Assert.Equal(OrtLibraryLocator.PackagedVersion, runtime.Version);
        Assert.StartsWith(AppContext.BaseDirectory, runtime.Library.Path);
        Assert.Equal("libonnxruntime.so", Path.GetFileName(runtime.Library.Path));
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
        var ex = Assert.Throws<RuntimeSetupException>(() => OrtLibraryLocator.Resolve(null, Env(), _dir));
        Assert.Contains("ONNX Runtime library not found", ex.Message);
        Assert.Contains($"ONNX Runtime {OrtLibraryLocator.PackagedVersion}", ex.Message);
        Assert.Contains("ONNXQUANT_ORT_LIB", ex.Message);
        Assert.Contains(Path.Combine(_dir, "libonnxruntime.so"), ex.Message);
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
