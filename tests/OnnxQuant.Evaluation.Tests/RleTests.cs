using System.Text;
using OnnxQuant.Data;
using OnnxQuant.Evaluation;

namespace OnnxQuant.Evaluation.Tests;

public sealed class RleTests
{
    [Fact]
    public void EncodesColumnMajorRunsStartingWithBackground()
    {
        // 3x2 mask, row-major:
        // 1 0
        // 1 1
        // 0 1   column-major: 1 1 0 | 0 1 1 -> runs 0,2,2,2
        var rle = Rle.FromRowMajor([1, 0, 1, 1, 0, 1], 3, 2);
        Assert.Equal([0u, 2u, 2u, 2u], rle.Counts);
        Assert.Equal(4, rle.Area);
        Assert.Equal(new byte[] { 1, 0, 1, 1, 0, 1 }, rle.ToRowMajor());
        Assert.Equal(new BoxXywh(0, 0, 2, 3), rle.ToBox());
    }

    [Fact]
    public void RejectsCountsThatDoNotCoverTheMask()
    {
        var ex = Assert.Throws<ArgumentException>(() => new Rle(4, 4, [3, 2]));
        Assert.Contains("cover 5 pixels", ex.Message);
    }

    [Theory]
    [InlineData(new uint[] { 0, 2, 3 }, "023")]
    [InlineData(new uint[] { 5, 10, 2, 3 }, "5:2I")] // 3 - 10 = -7: one group 25 with the sign bit
    [InlineData(new uint[] { 100 }, "T3")] // 100 = 4 + 3*32: groups 4 (with continuation) then 3
    public void CompressedStringMatchesHandEncoding(uint[] counts, string text)
    {
        var total = (int)counts.Sum(c => c);
        var rle = new Rle(total, 1, counts);
        Assert.Equal(text, rle.ToCompressedString());
        Assert.Equal(counts, Rle.FromCompressedString(text, total, 1).Counts);
    }

    [Fact]
    public void CompressedStringRoundTripsRandomMasks()
    {
        var rng = new Random(7);
        for (var trial = 0; trial < 20; trial++)
        {
            int h = rng.Next(1, 50), w = rng.Next(1, 50);
            var m = new byte[h * w];
            var p = rng.NextDouble();
            for (var i = 0; i < m.Length; i++)
                m[i] = (byte)(rng.NextDouble() < p ? 1 : 0);
            var rle = Rle.FromRowMajor(m, h, w);
            var back = Rle.FromCompressedString(rle.ToCompressedString(), h, w);
            Assert.Equal(m, back.ToRowMajor());
        }
    }

    [Fact]
    public void MalformedCompressedStringsAreRejected()
    {
        Assert.Throws<FormatException>(() => Rle.FromCompressedString("T", 100, 1)); // ends inside a count
        Assert.Throws<FormatException>(() => Rle.FromCompressedString("023", 10, 1)); // covers 5 of 10 pixels
        Assert.Throws<FormatException>(() => Rle.FromCompressedString("0 3", 5, 1));
    }

    [Fact]
    public void IntersectionWalksBothRunLists()
    {
        var a = Rle.FromRowMajor([1, 1, 0, 1, 1, 0, 0, 0, 1], 3, 3);
        var b = Rle.FromRowMajor([1, 0, 0, 1, 1, 1, 0, 1, 1], 3, 3);
        Assert.Equal(4, Rle.IntersectionArea(a, b)); // (0,0), (1,0), (1,1), (2,2)
        Assert.Equal(a.Area, Rle.IntersectionArea(a, a));
    }

    [Fact]
    public void AxisAlignedPolygonCoversItsPixels()
    {
        // The rectangle from (2, 3) to (12, 8) covers exactly the 10x5 pixels whose centres lie inside it.
        var rle = Rle.FromPolygon([2, 3, 12, 3, 12, 8, 2, 8], 20, 20);
        Assert.Equal(50, rle.Area);
        Assert.Equal(new BoxXywh(2, 3, 10, 5), rle.ToBox());
        // Vertex order (clockwise or not) does not matter.
        Assert.Equal(rle.Counts, Rle.FromPolygon([2, 3, 2, 8, 12, 8, 12, 3], 20, 20).Counts);
    }

