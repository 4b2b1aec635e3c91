using System.Text.Json;
using OnnxQuant.Data.Tests;
using OnnxQuant.Evaluation;

namespace OnnxQuant.Evaluation.Tests;

public sealed class CocoEvaluatorTests
{
    // Precision carries the reference's tiny epsilon in its denominator, so "1" is 1 - 2e-16.
    private const double Tol = 1e-12;

    private static CocoDataset Gt(params CocoAnnotation[] annotations) =>
        new([new CocoImage(1, 200, 200, "a"), new CocoImage(2, 200, 200, "b")],
            [new CocoCategory(1, "square"), new CocoCategory(2, "disc")], annotations);

    private static CocoAnnotation Obj(long id, long image, long cat, double x, double y, double w, double h, bool crowd = false) =>
        new(id, image, cat, new BoxXywh(x, y, w, h), w * h, crowd, null);

    private static Detection Det(long image, long cat, double score, double x, double y, double w, double h) =>
        new(image, cat, score, new BoxXywh(x, y, w, h));

    [Fact]
    public void PerfectDetectionsScoreOne()
    {
        var gt = Gt(Obj(1, 1, 1, 10, 10, 50, 50), Obj(2, 1, 2, 100, 100, 20, 30), Obj(3, 2, 1, 0, 0, 120, 110));
        var dets = gt.Annotations.Select((a, i) => Det(a.ImageId, a.CategoryId, 0.9 - 0.1 * i, a.Box.X, a.Box.Y, a.Box.W, a.Box.H)).ToList();
        var m = CocoEvaluator.Evaluate(gt, dets, IouType.Bbox);
        Assert.Equal(1.0, m.AP!.Value, Tol);
        Assert.Equal(1.0, m.AP50!.Value, Tol);
        Assert.Equal(1.0, m.AP75!.Value, Tol);
        Assert.Equal(1.0, m.APs!.Value, Tol); // the 20x30 disc
        Assert.Equal(1.0, m.APm!.Value, Tol);
        Assert.Equal(1.0, m.APl!.Value, Tol);
        Assert.Equal(1.0, m.AR100!.Value, Tol);
        Assert.All(m.PerCategory, c => Assert.Equal(1.0, c.AP!.Value, Tol));
    }

    [Fact]
    public void NoDetectionsScoreZero()
    {
        var gt = Gt(Obj(1, 1, 1, 10, 10, 50, 50));
        var m = CocoEvaluator.Evaluate(gt, [], IouType.Bbox);
        Assert.Equal(0.0, m.AP);
        Assert.Equal(0.0, m.AP50);
        Assert.Equal(0.0, m.AR100);
        // Category 2 has no ground truth: undefined, not zero, and it does not drag the mean down.
        Assert.Null(m.PerCategory.Single(c => c.CategoryId == 2).AP);
        Assert.Null(m.APs);
        Assert.Null(m.APl);
    }

    [Fact]
    public void NoGroundTruthAtAllIsUndefined()
    {
        var m = CocoEvaluator.Evaluate(Gt(), [Det(1, 1, 0.5, 0, 0, 10, 10)], IouType.Bbox);
        Assert.Null(m.AP);
        Assert.Null(m.AR100);
    }

    [Fact]
    public void ShiftedBoxAtIouTwoThirdsMatchesFourOfTenThresholds()
    {
        // gt [0,0,10,10] vs det shifted by 2 px: intersection 80, union 120, IoU 0.667 >= 0.50, 0.55, 0.60, 0.65.
        var gt = Gt(Obj(1, 1, 1, 0, 0, 10, 10));
        var m = CocoEvaluator.Evaluate(gt, [Det(1, 1, 0.9, 2, 0, 10, 10)], IouType.Bbox);
        Assert.Equal(0.4, m.AP!.Value, Tol);
        Assert.Equal(1.0, m.AP50!.Value, Tol);
        Assert.Equal(0.0, m.AP75!.Value, Tol);
        Assert.Equal(0.4, m.AR100!.Value, Tol);
    }

    [Fact]
    public void IouExactlyOnAThresholdMatchesIt()
    {
        // gt 10x10, det 10x6 inside it: IoU exactly 0.6, so 0.50, 0.55, 0.60 match.
        var gt = Gt(Obj(1, 1, 1, 0, 0, 10, 10));
        var m = CocoEvaluator.Evaluate(gt, [Det(1, 1, 0.9, 0, 0, 10, 6)], IouType.Bbox);
        Assert.Equal(0.3, m.AP!.Value, Tol);
    }

