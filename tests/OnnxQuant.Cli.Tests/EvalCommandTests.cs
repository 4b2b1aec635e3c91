using System.Text.Json;
using OnnxQuant.Cli;
using OnnxQuant.Data;
using OnnxQuant.Evaluation;
using OnnxQuant.Evaluation.Tests;
using OnnxQuant.Frontend;

namespace OnnxQuant.Cli.Tests;

public sealed class EvalCommandTests : IDisposable
{
    private const int Queries = 4;
    private const int Classes = 2;
    private readonly string _dir = Directory.CreateTempSubdirectory("onnxquant-eval-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string F(string name) => Path.Combine(_dir, name);

    private static (int Code, string Out, string Err) Run(params string[] args) => CliRunner.Run(args);

    /// <summary>A DETR-like model, two 100x100 images with one object each, and data holding perfect detections.</summary>
    private void WriteDetrCase(float cxShift = 0, string model = "detr.onnx")
    {
        ModelIO.Save(EvalTestModels.Detr(Queries, Classes, cxShift), F(model));
        var empty = (0.95f, 0.95f, 0.02f, 0.02f, Classes);
        var s1 = EvalTestModels.DetrSample(Classes, [(0.3f, 0.3f, 0.4f, 0.4f, 0), empty, empty, empty]);
        var s2 = EvalTestModels.DetrSample(Classes, [empty, (0.65f, 0.6f, 0.3f, 0.2f, 1), empty, empty]);
        Npz.Write(F("data.npz"), [
            new NamedArray("images", NpyArray.FromFloats([.. s1, .. s2], 2, 2, 8, 8)),
            new NamedArray("image_ids", NpyArray.FromInt64s([1, 2], 2)),
        ]);
        File.WriteAllText(F("gt.json"), """
            {"images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
             "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
             "annotations": [
               {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "area": 1600, "iscrowd": 0},
               {"id": 2, "image_id": 2, "category_id": 2, "bbox": [50, 50, 30, 20], "area": 600, "iscrowd": 0}]}
            """);
    }

    [Fact]
    public void JsonHasBboxApAndNullSegmForDetr()
    {
        WriteDetrCase();
        var (code, stdout, stderr) = Run("eval", F("detr.onnx"), "--data", F("data.npz"), "--annotations", F("gt.json"), "--json", "--threads", "1");
        Assert.True(code == ExitCodes.Ok, stderr);
        using var doc = JsonDocument.Parse(stdout);
        var root = doc.RootElement;
        Assert.Equal("detr", root.GetProperty("decoder").GetString());
        Assert.Equal(2, root.GetProperty("images").GetInt32());
        var bbox = root.GetProperty("bbox");
        Assert.Equal(1.0, bbox.GetProperty("AP").GetDouble(), 1e-9);
        Assert.Equal(1.0, bbox.GetProperty("AP50").GetDouble(), 1e-9);
        Assert.Equal(1.0, bbox.GetProperty("AP75").GetDouble(), 1e-9);
        Assert.Equal(JsonValueKind.Null, bbox.GetProperty("APl").ValueKind); // no large objects: undefined
        Assert.Equal(JsonValueKind.Null, root.GetProperty("segm").ValueKind);
        Assert.Equal(JsonValueKind.Null, root.GetProperty("vs").ValueKind);
    }

    [Fact]
    public void VsPrintsBothModelsAndTheDifference()
    {
        WriteDetrCase();
        // The second model moves every box 8 px right: IoU 2/3 for the 40-px box, 0.58 for the 30-px one.
        ModelIO.Save(EvalTestModels.Detr(Queries, Classes, cxShift: 0.08f), F("shifted.onnx"));
        var (code, stdout, stderr) = Run("eval", F("detr.onnx"), "--vs", F("shifted.onnx"), "--data", F("data.npz"),
            "--annotations", F("gt.json"), "--json", "--threads", "1");
        Assert.True(code == ExitCodes.Ok, stderr);
        using var doc = JsonDocument.Parse(stdout);
        var root = doc.RootElement;
        var other = root.GetProperty("vs").GetProperty("bbox").GetProperty("AP").GetDouble();
        // Category a matches at 0.50..0.65 (4 thresholds), category b (22/38 = 0.579) at 0.50, 0.55 (2 thresholds).
        Assert.Equal((0.4 + 0.2) / 2, other, 1e-6);
        Assert.Equal(other - 1.0, root.GetProperty("delta").GetProperty("bbox").GetProperty("AP").GetDouble(), 1e-9);

        var (code2, table, stderr2) = Run("eval", F("detr.onnx"), "--vs", F("shifted.onnx"), "--data", F("data.npz"),
            "--annotations", F("gt.json"), "--threads", "1");
        Assert.True(code2 == ExitCodes.Ok, stderr2);
        Assert.Contains("shifted.onnx", table);
        Assert.Contains("diff", table);
        Assert.Contains("-0.700", table);
        Assert.Contains("AP75", table);
        Assert.Contains("2/2 images", stderr2); // progress lines when stderr is not a terminal
    }

    [Fact]
    public void BootstrapGivesAnIntervalAroundTheDifferenceAndNeedsASecondModel()
    {
        WriteDetrCase();
        ModelIO.Save(EvalTestModels.Detr(Queries, Classes, cxShift: 0.08f), F("shifted.onnx"));
        var (code, stdout, stderr) = Run("eval", F("detr.onnx"), "--vs", F("shifted.onnx"), "--data", F("data.npz"),
            "--annotations", F("gt.json"), "--json", "--threads", "1", "--bootstrap", "50");
        Assert.True(code == ExitCodes.Ok, stderr);
        using var doc = JsonDocument.Parse(stdout);
        var delta = doc.RootElement.GetProperty("delta");
        var b = delta.GetProperty("bootstrap").GetProperty("bbox");
        Assert.Equal(delta.GetProperty("bbox").GetProperty("AP").GetDouble(), b.GetProperty("ap_difference").GetDouble(), 1e-12);
        Assert.Equal(50, b.GetProperty("resamples").GetInt32());
        // The shifted boxes score lower on both images, so on every resample of them.
        Assert.InRange(b.GetProperty("ap_difference").GetDouble(), b.GetProperty("lower_95").GetDouble(), b.GetProperty("upper_95").GetDouble());
        Assert.True(b.GetProperty("upper_95").GetDouble() < 0);
        Assert.Equal(0.0, b.GetProperty("second_higher").GetDouble());

        var (code2, table, _) = Run("eval", F("detr.onnx"), "--vs", F("shifted.onnx"), "--data", F("data.npz"),
            "--annotations", F("gt.json"), "--threads", "1", "--bootstrap", "50");
        Assert.Equal(ExitCodes.Ok, code2);
        Assert.Contains("bbox AP shifted.onnx - detr.onnx: -0.7000, 95 % interval", table);
        Assert.Contains("the interval excludes 0", table);

        var (code3, _, error) = Run("eval", F("detr.onnx"), "--data", F("data.npz"), "--annotations", F("gt.json"), "--bootstrap", "50");
        Assert.Equal(ExitCodes.BadInput, code3);
        Assert.Contains("--vs", error);
    }

    [Fact]
    public void MaskRcnnReportsMaskAp()
    {
        const int m = 2;
        ModelIO.Save(EvalTestModels.MaskRcnn(m), F("mrcnn.onnx"));
        var sample = EvalTestModels.MaskRcnnSample(m, [(2, 2, 8, 8, 0.9f, 1, (y, x) => y is >= 2 and < 8 && x is >= 2 and < 8 ? 1f : 0f)]);
        Npz.Write(F("m.npz"), [new NamedArray("image", NpyArray.FromFloats(sample, 1, 1 + m, 16, 16))]);
        File.WriteAllText(F("m.json"), """
            {"images": [{"id": 5, "width": 16, "height": 16}], "categories": [{"id": 1, "name": "a"}],
             "annotations": [{"id": 1, "image_id": 5, "category_id": 1, "bbox": [2, 2, 6, 6], "area": 36, "iscrowd": 0,
                              "segmentation": [[2, 2, 8, 2, 8, 8, 2, 8]]}]}
            """);
        var (code, stdout, stderr) = Run("eval", F("mrcnn.onnx"), "--data", F("m.npz"), "--annotations", F("m.json"), "--json", "--threads", "1");
        Assert.True(code == ExitCodes.Ok, stderr);
        using var doc = JsonDocument.Parse(stdout);
        Assert.Equal("maskrcnn", doc.RootElement.GetProperty("decoder").GetString());
        Assert.Equal(1.0, doc.RootElement.GetProperty("segm").GetProperty("AP").GetDouble(), 1e-9);
        Assert.Equal(1.0, doc.RootElement.GetProperty("bbox").GetProperty("AP").GetDouble(), 1e-9);
    }

    [Fact]
    public void BadInputsExitTwoWithOneLine()
    {
        WriteDetrCase();
        File.WriteAllBytes(F("broken.npz"), File.ReadAllBytes(F("data.npz"))[..100]);
        var cases = new (string[] Args, string Expect)[]
        {
            (["--data", F("broken.npz"), "--annotations", F("gt.json")], "broken.npz"),
            (["--data", F("data.npz"), "--annotations", F("missing.json")], "missing.json"),
            (["--data", F("data.npz"), "--annotations", F("data.npz")], "not valid JSON"),
            (["--data", F("data.npz"), "--annotations", F("gt.json"), "--decoder", "maskrcnn"], "--decoder maskrcnn does not fit"),
            (["--data", F("data.npz"), "--annotations", F("gt.json"), "--batch", "0"], "--batch must be at least 1"),
        };
        foreach (var (args, expect) in cases)
        {
            var (code, stdout, stderr) = Run(["eval", F("detr.onnx"), .. args]);
            Assert.True(code == ExitCodes.BadInput, $"{string.Join(" ", args)}: exit {code}\n{stderr}");
            Assert.Contains(expect, stderr);
            Assert.Single(stderr.Trim().Split('\n'));
            Assert.Equal("", stdout);
        }
    }
}
