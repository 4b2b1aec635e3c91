using OnnxQuant.Data;
using OnnxQuant.Evaluation;
using OnnxQuant.Frontend;
using OnnxQuant.Runtime;

namespace OnnxQuant.Evaluation.Tests;

/// <summary>End to end: tiny models in ONNX Runtime, decoded and scored, against AP computed by hand.</summary>
public sealed class DetectionEvaluatorTests
{
    private const int Queries = 4;
    private const int Classes = 2;
    private static readonly SessionOptions Options = new() { IntraOpThreads = 1 };

    /// <summary>Three 100x100 images; category 1 on images 1 and 3, category 2 on images 2 and 3.</summary>
    private static CocoDataset DetrGroundTruth() => new(
        [new CocoImage(1, 100, 100, ""), new CocoImage(2, 100, 100, ""), new CocoImage(3, 100, 100, "")],
        [new CocoCategory(1, "a"), new CocoCategory(2, "b")],
        [
            Box(1, 1, 1, 10, 10, 40, 40),
            Box(2, 2, 2, 50, 50, 30, 20),
            Box(3, 3, 1, 0, 0, 60, 60),
            Box(4, 3, 2, 60, 60, 30, 30),
        ]);

    private static CocoAnnotation Box(long id, long image, long cat, double x, double y, double w, double h) =>
        new(id, image, cat, new BoxXywh(x, y, w, h), w * h, false, null);

    /// <summary>A query on the box (x, y, w, h) of a 100x100 image, confident in class index <paramref name="cls"/>.</summary>
    private static (float, float, float, float, int) Q(double x, double y, double w, double h, int cls) =>
        ((float)((x + w / 2) / 100), (float)((y + h / 2) / 100), (float)(w / 100), (float)(h / 100), cls);

    // Leftover queries: "no object", on a 2x2 corner box that overlaps nothing.
    private static readonly (float, float, float, float, int) Empty = (0.95f, 0.95f, 0.02f, 0.02f, Classes);

    private static IReadOnlyList<NamedArray> DetrData(float[][] samples, long[]? ids = null)
    {
        var flat = samples.SelectMany(s => s).ToArray();
        var arrays = new List<NamedArray> { new("images", NpyArray.FromFloats(flat, samples.Length, 2, 8, 8)) };
        if (ids is not null)
            arrays.Add(new NamedArray("image_ids", NpyArray.FromInt64s(ids, ids.Length)));
        return arrays;
    }

    private static InferenceSession Session(Model model) => InferenceSession.Create(ModelIO.ToBytes(model), Options);

    [Fact]
    public void DetrPerfectDetectionsScoreOneInAnyBatchSize()
    {
        using var session = Session(EvalTestModels.Detr(Queries, Classes));
        var data = DetrData([
            EvalTestModels.DetrSample(Classes, [Q(10, 10, 40, 40, 0), Empty, Empty, Empty]),
            EvalTestModels.DetrSample(Classes, [Empty, Q(50, 50, 30, 20, 1), Empty, Empty]),
            EvalTestModels.DetrSample(Classes, [Q(60, 60, 30, 30, 1), Empty, Q(0, 0, 60, 60, 0), Empty]),
        ]);
        foreach (var batch in new[] { 1, 2, 8 })
        {
            var r = DetectionEvaluator.Evaluate(session, data, DetrGroundTruth(), new EvaluationOptions { BatchSize = batch });
            Assert.Equal(DecoderKind.Detr, r.Decoder);
            Assert.Equal(3, r.ImageCount);
            Assert.Equal(3 * Queries, r.DetectionCount); // DETR keeps every query
            Assert.Equal(1.0, r.Bbox.AP!.Value, 1e-9);
            Assert.Null(r.Segm);
        }
    }

    [Fact]
    public void DetrShiftedLowScoredBoxGivesHandComputedAp()
    {
        using var session = Session(EvalTestModels.Detr(Queries, Classes));
        // Image 1's box is shifted by 8 px (IoU 2/3) and, with a weaker logit, ranks below image 3's category-1 box.
        var image1 = EvalTestModels.DetrSample(Classes, [Q(18, 10, 40, 40, 0), Empty, Empty, Empty]);
        image1[64 + 0] = 5f; // class-0 logit of query 0: lower score than the others' 8
        var data = DetrData([
            image1,
            EvalTestModels.DetrSample(Classes, [Empty, Q(50, 50, 30, 20, 1), Empty, Empty]),
            EvalTestModels.DetrSample(Classes, [Q(60, 60, 30, 30, 1), Empty, Q(0, 0, 60, 60, 0), Empty]),
        ]);
        var r = DetectionEvaluator.Evaluate(session, data, DetrGroundTruth());
        // Category 1: both found at IoU 0.50..0.65; above, TP then FP: precision 1 up to recall 0.5 (51 of 101 points).
        var cat1 = (4 * 1.0 + 6 * 51.0 / 101) / 10;
        Assert.Equal((cat1 + 1.0) / 2, r.Bbox.AP!.Value, 1e-9);
        Assert.Equal(1.0, r.Bbox.AP50!.Value, 1e-9);
        Assert.Equal((51.0 / 101 + 1) / 2, r.Bbox.AP75!.Value, 1e-9);
    }

