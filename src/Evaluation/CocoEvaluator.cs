namespace OnnxQuant.Evaluation;

/// <summary>
/// COCO's detection metrics, computed the way the published protocol defines them:
/// <list type="bullet">
/// <item>per image and category, detections sorted by score (ties keep input order) and cut to the largest maxDets;</item>
/// <item>greedy matching per IoU threshold: each detection, best score first, takes the unmatched ground truth with the
/// highest IoU at or above the threshold, preferring objects that count over ignored ones (crowd regions, objects
/// outside the area range); crowd regions can absorb any number of detections and use intersection over the
/// detection's area;</item>
/// <item>detections matched to an ignored object, or unmatched and outside the area range, are ignored;</item>
/// <item>precision is made monotone and sampled at 101 recall points (0 beyond the highest recall reached); AP is the
/// mean over IoU thresholds, recall points and categories that have ground truth; AR is the highest recall reached,
/// averaged over thresholds and categories.</item>
/// </list>
/// </summary>
public static class CocoEvaluator
{
    // The distance from 1.0 to the next double, added to precision's denominator as the reference does.
    private const double Epsilon = 2.220446049250313e-16;

    public static CocoMetrics Evaluate(CocoDataset groundTruth, IReadOnlyList<Detection> detections, IouType iouType, CocoParams? parameters = null) =>
        Match(groundTruth, detections, iouType, parameters).Metrics();

    /// <summary>
    /// The per-image matching of <see cref="Evaluate"/> (the expensive part), kept so that metrics over weighted or
    /// resampled images (<see cref="CocoMatches.Ap"/>, <see cref="PairedBootstrap"/>) need no second matching.
    /// </summary>
    public static CocoMatches Match(CocoDataset groundTruth, IReadOnlyList<Detection> detections, IouType iouType, CocoParams? parameters = null)
    {
        var p = parameters ?? new CocoParams();
        var imageIds = groundTruth.Images.Select(i => i.Id).Order().ToArray();
        var categories = groundTruth.Categories.OrderBy(c => c.Id).ToArray();
        var categoryIndex = categories.Select((c, i) => (c.Id, i)).ToDictionary(x => x.Id, x => x.i);
        var imageIndex = imageIds.Select((id, i) => (id, i)).ToDictionary(x => x.id, x => x.i);
        int nImages = imageIds.Length, nCats = categories.Length;
        var nA = p.AreaRanges.Count;
        var maxDet = p.MaxDetections.Max();

        var gts = new List<CocoAnnotation>?[nImages, nCats];
        foreach (var a in groundTruth.Annotations)
        {
            if (!categoryIndex.TryGetValue(a.CategoryId, out var k))
                continue;
            if (iouType == IouType.Segm && a.Segmentation is null)
                throw new ArgumentException($"annotation {a.Id} has no segmentation; mask AP needs one for every object");
            (gts[imageIndex[a.ImageId], k] ??= []).Add(a);
        }
        var dts = new List<Detection>?[nImages, nCats];
        foreach (var d in detections)
        {
            if (!imageIndex.TryGetValue(d.ImageId, out var i))
                throw new ArgumentException($"a detection refers to image {d.ImageId}, which is not in the ground truth");
            if (!categoryIndex.TryGetValue(d.CategoryId, out var k))
                continue; // a category the ground truth does not define is not evaluated
            if (iouType == IouType.Segm && d.Mask is null)
                throw new ArgumentException($"a detection on image {d.ImageId} has no mask; mask AP needs one for every detection");
            (dts[i, k] ??= []).Add(d);
        }

        // evaluated[k, a, i]: matching result of image i, category k, area range a (null when neither side has objects).
        var evaluated = new ImageResult?[nCats, nA, nImages];
        for (var k = 0; k < nCats; k++)
        for (var i = 0; i < nImages; i++)
        {
            var g = gts[i, k] ?? [];
            var d = (dts[i, k] ?? []).OrderByDescending(x => x.Score).Take(maxDet).ToList();
            if (g.Count == 0 && d.Count == 0)
                continue;
            var ious = ComputeIous(d, g, iouType, groundTruth.ImagesById[imageIds[i]]);
            for (var a = 0; a < nA; a++)
                evaluated[k, a, i] = MatchImage(d, g, ious, p.AreaRanges[a], iouType, p.IouThresholds);
        }

        return new CocoMatches(evaluated, imageIds, categories, p);
    }

