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
/// blocked (lazy) updates (same quantity, other last bits: a few weights on a rounding boundary land on the other side), and when the input rows
/// came from 16 evenly spaced samples instead of all 64 (other rows, so other compensation statistics); the tie rule gives two units whose curves are pure kernel noise 8 bits.
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
            Assert.Equal("c08e548e65251f7ce1578135a739fa03f20288b1e7fe5a9fa49d7849682a978b", Sha(Path.Combine(output, "bits-8", "model.onnx")));
            Assert.Equal("aa9f5cd1377f9dbeda300d0004524b011c3547f75af3c94e0260eac737ee184e", Sha(Path.Combine(output, "bits-4", "model.onnx")));
            Assert.Equal("50a8b53f2bda2894e46c07db787625502c34ed56903fc28893658e3f4c6cc7b2", Sha(Path.Combine(output, "bits-3", "model.onnx")));
            Assert.Equal("77904f65d813f0291f61b08ed30bb58a8c0a85fb41eedcd7d09066b08057463f", Sha(Path.Combine(output, "manifest.json")));
        }
        finally
        {
            if (Directory.Exists(output))
                Directory.Delete(output, true);
        }
    }
}