    [Fact]
    public void DuplicateAfterTheTruePositiveCostsNothingButBeforeItHalvesPrecision()
    {
        var gt = Gt(Obj(1, 1, 1, 0, 0, 40, 40));
        var dupAfter = CocoEvaluator.Evaluate(gt, [Det(1, 1, 0.9, 0, 0, 40, 40), Det(1, 1, 0.8, 0, 0, 40, 40)], IouType.Bbox);
        Assert.Equal(1.0, dupAfter.AP!.Value, Tol);

        // A false positive ranked first: precision 1/2 at the only recall reached (1.0), interpolated back to recall 0.
        var fpFirst = CocoEvaluator.Evaluate(gt, [Det(1, 1, 0.9, 100, 100, 40, 40), Det(1, 1, 0.8, 0, 0, 40, 40)], IouType.Bbox);
        Assert.Equal(0.5, fpFirst.AP!.Value, Tol);
        Assert.Equal(1.0, fpFirst.AR100!.Value, Tol);
        // With one detection per image only the false positive counts.
        Assert.Equal(0.0, fpFirst.AR1!.Value, Tol);
    }

    [Fact]
    public void ScoresRankAcrossImages()
    {
        // Two objects in two images; the false positive's score sits between the two true positives:
        // sequence TP, FP, TP -> precision 1, 1/2, 2/3; recall 0.5, 0.5, 1. Interpolated: recall <= 0.5 -> 1, above -> 2/3.
        var gt = Gt(Obj(1, 1, 1, 0, 0, 40, 40), Obj(2, 2, 1, 0, 0, 40, 40));
        var dets = new List<Detection> { Det(1, 1, 0.9, 0, 0, 40, 40), Det(1, 1, 0.8, 100, 100, 40, 40), Det(2, 1, 0.7, 0, 0, 40, 40) };
        var m = CocoEvaluator.Evaluate(gt, dets, IouType.Bbox);
        Assert.Equal((51 * 1.0 + 50 * (2.0 / 3)) / 101, m.AP!.Value, Tol);
    }

    [Fact]
    public void CrowdRegionsAbsorbDetectionsWithoutPenalty()
    {
        var gt = Gt(Obj(1, 1, 1, 0, 0, 40, 40), Obj(2, 1, 1, 100, 100, 80, 80, crowd: true));
        var dets = new List<Detection>
        {
            Det(1, 1, 0.95, 110, 110, 20, 20), // inside the crowd: intersection / own area = 1
            Det(1, 1, 0.9, 0, 0, 40, 40),
            Det(1, 1, 0.85, 140, 140, 20, 20), // a second one inside the same crowd
        };
        var m = CocoEvaluator.Evaluate(gt, dets, IouType.Bbox);
        Assert.Equal(1.0, m.AP!.Value, Tol);

        // The same region not marked as crowd is a real object the small detections fail to match (IoU 1/16).
        var notCrowd = Gt(Obj(1, 1, 1, 0, 0, 40, 40), Obj(2, 1, 1, 100, 100, 80, 80));
        var m2 = CocoEvaluator.Evaluate(notCrowd, dets, IouType.Bbox);
        // FP, TP, FP of 2 objects: precision at recall 0.5 is 1/2.
        Assert.Equal(51 * 0.5 / 101, m2.AP!.Value, Tol);
    }

    [Fact]
    public void AreaRangesSplitObjectsByAnnotatedArea()
    {
        // 10x10 (small), 50x50 (medium), 100x100 (large, 10000 > 96^2)
        var gt = Gt(Obj(1, 1, 1, 0, 0, 10, 10), Obj(2, 1, 1, 20, 20, 50, 50), Obj(3, 2, 1, 0, 0, 100, 100));
        var onlyLarge = CocoEvaluator.Evaluate(gt, [Det(2, 1, 0.9, 0, 0, 100, 100)], IouType.Bbox);
        Assert.Equal(0.0, onlyLarge.APs);
        Assert.Equal(0.0, onlyLarge.APm);
        Assert.Equal(1.0, onlyLarge.APl!.Value, Tol);
        // All areas: one of three found, with perfect precision: recall thresholds 0..0.33 (34 of 101) score 1.
        Assert.Equal(34.0 / 101, onlyLarge.AP!.Value, Tol);
        Assert.Equal(1.0 / 3, onlyLarge.AR100!.Value, Tol);

        // A small false positive does not hurt APl: outside the large range and unmatched, it is ignored there.
        var withSmallFp = CocoEvaluator.Evaluate(gt, [Det(2, 1, 0.95, 150, 150, 8, 8), Det(2, 1, 0.9, 0, 0, 100, 100)], IouType.Bbox);
        Assert.Equal(1.0, withSmallFp.APl!.Value, Tol);
        Assert.Equal(0.0, withSmallFp.APs);
    }