    [Fact]
    public void TriangleCoversAboutHalfItsBox()
    {
        var rle = Rle.FromPolygon([0, 0, 40, 0, 0, 40], 50, 50);
        // Continuous area 800; the staircase along the hypotenuse stays within one pixel row of it.
        Assert.InRange(rle.Area, 800 - 40, 800 + 40);
        var mask = rle.ToRowMajor();
        Assert.Equal(1, mask[5 * 50 + 5]);
        Assert.Equal(0, mask[35 * 50 + 35]);
    }

    [Fact]
    public void PolygonsOutsideTheImageAreClipped()
    {
        var rle = Rle.FromPolygon([-5, -5, 5, -5, 5, 5, -5, 5], 10, 10);
        Assert.Equal(25, rle.Area);
    }

    [Fact]
    public void PolygonsOfOneObjectAreUnited()
    {
        var rle = Rle.FromPolygons([[0, 0, 4, 0, 4, 4, 0, 4], [2, 2, 6, 2, 6, 6, 2, 6]], 10, 10);
        Assert.Equal(16 + 16 - 4, rle.Area);
    }

    [Fact]
    public void LoadsAllThreeSegmentationFormsFromCocoJson()
    {
        var compressed = Rle.FromRowMajor(Enumerable.Range(0, 100).Select(i => (byte)(i % 10 < 5 && i < 50 ? 1 : 0)).ToArray(), 10, 10);
        var json = $$$"""
            {"images": [{"id": 3, "width": 10, "height": 10, "file_name": "x"}],
             "categories": [{"id": 1, "name": "thing"}],
             "annotations": [
               {"id": 1, "image_id": 3, "category_id": 1, "bbox": [2, 3, 4, 4], "area": 16, "iscrowd": 0,
                "segmentation": [[2, 3, 6, 3, 6, 7, 2, 7]]},
               {"id": 2, "image_id": 3, "category_id": 1, "bbox": [0, 0, 1, 3], "area": 3, "iscrowd": 1,
                "segmentation": {"size": [10, 10], "counts": [0, 3, 97]}},
               {"id": 3, "image_id": 3, "category_id": 1, "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 0,
                "segmentation": {"size": [10, 10], "counts": "{{{compressed.ToCompressedString()}}}"}}]}
            """;
        var ds = CocoDataset.Load(new MemoryStream(Encoding.UTF8.GetBytes(json)), "gt.json");
        Assert.Equal([16L, 3L, 25L], ds.Annotations.Select(a => a.Segmentation!.Area));
        Assert.True(ds.Annotations[1].IsCrowd);
        Assert.True(ds.HasSegmentation);
    }

    [Theory]
    [InlineData("[1, 2]", "top level")]
    [InlineData("{\"images\": [], \"categories\": []}", "no \"annotations\" array")]
    [InlineData("{\"images\": [{\"id\": 1, \"width\": 4, \"height\": 4}], \"categories\": [{\"id\": 1}], \"annotations\": [{\"id\": 1, \"image_id\": 2, \"category_id\": 1, \"bbox\": [0,0,1,1]}]}", "refers to image 2")]
    [InlineData("{\"images\": [{\"id\": 1, \"width\": 4, \"height\": 4}], \"categories\": [{\"id\": 1}], \"annotations\": [{\"id\": 1, \"image_id\": 1, \"category_id\": 1, \"bbox\": [0,0,1]}]}", "bbox")]
    [InlineData("{\"images\": [{\"id\": 1, \"width\": 4, \"height\": 4}], \"categories\": [{\"id\": 1}], \"annotations\": [{\"id\": 1, \"image_id\": 1, \"category_id\": 1, \"bbox\": [0,0,1,1], \"segmentation\": {\"size\": [4, 4], \"counts\": [1, 2]}}]}", "cover 3 pixels")]
    [InlineData("{\"images\": [", "not valid JSON")]
    public void MalformedAnnotationFilesAreReported(string json, string reason)
    {
        var ex = Assert.Throws<DataFormatException>(() => CocoDataset.Load(new MemoryStream(Encoding.UTF8.GetBytes(json)), "gt.json"));
        Assert.StartsWith("gt.json: ", ex.Message);
        Assert.Contains(reason, ex.Message);
    }
}