    /// <summary>Matching of one image and category in one area range, at every IoU threshold.</summary>
    internal sealed class ImageResult(double[] scores, bool[,] matched, bool[,] ignored, int countedGt)
    {
        /// <summary>Scores of the detections, best first.</summary>
        public double[] Scores { get; } = scores;
        /// <summary>[threshold, detection]: matched to a ground-truth object.</summary>
        public bool[,] Matched { get; } = matched;
        /// <summary>[threshold, detection]: ignored (matched to an ignored object, or unmatched outside the range).</summary>
        public bool[,] Ignored { get; } = ignored;
        /// <summary>Ground-truth objects that count (not crowd, inside the area range).</summary>
        public int CountedGt { get; } = countedGt;
    }

    private static double[,] ComputeIous(List<Detection> d, List<CocoAnnotation> g, IouType type, CocoImage image)
    {
        var ious = new double[d.Count, g.Count];
        if (type == IouType.Bbox)
        {
            for (var i = 0; i < d.Count; i++)
            for (var j = 0; j < g.Count; j++)
                ious[i, j] = d[i].Box.Iou(g[j].Box, g[j].IsCrowd);
            return ious;
        }
        var dAreas = d.Select(x => x.Mask!.Area).ToArray();
        var gAreas = g.Select(x => x.Segmentation!.Area).ToArray();
        for (var i = 0; i < d.Count; i++)
        {
            var dm = d[i].Mask!;
            if (dm.Height != image.Height || dm.Width != image.Width)
                throw new ArgumentException(
                    $"a mask on image {image.Id} is {dm.Height}x{dm.Width}, the image is {image.Height}x{image.Width}");
            for (var j = 0; j < g.Count; j++)
            {
                var inter = Rle.IntersectionArea(dm, g[j].Segmentation!);
                double union = g[j].IsCrowd ? dAreas[i] : dAreas[i] + gAreas[j] - inter;
                ious[i, j] = union > 0 ? inter / union : 0;
            }
        }
        return ious;
    }

    private static ImageResult MatchImage(List<Detection> dets, List<CocoAnnotation> gtsIn, double[,] iousIn,
        (double Min, double Max) range, IouType type, IReadOnlyList<double> thresholds)
    {
        // Objects that count come first, so a detection settles for an ignored object only when no counted one fits.
        var gtIgnoredIn = gtsIn.Select(g => g.IsCrowd || g.Area < range.Min || g.Area > range.Max).ToArray();
        var order = Enumerable.Range(0, gtsIn.Count).OrderBy(j => gtIgnoredIn[j] ? 1 : 0).ToArray();
        var gtIgnored = order.Select(j => gtIgnoredIn[j]).ToArray();
        var crowd = order.Select(j => gtsIn[j].IsCrowd).ToArray();
        int nT = thresholds.Count, nD = dets.Count, nG = order.Length;
        var gtTaken = new bool[nT, nG];
        var matched = new bool[nT, nD];
        var ignored = new bool[nT, nD];
        for (var t = 0; t < nT; t++)
        {
            for (var di = 0; di < nD; di++)
            {
                var best = Math.Min(thresholds[t], 1 - 1e-10);
                var m = -1;
                for (var gi = 0; gi < nG; gi++)
                {
                    if (gtTaken[t, gi] && !crowd[gi])
                        continue;
                    // Already matched to a counted object and only ignored ones remain: stop looking.
                    if (m > -1 && !gtIgnored[m] && gtIgnored[gi])
                        break;
                    var iou = iousIn[di, order[gi]];
                    if (iou < best)
                        continue;
                    best = iou;
                    m = gi;
                }
                if (m == -1)
                    continue;
                ignored[t, di] = gtIgnored[m];
                matched[t, di] = true;
                gtTaken[t, m] = true;
            }
        }
        for (var di = 0; di < nD; di++)
        {
            // A detection's own area decides whether it falls outside the range: the box for boxes, the mask for masks.
            var area = type == IouType.Bbox ? dets[di].Box.Area : dets[di].Mask!.Area;
            if (area < range.Min || area > range.Max)
                for (var t = 0; t < nT; t++)
                    if (!matched[t, di])
                        ignored[t, di] = true;
        }
        return new ImageResult(dets.Select(d => d.Score).ToArray(), matched, ignored, gtIgnored.Count(x => !x));
    }

