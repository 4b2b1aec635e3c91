using System.Text.Json;
using OnnxQuant.Data;

namespace OnnxQuant.Cli.Tests;

/// <summary>
/// <c>compile --task-annotations</c> on the bundled small DETR: the detection outputs become the features, weighed
/// by the box AP their noise costs on the annotated calibration images, and the report says so. Refused with one
/// clear line where the outputs cannot be weighed or the features are named too.
/// </summary>
public class TaskWeightsCompileTests
{
    private static readonly string[] Common =
    [
        "--calib", RepoPaths.File("models/data/calib.npz"), "--calib-samples", "16",
        "--verify-data", RepoPaths.File("models/data/eval.npz"), "--verify-samples", "4", "--no-cache", "--quiet",
    ];

    private static string Output() => Path.Combine(Path.GetTempPath(), "onnxquant-task-" + Guid.NewGuid().ToString("N"));

    [Fact]
    public void DetectionOutputsAreWeighedByTheApTheirNoiseCosts()
    {
        var output = Output();
        // The calibration images without their ids: sample i is then the annotations' i-th image.
        var withoutIds = output + "-images.npz";
        Npz.Write(withoutIds, Npz.Read(RepoPaths.File("models/data/calib.npz")).Where(a => a.Name != "image_ids").ToList());
        try
        {
            var (code, stdout, stderr) = CliRunner.Run(["compile", RepoPaths.File("models/fixtures/detr_small.onnx"), .. Common,
                "--target-bits", "3", "--task-annotations", RepoPaths.File("models/data/calib.json"), "--task-data", withoutIds, "-o", output]);
            Assert.True(code == 0, stderr);
            using var report = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(output, "report.json")));
            var root = report.RootElement;
            Assert.Equal(["pred_logits", "pred_boxes"], root.GetProperty("features").EnumerateArray().Select(f => f.GetString()));
            var weights = root.GetProperty("feature_weights").EnumerateArray().Select(w => w.GetDouble()).ToList();
            Assert.Equal(2, weights.Count);
            Assert.True(weights[1] > 20 * weights[0], $"weights {string.Join(", ", weights)}");
            var task = root.GetProperty("task_weighting");
            Assert.Equal(16, task.GetProperty("images").GetInt32()); // the first --calib-samples of the 64 annotated images
            Assert.Equal(0.01, task.GetProperty("noise").GetDouble());
            var outputs = task.GetProperty("outputs").EnumerateArray().ToList();
            Assert.Equal(weights, outputs.Select(o => o.GetProperty("weight").GetDouble()));
            Assert.True(outputs[1].GetProperty("box_ap_drop").GetDouble() > 0.05);

            using var manifest = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(output, "manifest.json")));
            var text = manifest.RootElement.ToString();
            Assert.Contains("pred_boxes=", text);
            Assert.Contains("calib.json", text);
            var distortion = root.GetProperty("distortion");
            Assert.True(distortion.GetProperty("measured").GetDouble() > 0);
            Assert.Contains($"weighted: pred_logits {weights[0]:R}, pred_boxes {weights[1]:R}", distortion.GetProperty("metric").GetString());
            Assert.Contains(root.GetProperty("notes").EnumerateArray(), n => n.GetString()!.StartsWith("task weights on 16 images"));
            Assert.Contains("weighted: pred_logits", stdout);
        }
        finally
        {
            if (Directory.Exists(output))
                Directory.Delete(output, true);
            File.Delete(withoutIds);
        }
    }

    [Fact]
    public void SelfStandsInForAnnotations()
    {
        var output = Output();
        try
        {
            var (code, _, stderr) = CliRunner.Run(["compile", RepoPaths.File("models/fixtures/detr_small.onnx"), .. Common,
                "--target-bits", "4", "--task-annotations", "self", "-o", output]);
            Assert.True(code == 0, stderr);
            using var report = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(output, "report.json")));
            var task = report.RootElement.GetProperty("task_weighting");
            Assert.Equal(1.0, task.GetProperty("float_box_ap").GetDouble(), 9); // the model against its own detections
            var weights = report.RootElement.GetProperty("feature_weights").EnumerateArray().Select(w => w.GetDouble()).ToList();
            Assert.True(weights[1] > 20 * weights[0]);
            using var manifest = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(output, "manifest.json")));
            Assert.Contains("\"self\"", manifest.RootElement.ToString());
        }
        finally
        {
            if (Directory.Exists(output))
                Directory.Delete(output, true);
        }
    }

    [Fact]
    public void MaskRcnnOutputsAndNamedFeaturesAreRefused()
    {
        var output = Output();
        var (code, _, stderr) = CliRunner.Run(["compile", RepoPaths.File("models/fixtures/maskrcnn_swin_small.onnx"), .. Common,
            "--target-bits", "4", "--task-annotations", RepoPaths.File("models/data/calib.json"), "-o", output]);
        Assert.Equal(2, code);
        Assert.Contains("--task-annotations:", stderr);
        Assert.Contains("change size with the detections", stderr);

        (code, _, stderr) = CliRunner.Run(["compile", RepoPaths.File("models/fixtures/detr_small.onnx"), .. Common,
            "--target-bits", "4", "--task-annotations", RepoPaths.File("models/data/calib.json"), "--feature", "pred_boxes", "-o", output]);
        Assert.Equal(2, code);
        Assert.Contains("leave out --feature", stderr);
        Assert.False(Directory.Exists(Path.Combine(output, "report.json")));
    }
}
