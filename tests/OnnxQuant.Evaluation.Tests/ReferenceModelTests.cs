using OnnxQuant.Data;
using OnnxQuant.Evaluation;
using OnnxQuant.Runtime;

namespace OnnxQuant.Evaluation.Tests;

/// <summary>
/// The trained small reference models committed under models/fixtures, scored on the first images of the committed
/// eval split (a subset keeps the test short). Inference and scoring are deterministic (one thread), so the figures
/// are pinned to what was measured; the tolerance only absorbs float differences between ONNX Runtime builds.
/// </summary>
public sealed class ReferenceModelTests
{
    private const int Images = 25;
    private const double Tolerance = 0.01;

    private static EvaluationResult EvaluateSubset(string model)
    {
        var data = Npz.Read(RepoPaths.File("models/data/eval.npz"));
        var gt = CocoDataset.Load(RepoPaths.File("models/data/eval.json"));
        var subset = data.Select(a => a with { Array = a.Array.SliceFirstAxis(0, Images) }).ToList();
        using var session = InferenceSession.Create(RepoPaths.File(model), new SessionOptions { IntraOpThreads = 1 });
        return DetectionEvaluator.Evaluate(session, subset, gt);
    }

    [Fact]
    public void SmallDetrReachesItsMeasuredAp()
    {
        var r = EvaluateSubset("models/fixtures/detr_small.onnx");
        Assert.Equal(DecoderKind.Detr, r.Decoder);
        Assert.Equal(Images, r.ImageCount);
        Assert.Null(r.Segm);
        Assert.Equal(ExpectedDetrAp, r.Bbox.AP!.Value, Tolerance);
        Assert.Equal(ExpectedDetrAp50, r.Bbox.AP50!.Value, Tolerance);
        Assert.True(r.Bbox.AP50 >= 0.6); // the reference-model bar: box AP50 of at least 0.60 on the synthetic eval set
    }

    [Fact]
    public void SmallMaskRcnnReachesItsMeasuredBoxAndMaskAp()
    {
        var r = EvaluateSubset("models/fixtures/maskrcnn_swin_small.onnx");
        Assert.Equal(DecoderKind.MaskRcnn, r.Decoder);
        Assert.Equal(ExpectedMaskRcnnBoxAp, r.Bbox.AP!.Value, Tolerance);
        Assert.Equal(ExpectedMaskRcnnBoxAp50, r.Bbox.AP50!.Value, Tolerance);
        Assert.NotNull(r.Segm);
        Assert.Equal(ExpectedMaskRcnnMaskAp, r.Segm!.AP!.Value, Tolerance);
        Assert.Equal(ExpectedMaskRcnnMaskAp50, r.Segm.AP50!.Value, Tolerance);
        // The reference-model bar (box AP50 of at least 0.60); an untrained export scores about 0 on the same images.
        Assert.True(r.Bbox.AP50 >= 0.6);
    }

    // Measured by this evaluator (the code `onnxquant eval` runs) on images 1..25 of models/data/eval.npz, one thread.
    private const double ExpectedDetrAp = 0.7210;
    private const double ExpectedDetrAp50 = 0.9842;
    private const double ExpectedMaskRcnnBoxAp = 0.6614;
    private const double ExpectedMaskRcnnBoxAp50 = 0.8065;
    private const double ExpectedMaskRcnnMaskAp = 0.6308;
    private const double ExpectedMaskRcnnMaskAp50 = 0.8065;
}
