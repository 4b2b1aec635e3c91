using OnnxQuant.Evaluation;
using OnnxQuant.Frontend;
using OnnxQuant.Runtime;

namespace OnnxQuant.Evaluation.Tests;

public sealed class DecoderTests
{
    private static readonly CocoDataset TwoCategories = new(
        [new CocoImage(7, 200, 100, "")], [new CocoCategory(3, "a"), new CocoCategory(9, "b")], []);

    private static TensorInfo Info(string name, DataType type, params long[] dims) =>
        new(name, ValueKind.Tensor, type, dims, dims.Select(_ => "").ToArray());

    [Fact]
    public void DetrSoftmaxExcludesNoObjectAndScalesBoxesToTheImage()
    {
        var decoder = new DetrDecoder("logits", "boxes", [3, 9]);
        // One image, two queries, classes {a, b, no-object}.
        var logits = TensorData.FromFloats([1f, 2f, 0f, 0f, 0f, 5f], [1, 2, 3]);
        var boxes = TensorData.FromFloats([0.5f, 0.5f, 0.2f, 0.4f, 0.1f, 0.1f, 0.1f, 0.1f], [1, 2, 4]);
        var dets = decoder.Decode([logits, boxes], TwoCategories.Images, 64, 64);
        Assert.Equal(2, dets.Count);
        var expected0 = Math.Exp(2) / (Math.Exp(1) + Math.Exp(2) + 1);
        Assert.Equal(9, dets[0].CategoryId); // class index 1 is the second category in id order
        Assert.Equal(expected0, dets[0].Score, 1e-6);
        // cx 0.5, w 0.2 of a 200-wide image -> x 80, w 40; cy 0.5, h 0.4 of 100 high -> y 30, h 40.
        Assert.Equal(80, dets[0].Box.X, 1e-4);
        Assert.Equal(30, dets[0].Box.Y, 1e-4);
        Assert.Equal(40, dets[0].Box.W, 1e-4);
        Assert.Equal(40, dets[0].Box.H, 1e-4);
        // The second query is confidently "no object": its best real class gets a tiny score.
        Assert.Equal(1 / (2 + Math.Exp(5)), dets[1].Score, 1e-6);
    }

    [Fact]
    public void DetrWithMoreClassesThanCategoriesUsesClassIndexAsId()
    {
        var decoder = new DetrDecoder("logits", "boxes", [3, 9]);
        var logits = TensorData.FromFloats([0f, 0f, 0f, 4f, 0f], [1, 1, 5]);
        var boxes = TensorData.FromFloats([0.5f, 0.5f, 0.2f, 0.2f], [1, 1, 4]);
        Assert.Equal(3, decoder.Decode([logits, boxes], TwoCategories.Images, 64, 64)[0].CategoryId);
    }

    [Fact]
    public void DetrRejectsMismatchedShapes()
    {
        var decoder = new DetrDecoder("logits", "boxes", [3, 9]);
        var logits = TensorData.FromFloats(new float[6], [1, 2, 3]);
        var boxes = TensorData.FromFloats(new float[12], [1, 3, 4]);
        var ex = Assert.Throws<EvaluationException>(() => decoder.Decode([logits, boxes], TwoCategories.Images, 64, 64));
        Assert.Contains("'boxes' has shape [1, 3, 4]; expected [1, 2, 4]", ex.Message);
    }

    [Fact]
    public void MaskRcnnScalesBoxesAndThresholdsMasksAboveHalf()
    {
        var decoder = new MaskRcnnDecoder("boxes", "labels", "scores", "masks");
        var image = new CocoImage(1, 8, 4, "");
        // Input frame 4x8 = image frame; the mask is 1.0 on column 0, exactly 0.5 on column 1 (not above), 0.6 on column 2.
        var mask = new float[4 * 8];
        for (var y = 0; y < 4; y++)
        {
            mask[y * 8 + 0] = 1f;
            mask[y * 8 + 1] = 0.5f;
            mask[y * 8 + 2] = 0.6f;
        }
        var dets = decoder.Decode([
            TensorData.FromFloats([1f, 0f, 3f, 4f], [1, 4]),
            TensorData.FromInt64s([9], [1]),
            TensorData.FromFloats([0.75f], [1]),
            TensorData.FromFloats(mask, [1, 1, 4, 8]),
        ], [image], 4, 8);
        var d = Assert.Single(dets);
        Assert.Equal(new BoxXywh(1, 0, 2, 4), d.Box);
        Assert.Equal(9, d.CategoryId);
        Assert.Equal(0.75, d.Score, 1e-7);
        Assert.Equal(8, d.Mask!.Area); // columns 0 and 2
        Assert.Equal(0, d.Mask.ToRowMajor()[1]);
    }

    [Fact]
    public void MaskRcnnRejectsInconsistentCounts()
    {
        var decoder = new MaskRcnnDecoder("boxes", "labels", "scores", null);
        var ex = Assert.Throws<EvaluationException>(() => decoder.Decode([
            TensorData.FromFloats(new float[8], [2, 4]),
            TensorData.FromInt64s([1], [1]),
            TensorData.FromFloats([0.5f, 0.5f], [2]),
        ], [new CocoImage(1, 8, 8, "")], 8, 8));
        Assert.Contains("'labels' has shape [1]; expected [2]", ex.Message);
    }

    [Fact]
    public void SelectorFindsDetrAmongExtraOutputs()
    {
        var d = DecoderSelector.Select([
            Info("backbone_feature", DataType.Float, -1, 256, 16, 16),
            Info("pred_logits", DataType.Float, -1, 100, 6),
            Info("pred_boxes", DataType.Float, -1, 100, 4),
            Info("aux_pred_boxes", DataType.Float, -1, 100, 4),
        ], TwoCategories);
        Assert.Equal(DecoderKind.Detr, d.Kind);
        Assert.Equal(["pred_logits", "pred_boxes"], d.OutputNames);
    }

    [Fact]
    public void SelectorFindsMaskRcnnByTypesAndRanks()
    {
        var d = DecoderSelector.Select([
            Info("out0", DataType.Float, -1, 4),
            Info("out1", DataType.Int64, -1),
            Info("out2", DataType.Float, -1),
            Info("out3", DataType.Float, -1, 1, 128, 128),
        ], TwoCategories);
        Assert.Equal(DecoderKind.MaskRcnn, d.Kind);
        Assert.True(d.ProducesMasks);
        Assert.Equal(["out0", "out1", "out2", "out3"], d.OutputNames);
    }

    [Fact]
    public void SelectorExplainsWhatIsMissingAndHonoursTheOverride()
    {
        var outputs = new[] { Info("y", DataType.Float, 1, 1000) };
        var ex = Assert.Throws<EvaluationException>(() => DecoderSelector.Select(outputs, TwoCategories));
        Assert.Contains("cannot tell how to decode", ex.Message);
        Assert.Contains("y: float", ex.Message, StringComparison.OrdinalIgnoreCase);
        var forced = Assert.Throws<EvaluationException>(() => DecoderSelector.Select(outputs, TwoCategories, DecoderKind.MaskRcnn));
        Assert.Contains("--decoder maskrcnn does not fit", forced.Message);
        Assert.Contains("no float output [N, 4] for the boxes", forced.Message);
    }
}
