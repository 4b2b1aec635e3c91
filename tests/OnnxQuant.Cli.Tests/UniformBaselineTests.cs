using System.Globalization;
using System.Text.Json;
using OnnxQuant.Passes.Verify;

namespace OnnxQuant.Cli.Tests;

/// <summary>
/// The uniform baseline every compile measures: the width nearest each target, its predicted distortion from the
/// curves, and a measured distortion that is the one a compile restricted to that single width measures itself.
/// </summary>
public class UniformBaselineTests(CompileCliFixture fixture) : IClassFixture<CompileCliFixture>
{
    private string Out(string name) => Path.Combine(fixture.Root, name);

    [Theory]
    [InlineData(4.0, 4)]
    [InlineData(3.0, 3)]
    [InlineData(3.4, 3)]
    [InlineData(3.6, 4)]
    [InlineData(3.5, 3)] // a tie goes to the narrower width: never more bits than the mixed budget
    [InlineData(7.0, 6)] // 7 is not a candidate; 6 and 8 tie
    [InlineData(7.2, 8)]
    [InlineData(1.5, 2)]
    public void WidthIsTheNearestCandidate(double target, int width) =>
        Assert.Equal(width, UniformBaseline.WidthFor(target, [8, 2, 3, 4, 5, 6]));

    private static JsonElement Baseline(string report)
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(report));
        return doc.RootElement.Clone().GetProperty("uniform_baseline");
    }

    [Fact]
    public void MeasuredBaselineEqualsACompileAtThatOneWidth()
    {
        string[] common = ["--calib", fixture.DataPath, "--calib-samples", "16", "--verify-samples", "8", "--curves", "fast", "--no-cache", "--quiet"];
        var mixed = Out("baseline-mixed");
        var (code, stdout, stderr) = CliRunner.Run(["compile", fixture.ModelPath, .. common, "--target-bits", "3.5,4,8", "-o", mixed]);
        Assert.True(code == 0, stderr);
        var uniform4 = Out("baseline-uniform4");
        (code, _, stderr) = CliRunner.Run(["compile", fixture.ModelPath, .. common, "--target-bits", "4", "--bits", "4", "-o", uniform4]);
        Assert.True(code == 0, stderr);

        using var single = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(uniform4, "report.json")));
        var onlyFour = single.RootElement.GetProperty("distortion").GetProperty("measured").GetDouble();
        Assert.All(single.RootElement.GetProperty("units").EnumerateArray(), u => Assert.Equal(4, u.GetProperty("bits").GetInt32()));

        // Same calibration, same verification samples, same 4-bit weights: the same model, so the same figure.
        var at4 = Baseline(Path.Combine(mixed, "bits-4", "report.json"));
        Assert.Equal(4, at4.GetProperty("bits").GetInt32());
        Assert.Equal(4.0, at4.GetProperty("rate").GetDouble());
        Assert.Equal(onlyFour, at4.GetProperty("measured").GetDouble());
        Assert.Contains($"4b: {onlyFour.ToString("G3", CultureInfo.InvariantCulture)}", stdout);

        // 3.5 lies halfway: the narrower width; predicted = sum of the curves at 3 bits.
        using var report35 = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(mixed, "bits-3.5", "report.json")));
        var at35 = report35.RootElement.GetProperty("uniform_baseline");
        Assert.Equal(3, at35.GetProperty("bits").GetInt32());
        var sumAt3 = report35.RootElement.GetProperty("curves").GetProperty("units").EnumerateArray()
            .Sum(c => c.GetProperty("distortion")[c.GetProperty("bits").EnumerateArray().Select(b => b.GetInt32()).ToList().IndexOf(3)].GetDouble());
        Assert.Equal(sumAt3, at35.GetProperty("predicted").GetDouble(), 12);
        Assert.True(at35.GetProperty("measured").GetDouble() > 0);

        // At 8 bits the mixed allocation is uniform already: the baseline is that measurement, not a second one.
        using var report8 = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(mixed, "bits-8", "report.json")));
        var at8 = report8.RootElement.GetProperty("uniform_baseline");
        Assert.True(at8.GetProperty("same_as_mixed").GetBoolean());
        Assert.Equal(report8.RootElement.GetProperty("distortion").GetProperty("measured").GetDouble(), at8.GetProperty("measured").GetDouble());
    }

    [Fact]
    public void NoBaselineSaysWhyInTheReportAndTheSummary()
    {
        var dir = Out("baseline-none");
        var (code, stdout, stderr) = CliRunner.Run("compile", fixture.ModelPath, "--calib", fixture.DataPath, "--calib-samples", "16",
            "--curves", "fast", "--no-cache", "--quiet", "--no-baseline", "-o", dir);
        Assert.True(code == 0, stderr);
        Assert.Equal("--no-baseline: not measured", Baseline(Path.Combine(dir, "report.json")).GetProperty("skipped").GetString());
        Assert.Contains("uniform baseline --no-baseline: not measured", stdout);
        Assert.Contains("skipped: --no-baseline: not measured", File.ReadAllText(Path.Combine(dir, "report.html")));
    }
}
