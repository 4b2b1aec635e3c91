using BenchmarkDotNet.Attributes;
using OnnxQuant.Data;
using OnnxQuant.Evaluation;

namespace OnnxQuant.Benchmarks;

/// <summary>
/// COCO scoring cost on a synthetic set the size of a typical eval split (500 images, 5 categories, ~4 objects and
/// 100 detections per image, 128x128 masks), and reading a float image batch from .npz.
/// </summary>
[MemoryDiagnoser]
public class CocoEvalBenchmarks
{
    private CocoDataset _gt = null!;
    private List<Detection> _dets = null!;
    private byte[] _npz = null!;

    [GlobalSetup]
    public void Setup()
    {
        const int size = 128, images = 500;
        var rng = new Random(0);
        var imgs = Enumerable.Range(1, images).Select(i => new CocoImage(i, size, size, "")).ToList();
        var cats = Enumerable.Range(1, 5).Select(c => new CocoCategory(c, $"c{c}")).ToList();
        var anns = new List<CocoAnnotation>();
        _dets = [];
        long id = 1;
        foreach (var image in imgs)
        {
            var objects = new List<(int X, int Y, int W, int H, int Cat)>();
            for (var j = 0; j < rng.Next(1, 8); j++)
            {
                int w = rng.Next(8, 64), h = rng.Next(8, 64);
                objects.Add((rng.Next(0, size - w), rng.Next(0, size - h), w, h, rng.Next(1, 6)));
            }
            foreach (var o in objects)
            {
                var mask = Rect(o.X, o.Y, o.W, o.H, size);
                anns.Add(new CocoAnnotation(id++, image.Id, o.Cat, new BoxXywh(o.X, o.Y, o.W, o.H), mask.Area, false, mask));
            }
            for (var q = 0; q < 100; q++)
            {
                var o = objects[q % objects.Count];
                int dx = rng.Next(-6, 7), dy = rng.Next(-6, 7);
                int x = Math.Clamp(o.X + dx, 0, size - o.W), y = Math.Clamp(o.Y + dy, 0, size - o.H);
                _dets.Add(new Detection(image.Id, q < objects.Count ? o.Cat : rng.Next(1, 6), rng.NextDouble(),
                    new BoxXywh(x, y, o.W, o.H), Rect(x, y, o.W, o.H, size)));
            }
        }
        _gt = new CocoDataset(imgs, cats, anns);

        var pixels = new float[64 * 3 * size * size];
        for (var i = 0; i < pixels.Length; i++)
            pixels[i] = (float)rng.NextDouble();
        using var ms = new MemoryStream();
        Npz.Write(ms, [new NamedArray("images", NpyArray.FromFloats(pixels, 64, 3, size, size))], compress: true);
        _npz = ms.ToArray();
    }

    private static Rle Rect(int x, int y, int w, int h, int size)
    {
        var m = new byte[size * size];
        for (var yy = y; yy < y + h; yy++)
            m.AsSpan(yy * size + x, w).Fill(1);
        return Rle.FromRowMajor(m, size, size);
    }

    [Benchmark]
    public double? BboxAp() => CocoEvaluator.Evaluate(_gt, _dets, IouType.Bbox).AP;

    [Benchmark]
    public double? SegmAp() => CocoEvaluator.Evaluate(_gt, _dets, IouType.Segm).AP;

    [Benchmark]
    public int ReadNpz64Images() => Npz.Read(new MemoryStream(_npz)).Count;
}