    [Fact]
    public void MaxDetectionsLimitRecall()
    {
        var gt = Gt(Obj(1, 1, 1, 0, 0, 40, 40), Obj(2, 1, 1, 100, 100, 40, 40));
        var m = CocoEvaluator.Evaluate(gt, [Det(1, 1, 0.9, 0, 0, 40, 40), Det(1, 1, 0.8, 100, 100, 40, 40)], IouType.Bbox);
        Assert.Equal(0.5, m.AR1!.Value, Tol);
        Assert.Equal(1.0, m.AR10!.Value, Tol);
    }

    [Fact]
    public void UnknownCategoriesAreNotEvaluatedAndUnknownImagesAreRejected()
    {
        var gt = Gt(Obj(1, 1, 1, 0, 0, 40, 40));
        var m = CocoEvaluator.Evaluate(gt, [Det(1, 1, 0.5, 0, 0, 40, 40), Det(1, 7, 0.9, 0, 0, 40, 40)], IouType.Bbox);
        Assert.Equal(1.0, m.AP!.Value, Tol);
        var ex = Assert.Throws<ArgumentException>(() => CocoEvaluator.Evaluate(gt, [Det(9, 1, 0.5, 0, 0, 4, 4)], IouType.Bbox));
        Assert.Contains("image 9", ex.Message);
    }

    [Fact]
    public void MaskApUsesMaskOverlap()
    {
        int h = 60, w = 60;
        byte[] Square(int x0, int y0, int size)
        {
            var m = new byte[h * w];
            for (var y = y0; y < y0 + size; y++)
            for (var x = x0; x < x0 + size; x++)
                m[y * w + x] = 1;
            return m;
        }
        var gtMask = Rle.FromRowMajor(Square(10, 10, 20), h, w);
        var gt = new CocoDataset([new CocoImage(1, w, h, "")], [new CocoCategory(1, "s")],
            [new CocoAnnotation(1, 1, 1, gtMask.ToBox(), gtMask.Area, false, gtMask)]);
        var perfect = CocoEvaluator.Evaluate(gt, [new Detection(1, 1, 0.9, gtMask.ToBox(), gtMask)], IouType.Segm);
        Assert.Equal(1.0, perfect.AP!.Value, Tol);

        // Shifted by 4 columns: intersection 16x20 = 320, union 480, IoU 2/3 (like the box case).
        var shifted = Rle.FromRowMajor(Square(14, 10, 20), h, w);
        var m = CocoEvaluator.Evaluate(gt, [new Detection(1, 1, 0.9, shifted.ToBox(), shifted)], IouType.Segm);
        Assert.Equal(0.4, m.AP!.Value, Tol);
    }

    [Fact]
    public void MatchesIndependentReferenceOnRandomCases()
    {
        using var dir = new TempDir();
        var rng = new Random(1234);
        const int cases = 8;
        var expected = new List<CocoMetrics>();
        for (var c = 0; c < cases; c++)
        {
            var segm = c % 2 == 1;
            var (gtJson, detJson, gt, dets) = RandomCase(rng, segm);
            File.WriteAllText(dir.File($"gt{c}.json"), gtJson);
            File.WriteAllText(dir.File($"dt{c}.json"), detJson);
            expected.Add(CocoEvaluator.Evaluate(gt, dets, segm ? IouType.Segm : IouType.Bbox));
        }
        var script = Path.Combine(AppContext.BaseDirectory, "coco_reference.py");
        var output = PythonScript.Run($$"""
            import json, runpy, sys
            ref = runpy.run_path({{JsonSerializer.Serialize(script)}})
            out = []
            for c in range({{cases}}):
                gt = json.load(open(f'gt{c}.json')); dt = json.load(open(f'dt{c}.json'))
                out.append(ref['evaluate'](gt, dt, 'segm' if c % 2 == 1 else 'bbox'))
            print(json.dumps(out))
            """, dir.Path);
        var reference = JsonSerializer.Deserialize<double?[][]>(output)!;
        for (var c = 0; c < cases; c++)
        {
            var ours = expected[c].Summary.Select(s => s.Value).ToArray();
            for (var i = 0; i < 12; i++)
            {
                Assert.True(ours[i] is null == reference[c][i] is null, $"case {c} metric {expected[c].Summary[i].Name}: {ours[i]} vs {reference[c][i]}");
                if (ours[i] is { } v)
                    Assert.True(Math.Abs(v - reference[c][i]!.Value) < 1e-12,
                        $"case {c} metric {expected[c].Summary[i].Name}: {v} vs reference {reference[c][i]}");
            }
        }
        // The random cases are not degenerate: the metrics spread over (0, 1).
        Assert.Contains(expected, m => m.AP is > 0.05 and < 0.95);
    }

