namespace OnnxQuant.Runtime.Tests;

/// <summary>Models of the ONNX backend test suite (Debian's libonnx-testdata) that the tests run directly.</summary>
internal static class NodeModels
{
    public const string Root = "/usr/share/libonnx-testdata/data/node";

    public static string Path(string test)
    {
        var path = System.IO.Path.Combine(Root, test, "model.onnx");
        Assert.True(File.Exists(path), $"{path} is missing: install the Debian package libonnx-testdata (dotnet cake --target=setup)");
        return path;
    }

    /// <summary>Single-threaded CPU session options, so tests are deterministic and share the machine's cores.</summary>
    public static SessionOptions Options { get; } = new() { IntraOpThreads = 1 };
}