    [Fact]
    public void ImageIdsSelectAndOrderTheScoredImages()
    {
        using var session = Session(EvalTestModels.Detr(Queries, Classes));
        // Only images 3 and 2 are in the data, in that order; image 1's object must not count as a miss.
        var data = DetrData([
            EvalTestModels.DetrSample(Classes, [Q(60, 60, 30, 30, 1), Empty, Q(0, 0, 60, 60, 0), Empty]),
            EvalTestModels.DetrSample(Classes, [Empty, Q(50, 50, 30, 20, 1), Empty, Empty]),
        ], ids: [3, 2]);
        var r = DetectionEvaluator.Evaluate(session, data, DetrGroundTruth());
        Assert.Equal(1.0, r.Bbox.AP!.Value, 1e-9);

        var unknown = DetrData([EvalTestModels.DetrSample(Classes, [Empty, Empty, Empty, Empty])], ids: [42]);
        var ex = Assert.Throws<EvaluationException>(() => DetectionEvaluator.Evaluate(session, unknown, DetrGroundTruth()));
        Assert.Contains("image 42", ex.Message);
    }

    [Fact]
    public void DataThatDoesNotFitTheModelIsReported()
    {
        using var session = Session(EvalTestModels.Detr(Queries, Classes));
        var wrong = new List<NamedArray> { new("images", NpyArray.FromFloats(new float[3 * 2 * 4 * 4], 3, 2, 4, 4)) };
        var ex = Assert.Throws<EvaluationException>(() => DetectionEvaluator.Evaluate(session, wrong, DetrGroundTruth()));
        Assert.Contains("does not fit model input images", ex.Message);

        var noIds = DetrData([EvalTestModels.DetrSample(Classes, [Empty, Empty, Empty, Empty])]);
        var ex2 = Assert.Throws<EvaluationException>(() => DetectionEvaluator.Evaluate(session, noIds, DetrGroundTruth()));
        Assert.Contains("no 'image_ids' array", ex2.Message);
    }

    [Fact]
    public void MaskRcnnBoxesAndMasksAreScoredSeparately()
    {
        const int m = 3;
        using var session = Session(EvalTestModels.MaskRcnn(m));
        var gtMask1 = Square(2, 2, 6, 6);
        var gtMask2 = Square(4, 8, 8, 6);
        var gt = new CocoDataset(
            [new CocoImage(1, 16, 16, ""), new CocoImage(2, 16, 16, "")],
            [new CocoCategory(1, "a"), new CocoCategory(2, "b")],
            [
                new CocoAnnotation(1, 1, 1, new BoxXywh(2, 2, 6, 6), 36, false, gtMask1),
                new CocoAnnotation(2, 2, 2, new BoxXywh(4, 8, 8, 6), 48, false, gtMask2),
            ]);
        Func<int, int, float> none = (_, _) => 0f;
        // Image 2's mask is exactly 0.5 on its left half: not above the threshold, so only the right half (IoU 0.5) counts.
        var sample1 = EvalTestModels.MaskRcnnSample(m, [(2, 2, 8, 8, 0.9f, 1, (y, x) => y is >= 2 and < 8 && x is >= 2 and < 8 ? 0.9f : 0.2f)]);
        var sample2 = EvalTestModels.MaskRcnnSample(m, [
            (4, 8, 12, 14, 0.8f, 2, (y, x) => y is >= 8 and < 14 && x is >= 4 and < 12 ? (x < 8 ? 0.5f : 0.95f) : 0f),
            (0, 0, 1, 1, 0.01f, 1, none),
        ]);
        var data = new List<NamedArray>
        {
            new("image", NpyArray.FromFloats([.. sample1, .. sample2], 2, 1 + m, 16, 16)),
            new("image_ids", NpyArray.FromInt64s([1, 2], 2)),
        };
        var r = DetectionEvaluator.Evaluate(session, data, gt);
        Assert.Equal(DecoderKind.MaskRcnn, r.Decoder);
        Assert.Equal(2 * m, r.DetectionCount);
        Assert.Equal(1.0, r.Bbox.AP!.Value, 1e-9);
        Assert.NotNull(r.Segm);
        Assert.Equal((1.0 + 0.1) / 2, r.Segm!.AP!.Value, 1e-9);
        Assert.Equal(1.0, r.Segm.AP50!.Value, 1e-9);
    }

    private static Rle Square(int x0, int y0, int w, int h)
    {
        var m = new byte[256];
        for (var y = y0; y < y0 + h; y++)
        for (var x = x0; x < x0 + w; x++)
            m[y * 16 + x] = 1;
        return Rle.FromRowMajor(m, 16, 16);
    }
}
