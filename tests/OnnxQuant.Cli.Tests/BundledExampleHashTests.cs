using System.Security.Cryptography;

namespace OnnxQuant.Cli.Tests;

/// <summary>
/// The bundled example compiles to pinned bytes. The curves are pinned (the small DETR's exact curves, committed) and
/// activations stay float, so the only measured numbers that enter the output are the input statistics of the default
/// compensation (second-order rounding, bias correction), which keep 6 significant digits like every measured number
/// that drives a decision. The hashes were updated when compensation became the default (`--compensation all`) and when
/// the manifest gained keep_initializer_inputs, and again when the second-order rounding's factor moved from MathNet's
/// inverse-then-factor to one blocked factorization (same quantity, other last bits) and calibration to optimized
/// sessions (other input rows in the 7th digit); the tie rule gives two units whose curves are pure kernel noise 8 bits.
/// </summary>
public class BundledExampleHashTests
{
    private static string RepoFile(string relative)
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "OnnxQuant.sln")))
                return Path.Combine(dir.FullName, relative);
        throw new InvalidOperationException($"OnnxQuant.sln not found above {AppContext.BaseDirectory}");
    }

    private static string Sha(string path) => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(path))).ToLowerInvariant();

    [Fact]
    public void PinnedCurvesGiveThePinnedArtifactBytes()
    {
        var output = Path.Combine(Path.GetTempPath(), "onnxquant-pinned-" + Guid.NewGuid().ToString("N"));
        try
        {
            var (code, _, stderr) = CliRunner.Run("compile", RepoFile("models/fixtures/detr_small.onnx"),
                "--calib", RepoFile("models/data/calib.npz"), "--verify-data", RepoFile("models/data/eval.npz"), "--verify-samples", "2",
                "--target-bits", "8,4,3", "--act-bits", "0", "--curves", "exact", "--curves-file", RepoFile("tests/OnnxQuant.Solvers.Tests/data/detr_small.curves.json"),
                "-o", output, "--quiet");
            Assert.True(code == 0, stderr);
            Assert.Equal("94aed8d08d72a80d8172ffdcd6a1d0c85db80484cc59e9e59939f51b59d9e03b", Sha(Path.Combine(output, "bits-8", "model.onnx")));
            Assert.Equal("0dd775955189fc526614c0fdec33e3d106cb22ff40dce52ae0e0f225c30f4af8", Sha(Path.Combine(output, "bits-4", "model.onnx")));
            Assert.Equal("2fbeee61853aa2d05938fbc6f5b33b08d5ede50009e1512617aa7b7618e5bf57", Sha(Path.Combine(output, "bits-3", "model.onnx")));
            Assert.Equal("d456c998e49a7a7786a96b66aa4672707e450430d33a94a578c45956329d5460", Sha(Path.Combine(output, "manifest.json")));
        }
        finally
        {
            if (Directory.Exists(output))
                Directory.Delete(output, true);
        }
    }
}
