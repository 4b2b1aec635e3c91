using System.Text.Json;

namespace OnnxQuant.Evaluation;

/// <summary>An image entry of a COCO annotation file.</summary>
public sealed record CocoImage(long Id, int Width, int Height, string FileName);

/// <summary>A category (class) entry of a COCO annotation file.</summary>
public sealed record CocoCategory(long Id, string Name);

/// <summary>
/// One ground-truth object. <see cref="Area"/> is the file's "area" (COCO uses it, not the box, to assign objects to
/// the small/medium/large ranges); <see cref="Segmentation"/> is null when the file gives none.
/// </summary>
public sealed record CocoAnnotation(long Id, long ImageId, long CategoryId, BoxXywh Box, double Area, bool IsCrowd, Rle? Segmentation);

/// <summary>Ground truth in COCO's JSON format: images, categories and annotations.</summary>
public sealed class CocoDataset
{
    public CocoDataset(IReadOnlyList<CocoImage> images, IReadOnlyList<CocoCategory> categories, IReadOnlyList<CocoAnnotation> annotations)
    {
        Images = images;
        Categories = categories;
        Annotations = annotations;
        var byId = new Dictionary<long, CocoImage>();
        ImagesById = byId;
        foreach (var image in images)
            if (!byId.TryAdd(image.Id, image))
                throw new ArgumentException($"two images have id {image.Id}");
        var categoryIds = new HashSet<long>();
        foreach (var category in categories)
            if (!categoryIds.Add(category.Id))
                throw new ArgumentException($"two categories have id {category.Id}");
        foreach (var a in annotations)
        {
            if (!ImagesById.ContainsKey(a.ImageId))
                throw new ArgumentException($"annotation {a.Id} refers to image {a.ImageId}, which is not in the images list");
            if (!categoryIds.Contains(a.CategoryId))
                throw new ArgumentException($"annotation {a.Id} refers to category {a.CategoryId}, which is not in the categories list");
        }
    }

    /// <summary>Images in file order (the order samples of an .npz are matched to, unless it names image ids).</summary>
    public IReadOnlyList<CocoImage> Images { get; }
    public IReadOnlyList<CocoCategory> Categories { get; }
    public IReadOnlyList<CocoAnnotation> Annotations { get; }
    public IReadOnlyDictionary<long, CocoImage> ImagesById { get; }

    /// <summary>True when at least one annotation carries a segmentation (polygons or RLE).</summary>
    public bool HasSegmentation => Annotations.Any(a => a.Segmentation is not null);

    /// <summary>Reads a COCO annotation file.</summary>
    /// <exception cref="Data.DataFormatException">Not valid JSON, or a field is missing or has the wrong type.</exception>
    public static CocoDataset Load(string path)
    {
        if (!File.Exists(path))
            throw new FileNotFoundException($"{path}: annotation file not found", path);
        OnnxQuant.Frontend.FileIdentity.RequireRegularFile(path, "annotation file");
        using var stream = File.OpenRead(path);
        return Load(stream, path);
    }

