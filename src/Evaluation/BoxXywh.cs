namespace OnnxQuant.Evaluation;

/// <summary>An axis-aligned box in pixels: top-left corner (X, Y), width W and height H, as COCO stores boxes.</summary>
public readonly record struct BoxXywh(double X, double Y, double W, double H)
{
    public double Area => W * H;

    /// <summary>From corner coordinates (x1, y1, x2, y2).</summary>
    public static BoxXywh FromCorners(double x1, double y1, double x2, double y2) => new(x1, y1, x2 - x1, y2 - y1);

    /// <summary>
    /// COCO's box overlap: intersection over union, or intersection over this box's area when the other box is a crowd
    /// region (a detection inside a crowd is not penalised for the crowd being larger). 0 when nothing overlaps.
    /// </summary>
    public double Iou(BoxXywh gt, bool gtIsCrowd)
    {
        var w = Math.Min(X + W, gt.X + gt.W) - Math.Max(X, gt.X);
        if (w <= 0) return 0;
        var h = Math.Min(Y + H, gt.Y + gt.H) - Math.Max(Y, gt.Y);
        if (h <= 0) return 0;
        var intersection = w * h;
        var union = gtIsCrowd ? Area : Area + gt.Area - intersection;
        return union > 0 ? intersection / union : 0;
    }
}

/// <summary>One predicted object: image, category, confidence, box and (for instance segmentation) its mask.</summary>
public sealed record Detection(long ImageId, long CategoryId, double Score, BoxXywh Box, Rle? Mask = null);

/// <summary>Which geometry COCO evaluation compares: boxes or segmentation masks.</summary>
public enum IouType
{
    Bbox,
    Segm,
}
