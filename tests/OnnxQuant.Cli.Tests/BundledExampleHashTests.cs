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
/// All four moved when the small DETR was retrained (new weights, new pinned curves), and again when second-order
/// rounding took the columns by decreasing input energy (act-order: other integers; the manifest holds the models'
/// hashes); the bytes were the same over two runs and with --threads 1. The 4- and 3-bit models and the manifest moved
/// when the metric's denominator became each feature's variation (the pinned curves measured again under it; the
/// 8-bit model, every unit at 8 bits, kept its bytes). All four moved when the reference-point MLP, one weight applied
/// by each of the three decoder layers, stopped being skipped as shared (six more quantized nodes, 71 pinned curves;
/// the same bytes with --threads 1); the manifest moved again when the pinned curves gained `tied_to` (the file's
/// hash is in it; the models kept their bytes). All four moved when the input statistics of layers with fewer rows
/// than inputs (the backbone's widest convolutions) had their covariance shrunk toward its diagonal (the same bytes with
/// --threads 1 and 2). All four moved when values computed from constants alone left the artifacts: the first decoder
/// layer's value projection of its zero target is folded before anything is measured, and what the reference-point
/// MLP's first call (over the learned queries) and the layers after it compute is stored computed (the same units and
/// curves; the same bytes with --threads 1 and 2).
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
            Assert.Equal("97172a2ab08af179f7fff2a5c4a6fc20314ac9db6c82cc5f9920616e5d3662ec", Sha(Path.Combine(output, "bits-8", "model.onnx")));
            Assert.Equal("4085976aeb780cb38aa1af597aa232c8b6d080e58ded496670e9b4d450e000b5", Sha(Path.Combine(output, "bits-4", "model.onnx")));
            Assert.Equal("9aac17ecea92d6b8ffb6172c3cd60446107c7916a10f3a542350eb2d229f3dac", Sha(Path.Combine(output, "bits-3", "model.onnx")));
            Assert.Equal("ff54cfda0ca82c469efa60de628c83699af1a8da8fa3dc4871324168ad248289", Sha(Path.Combine(output, "manifest.json")));
        }
        finally
        {
            if (Directory.Exists(output))
                Directory.Delete(output, true);
        }
    }
}