    public static CocoDataset Load(Stream stream, string source)
    {
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(stream, new JsonDocumentOptions { AllowTrailingCommas = true });
        }
        catch (JsonException ex)
        {
            throw new Data.DataFormatException($"{source}: not valid JSON ({ex.Message})", ex);
        }
        using (doc)
        {
            try
            {
                return Parse(doc.RootElement);
            }
            catch (Exception ex) when (ex is FormatException or InvalidOperationException or KeyNotFoundException or ArgumentException)
            {
                throw new Data.DataFormatException($"{source}: not a COCO annotation file: {ex.Message}", ex);
            }
        }
    }

    private static CocoDataset Parse(JsonElement root)
    {
        if (root.ValueKind != JsonValueKind.Object)
            throw new FormatException("the top level is not an object with images, annotations and categories");
        var images = Array("images", root).Select((e, i) => new CocoImage(
            Long(e, "id", $"images[{i}]"),
            (int)Long(e, "width", $"images[{i}]"),
            (int)Long(e, "height", $"images[{i}]"),
            e.TryGetProperty("file_name", out var f) && f.ValueKind == JsonValueKind.String ? f.GetString()! : "")).ToList();
        var categories = Array("categories", root).Select((e, i) => new CocoCategory(
            Long(e, "id", $"categories[{i}]"),
            e.TryGetProperty("name", out var n) && n.ValueKind == JsonValueKind.String ? n.GetString()! : "")).ToList();
        // Masks are rasterized at the image's size: a size or coordinate far outside it would cost unbounded memory.
        foreach (var (image, i) in images.Select((im, i) => (im, i)))
            if (image.Width is < 1 or > MaxSide || image.Height is < 1 or > MaxSide)
                throw new FormatException($"images[{i}] (id {image.Id}) is {image.Width}x{image.Height}; width and height must be 1..{MaxSide}");
        var imageSizes = images.GroupBy(im => im.Id).ToDictionary(g => g.Key, g => g.First());
        var annotations = new List<CocoAnnotation>();
        var index = 0;
        foreach (var e in Array("annotations", root))
        {
            var where = $"annotations[{index++}]";
            var imageId = Long(e, "image_id", where);
            if (!imageSizes.TryGetValue(imageId, out var image))
                throw new FormatException($"{where} refers to image {imageId}, which is not in the images list");
            var box = ReadBox(e, where, image);
            var isCrowd = e.TryGetProperty("iscrowd", out var c) && c.ValueKind == JsonValueKind.Number && c.GetInt32() != 0;
            Rle? segmentation = null;
            if (e.TryGetProperty("segmentation", out var seg) && seg.ValueKind != JsonValueKind.Null)
                segmentation = ReadSegmentation(seg, image.Height, image.Width, where);
            // COCO files always carry "area"; fall back to the mask or box area for files that leave it out.
            var area = e.TryGetProperty("area", out var a) && a.ValueKind == JsonValueKind.Number
                ? a.GetDouble()
                : segmentation?.Area ?? box.Area;
            if (!double.IsFinite(area) || area < 0)
                throw new FormatException($"{where} has area {area.ToString(System.Globalization.CultureInfo.InvariantCulture)}; an area is a finite number >= 0");
            var id = e.TryGetProperty("id", out var idEl) && idEl.ValueKind == JsonValueKind.Number ? idEl.GetInt64() : index;
            annotations.Add(new CocoAnnotation(id, imageId, Long(e, "category_id", where), box, area, isCrowd, segmentation));
        }
        return new CocoDataset(images, categories, annotations);
    }

    /// <summary>The largest image side accepted (masks are rasterized at the image's size).</summary>
    public const int MaxSide = 16384;

    /// <summary>How far (in pixels) a box or polygon may reach outside its image, for coordinates rounded outward.</summary>
    private const double Slack = 1.0;

    private static BoxXywh ReadBox(JsonElement e, string where, CocoImage image)
    {
        if (!e.TryGetProperty("bbox", out var b) || b.ValueKind != JsonValueKind.Array || b.GetArrayLength() != 4)
            throw new FormatException($"{where} has no \"bbox\" of 4 numbers [x, y, width, height]");
        var v = b.EnumerateArray().Select(x => x.GetDouble()).ToArray();
        if (v.Any(x => !double.IsFinite(x)) || v[2] < 0 || v[3] < 0)
            throw new FormatException($"{where} has bbox [{string.Join(", ", v.Select(F))}]; width and height must be finite and >= 0");
        if (v[0] < -Slack || v[1] < -Slack || v[0] + v[2] > image.Width + Slack || v[1] + v[3] > image.Height + Slack)
            throw new FormatException($"{where} has bbox [{string.Join(", ", v.Select(F))}] outside its {image.Width}x{image.Height} image {image.Id}");
        return new BoxXywh(v[0], v[1], v[2], v[3]);
    }

    private static string F(double x) => x.ToString(System.Globalization.CultureInfo.InvariantCulture);

    /// <summary>A polygon of at least 3 points inside the image (with <see cref="Slack"/>) that encloses some area.</summary>
    private static void CheckPolygon(IReadOnlyList<double> xy, int height, int width, string where)
    {
        if (xy.Count < 6 || xy.Count % 2 != 0)
            throw new FormatException($"{where}: a segmentation polygon has {xy.Count} coordinates; it needs x,y pairs of at least 3 points");
        var twiceArea = 0.0;
        for (var k = 0; k < xy.Count; k += 2)
        {
            double x = xy[k], y = xy[k + 1];
            if (!double.IsFinite(x) || !double.IsFinite(y) || x < -Slack || y < -Slack || x > width + Slack || y > height + Slack)
                throw new FormatException($"{where}: polygon point ({F(x)}, {F(y)}) lies outside its {width}x{height} image");
            var next = (k + 2) % xy.Count;
            twiceArea += x * xy[next + 1] - xy[next] * y;
        }
        if (twiceArea == 0)
            throw new FormatException($"{where}: a segmentation polygon is degenerate (its points enclose no area)");
    }

    /// <summary>Polygons ([[x, y, ...], ...]), uncompressed RLE ({"counts": [..], "size": [h, w]}) or compressed RLE.</summary>
    internal static Rle ReadSegmentation(JsonElement seg, int height, int width, string where)
    {
        if (seg.ValueKind == JsonValueKind.Array)
        {
            var polygons = seg.EnumerateArray().Select(p =>
            {
                if (p.ValueKind != JsonValueKind.Array)
                    throw new FormatException($"{where}: segmentation polygons must be arrays of numbers");
                var xy = (IReadOnlyList<double>)p.EnumerateArray().Select(x => x.GetDouble()).ToList();
                CheckPolygon(xy, height, width, where);
                return xy;
            }).ToList();
            if (polygons.Count == 0)
                return new Rle(height, width, [(uint)(height * width)]);
            return Rle.FromPolygons(polygons, height, width);
        }
        if (seg.ValueKind != JsonValueKind.Object)
            throw new FormatException($"{where}: segmentation is neither polygons nor an RLE object");
        if (!seg.TryGetProperty("size", out var size) || size.GetArrayLength() != 2)
            throw new FormatException($"{where}: RLE segmentation has no \"size\": [height, width]");
        var h = size[0].GetInt32();
        var w = size[1].GetInt32();
        if (h != height || w != width)
            throw new FormatException($"{where}: RLE size {h}x{w} differs from its image's {height}x{width}");
        if (!seg.TryGetProperty("counts", out var counts))
            throw new FormatException($"{where}: RLE segmentation has no \"counts\"");
        try
        {
            return counts.ValueKind switch
            {
                JsonValueKind.String => Rle.FromCompressedString(counts.GetString()!, h, w),
                JsonValueKind.Array => new Rle(h, w, counts.EnumerateArray().Select(x => x.GetUInt32()).ToArray()),
                _ => throw new FormatException($"{where}: RLE \"counts\" is neither a string nor an array"),
            };
        }
        catch (ArgumentException ex)
        {
            throw new FormatException($"{where}: {ex.Message}", ex);
        }
    }

    private static IEnumerable<JsonElement> Array(string name, JsonElement root)
    {
        if (!root.TryGetProperty(name, out var arr) || arr.ValueKind != JsonValueKind.Array)
            throw new FormatException($"no \"{name}\" array at the top level");
        return arr.EnumerateArray();
    }

    private static long Long(JsonElement e, string name, string where)
    {
        if (e.ValueKind != JsonValueKind.Object || !e.TryGetProperty(name, out var v) || v.ValueKind != JsonValueKind.Number)
            throw new FormatException($"{where} has no numeric \"{name}\"");
        return v.TryGetInt64(out var l) ? l : (long)v.GetDouble();
    }
}
