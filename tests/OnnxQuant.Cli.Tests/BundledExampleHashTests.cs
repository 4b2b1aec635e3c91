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
            Assert.Equal("faa8167c6bb48ec59d58afd016e53f883b541d3670ba5600a6cc0b586be10448", Sha(Path.Combine(output, "bits-8", "model.onnx")));
            Assert.Equal("8bd6b1e4a4d719924974de922a6dabc3bba22241cd16360d39c418eea7a02c57", Sha(Path.Combine(output, "bits-4", "model.onnx")));
            Assert.Equal("8be81cd9c65da1ae88291f8b83d4791a8dca38053e2b271abe164335462691b5", Sha(Path.Combine(output, "bits-3", "model.onnx")));
            Assert.Equal("d117be3954db4aeeb19b670704d03725e6cad14056471b6cbf39da45dc0cdaca", Sha(Path.Combine(output, "manifest.json")));
        }
        finally
        {
            if (Directory.Exists(output))
                Directory.Delete(output, true);
        }
    }
}
