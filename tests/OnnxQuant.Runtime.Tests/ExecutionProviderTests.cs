namespace OnnxQuant.Runtime.Tests;

/// <summary>
/// The bundled CPU-only library: `cuda` must fail with directions, `auto` must fall back with one notice. With a
/// CUDA-enabled library (ONNXQUANT_ORT_LIB) the same tests check that CUDA is actually used.
/// </summary>
public class ExecutionProviderTests
{
    /// <summary>True when the loaded library can load its CUDA provider (its provider libraries sit beside it).</summary>
    private static bool LibraryShipsCudaProvider(OrtRuntime runtime) =>
        File.Exists(Path.Combine(Path.GetDirectoryName(runtime.Library.Path)!, "libonnxruntime_providers_cuda.so"));

    [Fact]
    public void CudaFailsWithDirectionsWhenTheLibraryLacksIt()
    {
        var runtime = OrtRuntime.Shared;
        var options = NodeModels.Options with { Provider = ExecutionProvider.Cuda };
        if (LibraryShipsCudaProvider(runtime))
        {
            // A CUDA build: it runs on CUDA, or says why not (no driver, no GPU) with the same directions.
            try
            {
                using var session = InferenceSession.Create(NodeModels.Path("test_add"), options);
                Assert.Equal(ExecutionProvider.Cuda, session.ActiveProvider);
            }
            catch (Exception ex) when (ex is RuntimeSetupException or OrtException)
            {
                Assert.Contains("CUDA", ex.Message, StringComparison.OrdinalIgnoreCase);
            }
            return;
        }
        var error = Assert.Throws<RuntimeSetupException>(() => InferenceSession.Create(NodeModels.Path("test_add"), options));
        Assert.Contains("cannot run the CUDA execution provider", error.Message);
        Assert.Contains("ONNXQUANT_ORT_LIB", error.Message);
        Assert.Contains("Microsoft.ML.OnnxRuntime.Gpu", error.Message);
        Assert.Contains(runtime.Library.Path, error.Message);
        Assert.DoesNotContain("[ONNXRuntimeError]", error.Message);
    }

    [Fact]
    public void AutoFallsBackToCpuWithANotice()
    {
        var runtime = OrtRuntime.Shared;
        var notices = new List<string>();
        runtime.Notify = notices.Add;
        try
        {
            using var session = InferenceSession.Create(NodeModels.Path("test_add"), NodeModels.Options with { Provider = ExecutionProvider.Auto });
            if (session.ActiveProvider == ExecutionProvider.Cuda)
            {
                Assert.Null(session.ProviderNotice);
                return;
            }
            Assert.Equal(ExecutionProvider.Cpu, session.ActiveProvider);
            Assert.NotNull(session.ProviderNotice);
            Assert.StartsWith("notice: --ep auto runs on CPU: CUDA is not available (", session.ProviderNotice);
            Assert.Contains("ONNXQUANT_ORT_LIB", session.ProviderNotice);
            Assert.DoesNotContain('\n', session.ProviderNotice);
            Assert.DoesNotContain("[ONNXRuntimeError]", session.ProviderNotice);
            var x = TensorData.FromFloats(Enumerable.Repeat(1f, 60).ToArray(), [3, 4, 5]);
            Assert.All(session.Run([new("x", x), new("y", x)])[0].Data.GetArray<float>(), v => Assert.Equal(2f, v));

            // One notice per receiver, however many sessions fall back.
            using var second = InferenceSession.Create(NodeModels.Path("test_add"), NodeModels.Options with { Provider = ExecutionProvider.Auto });
            Assert.Equal([session.ProviderNotice], notices);
        }
        finally
        {
            runtime.Notify = line => Console.Error.WriteLine(line);
        }
    }

    [Theory]
    [InlineData("cpu", ExecutionProvider.Cpu)]
    [InlineData("CUDA", ExecutionProvider.Cuda)]
    [InlineData(" auto ", ExecutionProvider.Auto)]
    public void ParsesProviderNames(string name, ExecutionProvider expected) =>
        Assert.Equal(expected, SessionOptions.ParseProvider(name));

    [Fact]
    public void RejectsUnknownProviderNames() =>
        Assert.Contains("cpu, cuda or auto", Assert.Throws<ArgumentException>(() => SessionOptions.ParseProvider("tpu")).Message);
}
