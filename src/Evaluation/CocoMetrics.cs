namespace OnnxQuant.Evaluation;

/// <summary>
/// The twelve COCO summary numbers. Each is null when it is undefined: no ground truth in that area range (or
/// at all), exactly where COCO's own summary prints -1.
/// </summary>
public sealed record CocoMetrics(
    double? AP, double? AP50, double? AP75, double? APs, double? APm, double? APl,
    double? AR1, double? AR10, double? AR100, double? ARs, double? ARm, double? ARl,
    IReadOnlyList<CategoryAp> PerCategory)
{
    /// <summary>The metrics in COCO's summary order, with their names, for tables and JSON.</summary>
    public IReadOnlyList<(string Name, double? Value)> Summary =>
    [
        ("AP", AP), ("AP50", AP50), ("AP75", AP75), ("APs", APs), ("APm", APm), ("APl", APl),
        ("AR1", AR1), ("AR10", AR10), ("AR100", AR100), ("ARs", ARs), ("ARm", ARm), ("ARl", ARl),
    ];
}

/// <summary>AP (IoU 0.50:0.95, all areas, 100 detections) of one category; null when it has no ground truth.</summary>
public sealed record CategoryAp(long CategoryId, string Name, double? AP);

/// <summary>The settings of COCO's protocol; the defaults are the published ones.</summary>
public sealed record CocoParams
{
    /// <summary>IoU thresholds 0.50, 0.55, ..., 0.95.</summary>
    public IReadOnlyList<double> IouThresholds { get; init; } = Linspace(0.5, 0.95, 10);

    /// <summary>Recall points 0, 0.01, ..., 1 at which interpolated precision is sampled.</summary>
    public IReadOnlyList<double> RecallThresholds { get; init; } = Linspace(0, 1, 101);

    /// <summary>Detections kept per image (highest scores first); the last is the one matching runs with.</summary>
    public IReadOnlyList<int> MaxDetections { get; init; } = [1, 10, 100];

    /// <summary>Area ranges all, small (&lt; 32²), medium (32²..96²), large (&gt; 96²), bounds inclusive.</summary>
    public IReadOnlyList<(double Min, double Max)> AreaRanges { get; init; } =
        [(0, 1e10), (0, 32 * 32), (32 * 32, 96 * 96), (96 * 96, 1e10)];

    /// <summary>
    /// Evenly spaced values computed as start + i * step with the last set to stop, bit for bit the values the
    /// reference implementation uses (0.35000000000000003, not 0.35): a recall or IoU that lands exactly on a
    /// threshold must fall on the same side of it.
    /// </summary>
    public static double[] Linspace(double start, double stop, int count)
    {
        var step = (stop - start) / (count - 1);
        var values = new double[count];
        for (var i = 0; i < count; i++)
            values[i] = i * step + start;
        values[^1] = stop;
        return values;
    }
}