    /// <summary>Random objects (some crowd, all three sizes) and noisy detections with duplicates and misses.</summary>
    private static (string GtJson, string DetJson, CocoDataset Gt, List<Detection> Dets) RandomCase(Random rng, bool segm)
    {
        const int size = 160;
        var images = Enumerable.Range(1, 4).Select(i => new CocoImage(i, size, size, $"{i}.png")).ToList();
        var cats = new List<CocoCategory> { new(1, "a"), new(2, "b"), new(3, "c") };
        var anns = new List<CocoAnnotation>();
        var dets = new List<Detection>();
        var annJson = new List<object>();
        var detJson = new List<object>();
        long id = 1;
        foreach (var image in images)
        {
            var n = rng.Next(0, 7);
            for (var j = 0; j < n; j++)
            {
                var w = rng.Next(4, 120);
                var h = rng.Next(4, 120);
                var x = rng.Next(0, size - w);
                var y = rng.Next(0, size - h);
                var cat = rng.Next(1, 4);
                var crowd = rng.NextDouble() < 0.1;
                var mask = RectMask(x, y, w, h, size);
                var box = new BoxXywh(x, y, w, h);
                var area = segm ? mask.Area : (double)w * h;
                anns.Add(new CocoAnnotation(id, image.Id, cat, box, area, crowd, mask));
                annJson.Add(new { id, image_id = image.Id, category_id = cat, bbox = new double[] { x, y, w, h }, area, iscrowd = crowd ? 1 : 0, segmentation = new { size = new[] { size, size }, counts = mask.Counts } });
                id++;
                var copies = rng.Next(0, 3); // 0 = missed, 2 = a duplicate
                for (var k = 0; k < copies; k++)
                {
                    var dx = rng.Next(-w / 8, w / 8 + 1);
                    var dy = rng.Next(-h / 8, h / 8 + 1);
                    var dw = Math.Max(2, w + rng.Next(-w / 8, w / 8 + 1));
                    var dh = Math.Max(2, h + rng.Next(-h / 8, h / 8 + 1));
                    int nx = Math.Clamp(x + dx, 0, size - dw), ny = Math.Clamp(y + dy, 0, size - dh);
                    var dcat = rng.NextDouble() < 0.15 ? rng.Next(1, 4) : cat;
                    AddDet(image.Id, dcat, nx, ny, dw, dh);
                }
            }
            var spurious = rng.Next(0, 4);
            for (var j = 0; j < spurious; j++)
            {
                int w = rng.Next(3, 60), h = rng.Next(3, 60);
                AddDet(image.Id, rng.Next(1, 4), rng.Next(0, size - w), rng.Next(0, size - h), w, h);
            }
        }

        void AddDet(long imageId, int cat, int x, int y, int w, int h)
        {
            // Scores on a coarse grid so ties occur and ordering rules are exercised.
            var score = Math.Round(rng.NextDouble() * 20) / 20;
            var mask = RectMask(x, y, w, h, size);
            dets.Add(new Detection(imageId, cat, score, new BoxXywh(x, y, w, h), mask));
            detJson.Add(new { image_id = imageId, category_id = cat, score, bbox = new double[] { x, y, w, h }, segmentation = new { size = new[] { size, size }, counts = mask.Counts } });
        }

        var gtJson = JsonSerializer.Serialize(new
        {
            images = images.Select(i => new { id = i.Id, width = i.Width, height = i.Height, file_name = i.FileName }),
            categories = cats.Select(c => new { id = c.Id, name = c.Name }),
            annotations = annJson,
        });
        return (gtJson, JsonSerializer.Serialize(detJson), new CocoDataset(images, cats, anns), dets);
    }

    /// <summary>A rectangle with a notch cut out of it, so masks and boxes disagree.</summary>
    private static Rle RectMask(int x, int y, int w, int h, int size)
    {
        var m = new byte[size * size];
        for (var yy = y; yy < y + h; yy++)
        for (var xx = x; xx < x + w; xx++)
            if (!(xx < x + w / 3 && yy < y + h / 3))
                m[yy * size + xx] = 1;
        return Rle.FromRowMajor(m, size, size);
    }
}
