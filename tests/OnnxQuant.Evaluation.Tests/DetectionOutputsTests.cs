using OnnxQuant.Data;
using OnnxQuant.Runtime;

namespace OnnxQuant.Evaluation.Tests;

/// <summary>
/// Outputs kept once and scored again (<see cref="DetectionEvaluator.Collect"/>): unchanged they score exactly what
/// <see cref="DetectionEvaluator.Evaluate"/> scores; a change reaches the decoder; outputs whose size follows the
/// detections are refused.
/// </summary>
public sealed class DetectionOutputsTests
{
    private const int Images = 25;

    private static (List<NamedArray> Data, CocoDataset Truth) Subset()
    {
        var data = Npz.Read(RepoPaths.File("models/data/eval.npz"));
        var gt = CocoDataset.Load(RepoPaths.File("models/data/eval.json"));
        return (data.Select(a => a with { Array = a.Array.SliceFirstAxis(0, Images) }).ToList(), gt);
    }

    [Fact]
    public void KeptOutputsScoreAsAnEvaluationAndChangesReachTheDecoder()
    {
        var (data, gt) = Subset();
        using var session = InferenceSession.Create(RepoPaths.File("models/fixtures/detr_small.onnx"), new SessionOptions { IntraOpThreads = 1 });
        var direct = DetectionEvaluator.Evaluate(session, data, gt);
        var kept = DetectionEvaluator.Collect(session, data, gt);
        Assert.Equal(DecoderKind.Detr, kept.Decoder);
        Assert.Equal(Images, kept.ImageCount);
        Assert.Equal(["pred_logits", "pred_boxes"], kept.OutputNames);

        var again = kept.Score();
        Assert.Equal(direct.Bbox.AP, again.Bbox.AP);
        Assert.Equal(direct.Bbox.AP75, again.Bbox.AP75);
        Assert.Equal(direct.DetectionCount, again.DetectionCount);
        // A change that returns the values unchanged scores the same.
        Assert.Equal(direct.Bbox.AP, kept.Score((_, _, v) => v).Bbox.AP);

        // Boxes moved by a tenth of the image in x: every IoU falls, and AP with it; logits alone untouched.
        var shifted = kept.Score((output, _, v) => output == 1 ? v.Select((x, i) => i % 4 == 0 ? x + 0.1f : x).ToArray() : v);
        Assert.True(shifted.Bbox.AP < direct.Bbox.AP - 0.2, $"AP {direct.Bbox.AP} -> {shifted.Bbox.AP} with boxes shifted");
        Assert.Equal(direct.DetectionCount, shifted.DetectionCount);
        // The kept outputs themselves are not modified by a change.
        Assert.Equal(direct.Bbox.AP, kept.Score().Bbox.AP);
    }

    [Fact]
    public void OutputsThatFollowTheDetectionsAreRefused()
    {
        var (data, gt) = Subset();
        using var session = InferenceSession.Create(RepoPaths.File("models/fixtures/maskrcnn_swin_small.onnx"), new SessionOptions { IntraOpThreads = 1 });
        var error = Assert.Throws<EvaluationException>(() => DetectionEvaluator.Collect(session, data.Select(a => a with { Array = a.Array.SliceFirstAxis(0, 2) }).ToList(), gt));
        Assert.Contains("change size with the detections", error.Message);
    }
}
