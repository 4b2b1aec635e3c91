using System.Text.Json;

namespace OnnxQuant.Cli.Tests;

/// <summary>
/// The bundled Mask-RCNN's outputs change size with the number of detections, so they cannot be compared element by
/// element. Named as features, the compile stops with exit 2 and one line that names the feature and --feature,
/// before anything is written; by default it measures the fixed-size tensors its NMS and RoIAlign are computed from
/// (the pyramid and the region proposals) and keeps the layers after them as heads. Exact curves, whose runs are
/// spread over sessions in parallel, do the same as gain curves.
/// </summary>
public class DataDependentFeatureTests
{
    [Theory]
    [InlineData("gain")]
    [InlineData("exact")]
    public void DetectionOutputsNamedAsFeaturesExitTwoWithOneLineNamingFeature(string curves)
    {
        var output = Path.Combine(Path.GetTempPath(), "onnxquant-ddf-" + Guid.NewGuid().ToString("N"));
        try
        {
            var (code, _, stderr) = CliRunner.Run("compile", RepoPaths.File("models/fixtures/maskrcnn_swin_small.onnx"),
                "--calib", RepoPaths.File("models/data/calib.npz"), "--calib-samples", "8", "--target-bits", "4", "--curves", curves, "--no-cache",
                "--feature", "boxes", "-o", output, "--quiet");
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

    [Fact]
    public void ByDefaultTheTensorsBeforeTheDetectionsAreMeasured()
    {
        var output = Path.Combine(Path.GetTempPath(), "onnxquant-ddf-" + Guid.NewGuid().ToString("N"));
        try
        {
            var (code, _, stderr) = CliRunner.Run("compile", RepoPaths.File("models/fixtures/maskrcnn_swin_small.onnx"),
                "--calib", RepoPaths.File("models/data/calib.npz"), "--calib-samples", "8", "--target-bits", "4", "--no-cache", "-o", output, "--quiet");
            Assert.True(code == 0, stderr);
            using var report = JsonDocument.Parse(File.ReadAllText(Path.Combine(output, "report.json")));
            var root = report.RootElement;
            var features = root.GetProperty("features").EnumerateArray().Select(f => f.GetString()!).ToList();
            // The pyramid levels are among them, no detection output is.
            Assert.Superset(new HashSet<string> { "backbone.p2", "backbone.p3", "backbone.p4", "backbone.p5" }, features.ToHashSet());
            Assert.DoesNotContain("boxes", features);
            Assert.DoesNotContain("masks", features);
            // The box and mask heads, after the NMS, are heads outside the budget; the note says why.
            Assert.True(root.GetProperty("heads").GetArrayLength() > 0);
            Assert.Contains(root.GetProperty("notes").EnumerateArray(), n => n.GetString()!.Contains("fixed-size tensor(s) they are computed from are measured instead"));
            var measured = root.GetProperty("distortion").GetProperty("measured").GetDouble();
            Assert.InRange(measured, 1e-6, 0.5);
        }
        finally
        {
            if (Directory.Exists(output))
                Directory.Delete(output, true);
        }
    }
}
