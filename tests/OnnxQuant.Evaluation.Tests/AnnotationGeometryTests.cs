using System.Text;
using OnnxQuant.Data;
using OnnxQuant.Evaluation;

namespace OnnxQuant.Evaluation.Tests;

/// <summary>
/// Annotation geometry is checked against its image before anything is rasterized: negative sizes and areas,
/// polygons outside the image (which cost memory in proportion to their coordinates) and degenerate polygons are
/// refused with one message naming the annotation.
/// </summary>
public class AnnotationGeometryTests
{
    private static CocoDataset Load(string annotation, int width = 64, int height = 48)
    {
        var json = $$"""
            {"images": [{"id": 1, "width": {{width}}, "height": {{height}}}],
             "categories": [{"id": 1, "name": "a"}],
             "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "iscrowd": 0, {{annotation}} }]}
            """;
        return CocoDataset.Load(new MemoryStream(Encoding.UTF8.GetBytes(json)), "ann.json");
    }

    [Theory]
    [InlineData("\"bbox\": [1, 2, -3, 4], \"area\": 12", "width and height must be finite and >= 0")]
    [InlineData("\"bbox\": [1, 2, 3, 4], \"area\": -12", "an area is a finite number >= 0")]
    [InlineData("\"bbox\": [60, 2, 30, 4], \"area\": 12", "outside its 64x48 image")]
    [InlineData("\"bbox\": [1, 2, 3, 4], \"segmentation\": [[1, 1, 1e12, 1, 1e12, 1e12]]", "lies outside its 64x48 image")]
    [InlineData("\"bbox\": [1, 2, 3, 4], \"segmentation\": [[1, 1, 5, 5, 9, 9]]", "degenerate")]
    [InlineData("\"bbox\": [1, 2, 3, 4], \"segmentation\": [[1, 1, 5, 5]]", "at least 3 points")]
    [InlineData("\"bbox\": [1, 2, 3, 4], \"segmentation\": [[1, 1, 5, 5, 9]]", "x,y pairs")]
    public void BadGeometryIsRefused(string annotation, string message)
    {
        var ex = Assert.Throws<DataFormatException>(() => Load(annotation));
        Assert.Contains("annotations[0]", ex.Message);
        Assert.Contains(message, ex.Message);
    }

    [Fact]
    public void HugeImageSizesAreRefused()
    {
        var ex = Assert.Throws<DataFormatException>(() => Load("\"bbox\": [1, 2, 3, 4]", width: 1 << 20, height: 1 << 20));
        Assert.Contains($"width and height must be 1..{CocoDataset.MaxSide}", ex.Message);
    }

    [Fact]
    public void ValidGeometryWithinOnePixelOfTheBorderLoads()
    {
        var data = Load("\"bbox\": [0, 0, 64.5, 48], \"area\": 20, \"segmentation\": [[0, 0, 64.5, 0, 64.5, 48, 0, 48]]");
        var a = Assert.Single(data.Annotations);
        Assert.Equal(64.5, a.Box.W);
        Assert.Equal(64 * 48, a.Segmentation!.Area);
    }
}
