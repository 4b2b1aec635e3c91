namespace OnnxQuant.Cli.Tests;

/// <summary>
/// The bundled Mask-RCNN's outputs change size with the number of detections, so they cannot be compared element by
/// element: with them as the (default) features the compile stops with exit 2 and one line that names the feature
/// and --feature, before anything is written; with the pyramid as features it compiles. Exact curves, whose runs are
/// spread over sessions in parallel, say the same as one session would.
/// </summary>
public class DataDependentFeatureTests
{
    [Theory]
    [InlineData("gain")]
    [InlineData("exact")]
    public void DetectionOutputsAsFeaturesExitTwoWithOneLineNamingFeature(string curves)
    {
        var output = Path.Combine(Path.GetTempPath(), "onnxquant-ddf-" + Guid.NewGuid().ToString("N"));
        try
        {
            var (code, _, stderr) = CliRunner.Run("compile", RepoPaths.File("models/fixtures/maskrcnn_swin_small.onnx"),
                "--calib", RepoPaths.File("models/data/calib.npz"), "--calib-samples", "8", "--target-bits", "4", "--curves", curves, "--no-cache", "-o", output, "--quiet");
            Assert.Equal(2, code);
            var lines = stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
            Assert.Single(lines);
            Assert.Contains("--feature", lines[0]);
            Assert.Contains("values in float", lines[0]);
            Assert.False(Directory.Exists(output), "nothing may be written");
        }
        finally
        {
            if (Directory.Exists(output))
                Directory.Delete(output, true);
        }
    }
}
