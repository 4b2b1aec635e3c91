using System.Text.Json;

namespace OnnxQuant.Cli.Tests;

/// <summary>
/// --max-drop on the bundled small DETR: the 3-bit allocation (pinned exact curves, no compensation) loses about
/// 2.8 box AP points on the eval set, so a 1-point guard fails first and the repair has to raise widths until it holds.
/// </summary>
public class GuardRepairCompileTests
{
    [Fact]
    public void ApGuardIsRepairedByRaisingWidths()
    {
        var output = Path.Combine(Path.GetTempPath(), "onnxquant-maxdrop-" + Guid.NewGuid().ToString("N"));
        try
        {
            var (code, _, stderr) = CliRunner.Run("compile", RepoPaths.File("models/fixtures/detr_small.onnx"),
                "--calib", RepoPaths.File("models/data/calib.npz"), "--verify-data", RepoPaths.File("models/data/eval.npz"), "--verify-samples", "4",
                "--target-bits", "3", "--curves", "exact", "--curves-file", RepoPaths.File("tests/OnnxQuant.Solvers.Tests/data/detr_small.curves.json"),
                "--compensation", "none", "--max-drop", "1",
                "--eval-data", RepoPaths.File("models/data/eval.npz"), "--eval-annotations", RepoPaths.File("models/data/eval.json"),
                "-o", output, "--quiet");
            Assert.True(code == 0, stderr);
            using var report = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(output, "report.json")));
            var repair = report.RootElement.GetProperty("repair");
            Assert.True(repair.GetProperty("met").GetBoolean());
            Assert.True(repair.GetProperty("initial_ap_drop_points").GetDouble() > 1, "the 3-bit allocation should fail the guard first");
            Assert.True(repair.GetProperty("final_ap_drop_points").GetDouble() <= 1);
            Assert.NotEmpty(repair.GetProperty("raised").EnumerateArray());
            Assert.True(repair.GetProperty("final_rate").GetDouble() > 3.0);
        }
        finally
        {
            if (Directory.Exists(output))
                Directory.Delete(output, true);
        }
    }
}
