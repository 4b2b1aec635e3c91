using System.Security.Cryptography;

namespace OnnxQuant.Cli.Tests;

/// <summary>
/// The bundled example compiles to pinned bytes. The curves are pinned (the small DETR's exact curves, committed) and
/// activations stay float, so the only measured numbers that enter the output are the input statistics of the default
/// compensation (second-order rounding, bias correction), which keep 6 significant digits like every measured number
/// that drives a decision. The hashes were updated when compensation became the default (`--compensation all`) and when
/// the manifest gained keep_initializer_inputs, and again when the second-order rounding's factor moved from MathNet's
/// inverse-then-factor to one blocked factorization (same quantity, other last bits) with the column updates in single
/// precision, and calibration to optimized
/// sessions (other input rows in the 7th digit), and when second-order rounding moved to the factor of S itself with
/// blocked (lazy) updates (same quantity, other last bits: a few weights on a rounding boundary land on the other side); the tie rule gives two units whose curves are pure kernel noise 8 bits. The manifest's hash moved when it gained
/// the activation scaling options (the DETR's post-norm LayerNorms feed residual streams, so its models are unscaled).
/// All four moved when the small DETR was retrained (new weights, new pinned curves); the bytes were the same over
/// two runs and with --threads 1.
/// </summary>
public class BundledExampleHashTests
{
    private static string Sha(string path) => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(path))).ToLowerInvariant();

    [Fact]
    public void PinnedCurvesGiveThePinnedArtifactBytes()
    {
        var output = Path.Combine(Path.GetTempPath(), "onnxquant-pinned-" + Guid.NewGuid().ToString("N"));
        try
        {
            var (code, _, stderr) = CliRunner.Run("compile", RepoPaths.File("models/fixtures/detr_small.onnx"),
                "--calib", RepoPaths.File("models/data/calib.npz"), "--verify-data", RepoPaths.File("models/data/eval.npz"), "--verify-samples", "2",
                "--target-bits", "8,4,3", "--act-bits", "0", "--curves", "exact", "--curves-file", RepoPaths.File("tests/OnnxQuant.Solvers.Tests/data/detr_small.curves.json"),
                "-o", output, "--quiet");
            Assert.True(code == 0, stderr);
            Assert.Equal("e0af36ac985953ca2c5aa5f71736997324a15194c0b1592cb37ccaddd557e568", Sha(Path.Combine(output, "bits-8", "model.onnx")));
            Assert.Equal("0b7f5782252d267d97e1419ccca2c19aba21c015b660ba92a1fcfe74e1581c9f", Sha(Path.Combine(output, "bits-4", "model.onnx")));
            Assert.Equal("4d545362a3f14f5dfe108a200292a3f7567ebaecce6a46b71a3c624b1786ded8", Sha(Path.Combine(output, "bits-3", "model.onnx")));
            Assert.Equal("0afb1d2dad70a1c7ab90db667555f55b3ee60a93c3a26f7a64034e1323312589", Sha(Path.Combine(output, "manifest.json")));
        }
        finally
        {
            if (Directory.Exists(output))
                Directory.Delete(output, true);
        }
    }
}
