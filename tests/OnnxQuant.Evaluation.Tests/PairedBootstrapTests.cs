using OnnxQuant.Evaluation;

namespace OnnxQuant.Evaluation.Tests;

/// <summary>
/// AP over weighted images and the paired bootstrap of two models' AP, on a seeded synthetic set: 40 images of
/// 1-4 boxes in two categories; each "model" finds every object with its box jittered by its own amount and a
/// continuous random score, plus one false detection on every third image.
/// </summary>
public sealed class PairedBootstrapTests
{
    private const int Images = 40;

    private static CocoDataset GroundTruth()
    {
        var random = new Random(3);
        var images = Enumerable.Range(1, Images).Select(i => new CocoImage(i, 200, 200, $"{i}.png")).ToList();
        var annotations = new List<CocoAnnotation>();
        foreach (var image in images)
            for (var k = random.Next(1, 5); k > 0; k--)
            {
                double w = random.Next(20, 80), h = random.Next(20, 80), x = random.Next(0, 120), y = random.Next(0, 120);
                annotations.Add(new CocoAnnotation(annotations.Count + 1, image.Id, 1 + random.Next(2), new BoxXywh(x, y, w, h), w * h, false, null));
            }
        return new CocoDataset(images, [new CocoCategory(1, "square"), new CocoCategory(2, "disc")], annotations);
    }

    private static List<Detection> Model(CocoDataset gt, double jitter, int seed)
    {
        var random = new Random(seed);
        var detections = new List<Detection>();
        foreach (var a in gt.Annotations)
        {
            double J() => (random.NextDouble() * 2 - 1) * jitter;
            detections.Add(new Detection(a.ImageId, a.CategoryId, 0.3 + 0.7 * random.NextDouble(),
                new BoxXywh(a.Box.X + J(), a.Box.Y + J(), Math.Max(1, a.Box.W + J()), Math.Max(1, a.Box.H + J()))));
        }
        foreach (var image in gt.Images.Where(i => i.Id % 3 == 0))
            detections.Add(new Detection(image.Id, 1, 0.6 * random.NextDouble(), new BoxXywh(150, 150, 30, 30)));
        return detections;
    }

    [Fact]
    public void EveryImageOnceGivesTheSummaryAp()
    {
        var gt = GroundTruth();
        var matches = CocoEvaluator.Match(gt, Model(gt, 8, 1), IouType.Bbox);
        var ap = matches.Ap(Enumerable.Repeat(1, Images).ToArray());
        Assert.Equal(matches.Metrics().AP, ap);
        Assert.InRange(ap!.Value, 0.2, 0.95); // neither trivial nor perfect, so the weights below matter
    }

    [Fact]
    public void WeightsEqualThatManyCopiesOfEachImage()
    {
        var gt = GroundTruth();
        var detections = Model(gt, 8, 1);
        var random = new Random(11);
        var weights = Enumerable.Range(0, Images).Select(_ => random.Next(0, 4)).ToArray();
        Assert.Contains(0, weights);
        Assert.Contains(3, weights);

        // Image i repeated weights[i] times under new ids (i * 10 + copy: copies stay in image order).
        var images = new List<CocoImage>();
        var annotations = new List<CocoAnnotation>();
        var copied = new List<Detection>();
        for (var i = 0; i < Images; i++)
            for (var c = 0; c < weights[i]; c++)
            {
                var id = (i + 1) * 10L + c;
                images.Add(new CocoImage(id, 200, 200, $"{id}.png"));
                annotations.AddRange(gt.Annotations.Where(a => a.ImageId == i + 1).Select(a => a with { Id = annotations.Count + 1000 * id, ImageId = id }));
                copied.AddRange(detections.Where(d => d.ImageId == i + 1).Select(d => d with { ImageId = id }));
            }
        var repeated = CocoEvaluator.Evaluate(new CocoDataset(images, gt.Categories, annotations), copied, IouType.Bbox).AP;
        var weighted = CocoEvaluator.Match(gt, detections, IouType.Bbox).Ap(weights);
        Assert.NotNull(repeated);
        Assert.Equal(repeated!.Value, weighted!.Value, 12);
    }

    [Fact]
    public void AModelAgainstItselfDiffersByNothing()
    {
        var gt = GroundTruth();
        var matches = CocoEvaluator.Match(gt, Model(gt, 8, 1), IouType.Bbox);
        var r = PairedBootstrap.Compare(matches, matches, 100);
        Assert.Equal((0.0, 0.0, 0.0, 0.0), (r.Difference, r.Lower, r.Upper, r.SecondHigher));
    }

    [Fact]
    public void ATighterModelIsResolvedTheSameWayOnEveryCall()
    {
        var gt = GroundTruth();
        var loose = CocoEvaluator.Match(gt, Model(gt, 12, 1), IouType.Bbox);
        var tight = CocoEvaluator.Match(gt, Model(gt, 3, 2), IouType.Bbox);
        var r = PairedBootstrap.Compare(loose, tight, 200);
        Assert.True(r.Difference > 0.1, $"tighter boxes should score higher: {r.Difference}");
        Assert.InRange(r.Difference, r.Lower, r.Upper);
        Assert.True(r.Lower > 0, $"interval [{r.Lower}, {r.Upper}] should exclude 0");
        Assert.True(r.SecondHigher >= 0.95, $"higher on {r.SecondHigher} of the resamples");
        Assert.Equal(r, PairedBootstrap.Compare(loose, tight, 200));
        // Swapping the models mirrors the interval.
        var swapped = PairedBootstrap.Compare(tight, loose, 200);
        Assert.Equal(-r.Difference, swapped.Difference, 12);
        Assert.Equal(-r.Upper, swapped.Lower, 12);
    }

    [Fact]
    public void ModelsEvaluatedOnDifferentImagesAreRefused()
    {
        var gt = GroundTruth();
        var fewer = new CocoDataset(gt.Images.Take(Images - 1).ToList(), gt.Categories,
            gt.Annotations.Where(a => a.ImageId < Images).ToList());
        var a = CocoEvaluator.Match(gt, Model(gt, 8, 1), IouType.Bbox);
        var b = CocoEvaluator.Match(fewer, Model(fewer, 8, 1), IouType.Bbox);
        Assert.Throws<ArgumentException>(() => PairedBootstrap.Compare(a, b, 10));
        Assert.Throws<ArgumentException>(() => a.Ap(new int[Images - 1]));
    }
}
