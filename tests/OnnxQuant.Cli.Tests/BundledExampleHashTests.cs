using System.Security.Cryptography;

namespace OnnxQuant.Cli.Tests;

/// <summary>
/// The bundled example compiles to pinned bytes. The curves are pinned (the small DETR's exact curves, committed) and
/// activations stay float, so the only measured numbers that enter the output are the input statistics of the default
/// compensation (second-order rounding, bias correction), which keep 6 significant digits like every measured number
/// that drives a decision. The hashes were updated when compensation became the default (`--compensation all`) and when
/// the manifest gained keep_initializer_inputs; the tie rule gives two units whose curves are pure kernel noise 8 bits.
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
            Assert.Equal("97d373fc205617fa3f0d2f0f63f4b2f6976e4e67b6699572daaa0fcd015fb1be", Sha(Path.Combine(output, "bits-8", "model.onnx")));
            Assert.Equal("da2d1c7db8a0f00d45f9071614a5b49d2572749ec7061b38d3c72448204f1753", Sha(Path.Combine(output, "bits-4", "model.onnx")));
            Assert.Equal("9942afacf9803f7f46a5f42f4d234a138fb60649ae1639a5579bc7b442ff6da2", Sha(Path.Combine(output, "bits-3", "model.onnx")));
            Assert.Equal("8a7c22c3fdda2d053feae273f5b8a619186f6c5c334ca39a714f4767fe3a870a", Sha(Path.Combine(output, "manifest.json")));
        }
        finally
        {
            if (Directory.Exists(output))
                Directory.Delete(output, true);
        }
    }
}