    /// <param name="weights">Times each image counts (null = once).</param>
    /// <param name="outArea">Index of the area range in the outputs (default: <paramref name="a"/>).</param>
    /// <param name="outMax">Index of the detection limit in the outputs (default: <paramref name="m"/>).</param>
    internal static void Accumulate(ImageResult?[,,] evaluated, int k, int a, int m, CocoParams p,
        double[,,,,] precision, double[,,,] recall, int nImages, int[]? weights, int? outArea = null, int? outMax = null)
    {
        int oa = outArea ?? a, om = outMax ?? m;
        var maxDet = p.MaxDetections[m];
        var entries = new List<(double Score, int Image, int Det)>();
        var counted = 0;
        var any = false;
        for (var i = 0; i < nImages; i++)
        {
            var e = evaluated[k, a, i];
            if (e is null || weights is { } ws && ws[i] == 0)
                continue;
            any = true;
            counted += e.CountedGt * (weights?[i] ?? 1);
            for (var d = 0; d < Math.Min(maxDet, e.Scores.Length); d++)
                entries.Add((e.Scores[d], i, d));
        }
        if (!any || counted == 0)
            return;
        // Stable sort by descending score: ties keep image order, then rank within the image.
        var sorted = entries.Select((x, idx) => (x, idx)).OrderByDescending(z => z.x.Score).ThenBy(z => z.idx).Select(z => z.x).ToArray();
        int nT = p.IouThresholds.Count, nR = p.RecallThresholds.Count;
        for (var t = 0; t < nT; t++)
        {
            var rc = new List<double>(sorted.Length);
            var pr = new List<double>(sorted.Length);
            double tp = 0, fp = 0;
            foreach (var (_, i, d) in sorted)
            {
                var e = evaluated[k, a, i]!;
                if (e.Ignored[t, d])
                    continue;
                var copies = weights?[i] ?? 1;
                if (e.Matched[t, d]) tp += copies;
                else fp += copies;
                rc.Add(tp / counted);
                pr.Add(tp / (tp + fp + Epsilon));
            }
            recall[t, k, oa, om] = rc.Count > 0 ? rc[^1] : 0;
            // Interpolated precision: the best precision at any recall at least as high.
            for (var j = pr.Count - 1; j > 0; j--)
                if (pr[j] > pr[j - 1])
                    pr[j - 1] = pr[j];
            var pos = 0;
            for (var r = 0; r < nR; r++)
            {
                // First detection whose recall reaches the threshold; precision 0 when recall never gets there.
                while (pos < rc.Count && rc[pos] < p.RecallThresholds[r])
                    pos++;
                precision[t, r, k, oa, om] = pos < rc.Count ? pr[pos] : 0;
            }
        }
    }

    internal static void Fill(double[,,,,] array, double value)
    {
        if (array.Length > 0)
            System.Runtime.InteropServices.MemoryMarshal.CreateSpan(ref array[0, 0, 0, 0, 0], array.Length).Fill(value);
    }

    internal static void Fill(double[,,,] array, double value)
    {
        if (array.Length > 0)
            System.Runtime.InteropServices.MemoryMarshal.CreateSpan(ref array[0, 0, 0, 0], array.Length).Fill(value);
    }
}

/// <summary>
/// Detections matched to the ground truth per image, category and area range (<see cref="CocoEvaluator.Match"/>):
/// the full summary, or AP with each image counted a given number of times, as a resample of the images would.
/// </summary>
public sealed class CocoMatches
{
    private readonly CocoEvaluator.ImageResult?[,,] _evaluated;
    private readonly CocoCategory[] _categories;
    private readonly CocoParams _params;

    internal CocoMatches(CocoEvaluator.ImageResult?[,,] evaluated, long[] imageIds, CocoCategory[] categories, CocoParams parameters)
    {
        _evaluated = evaluated;
        ImageIds = imageIds;
        _categories = categories;
        _params = parameters;
    }

    /// <summary>The images in the order weights refer to them (ascending id).</summary>
    public IReadOnlyList<long> ImageIds { get; }

    /// <summary>
    /// AP (IoU 0.50:0.95, all areas, the most detections) with image i counted <paramref name="weights"/>[i] times
    /// (0 leaves it out): its objects count that many times and its detections enter the ranking that many times, in
    /// one step each, which gives the same precision at every recall point as that many copies of the image. Null
    /// when no counted object remains.
    /// </summary>
    public double? Ap(ReadOnlySpan<int> weights)
    {
        if (weights.Length != ImageIds.Count)
            throw new ArgumentException($"{weights.Length} weights for {ImageIds.Count} images", nameof(weights));
        var p = _params;
        int nT = p.IouThresholds.Count, nR = p.RecallThresholds.Count, nCats = _categories.Length, last = p.MaxDetections.Count - 1;
        var precision = new double[nT, nR, nCats, 1, 1];
        var recall = new double[nT, nCats, 1, 1];
        CocoEvaluator.Fill(precision, -1);
        CocoEvaluator.Fill(recall, -1);
        var w = weights.ToArray();
        for (var k = 0; k < nCats; k++)
            CocoEvaluator.Accumulate(_evaluated, k, 0, last, p, precision, recall, ImageIds.Count, w, outArea: 0, outMax: 0);
        double sum = 0;
        long n = 0;
        foreach (var v in precision)
            if (v > -1) { sum += v; n++; }
        return n == 0 ? null : sum / n;
    }

    /// <summary>The twelve COCO numbers and per-category AP, every image counted once.</summary>
    public CocoMetrics Metrics()
    {
        var p = _params;
        var categories = _categories;
        int nImages = ImageIds.Count, nCats = categories.Length;
        int nT = p.IouThresholds.Count, nR = p.RecallThresholds.Count, nA = p.AreaRanges.Count, nM = p.MaxDetections.Count;
        // precision[t, r, k, a, m] and recall[t, k, a, m]; -1 = undefined (no ground truth).
        var precision = new double[nT, nR, nCats, nA, nM];
        var recall = new double[nT, nCats, nA, nM];
        CocoEvaluator.Fill(precision, -1);
        CocoEvaluator.Fill(recall, -1);
        for (var k = 0; k < nCats; k++)
        for (var a = 0; a < nA; a++)
        for (var m = 0; m < nM; m++)
            CocoEvaluator.Accumulate(_evaluated, k, a, m, p, precision, recall, nImages, null);

        double? Ap(int a, int m, double? iou = null, int? category = null)
        {
            double sum = 0;
            long n = 0;
            for (var t = 0; t < nT; t++)
            {
                if (iou is { } thr && Math.Abs(p.IouThresholds[t] - thr) > 1e-9)
                    continue;
                for (var r = 0; r < nR; r++)
                for (var k = 0; k < nCats; k++)
                {
                    if (category is { } only && only != k)
                        continue;
                    var v = precision[t, r, k, a, m];
                    if (v > -1) { sum += v; n++; }
                }
            }
            return n == 0 ? null : sum / n;
        }

        double? Ar(int a, int m)
        {
            double sum = 0;
            long n = 0;
            for (var t = 0; t < nT; t++)
            for (var k = 0; k < nCats; k++)
            {
                var v = recall[t, k, a, m];
                if (v > -1) { sum += v; n++; }
            }
            return n == 0 ? null : sum / n;
        }

        // The summary always reads the default ranges by position: all, small, medium, large; maxDets 1, 10, 100.
        int last = nM - 1, mid = Math.Min(1, last);
        var perCategory = categories.Select((c, k) => new CategoryAp(c.Id, c.Name, Ap(0, last, category: k))).ToList();
        return new CocoMetrics(
            Ap(0, last), Ap(0, last, 0.5), Ap(0, last, 0.75),
            Ap(Math.Min(1, nA - 1), last), Ap(Math.Min(2, nA - 1), last), Ap(Math.Min(3, nA - 1), last),
            Ar(0, 0), Ar(0, mid), Ar(0, last),
            Ar(Math.Min(1, nA - 1), last), Ar(Math.Min(2, nA - 1), last), Ar(Math.Min(3, nA - 1), last),
            perCategory);
    }

}
