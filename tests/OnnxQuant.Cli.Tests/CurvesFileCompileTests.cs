using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Nodes;
using OnnxQuant.Solvers;

namespace OnnxQuant.Cli.Tests;

/// <summary>
/// <c>compile --curves-file</c> / <c>--write-curves</c>: pinned curves reproduce an allocation and the artifact
/// bytes whatever was measured, curves perturbed in their last digits give the same allocation (tie rule), and a
/// curves file that does not fit the model fails with exit 2 before anything is written.
/// </summary>
public class CurvesFileCompileTests(CompileCliFixture fixture) : IClassFixture<CompileCliFixture>
{
    private static (int Code, string Out, string Err) Run(params string[] args) => CliRunner.Run(args);

    private string Out(string name) => Path.Combine(fixture.Root, name);

    private static string Sha(string path) => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(path)));

    private static Dictionary<string, int> Allocation(string reportPath)
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(reportPath));
        return doc.RootElement.GetProperty("units").EnumerateArray()
            .ToDictionary(u => u.GetProperty("name").GetString()!, u => u.GetProperty("bits").GetInt32());
    }

    /// <summary>Curves written by a compile of the small fixture model (3 units, widths 2,3,4,5,6,8).</summary>
    private string SmallCurves()
    {
        var path = Out("small.curves.json");
        if (File.Exists(path))
            return path;
        var (code, _, stderr) = Run("compile", fixture.ModelPath, "--calib", fixture.DataPath, "-o", Out("small-measured"), "--quiet",
            "--calib-samples", "16", "--cache-dir", Out("cache"), "--write-curves", path);
        Assert.True(code == 0, stderr);
        return path;
    }

    [Fact]
    public void DetrCurvesPerturbedOrPinnedGiveTheSameAllocationAndArtifact()
    {
        // The committed small DETR in ONNX Runtime, fast curves on 16 samples to keep the test short.
        var model = RepoPaths.File("models/fixtures/detr_small.onnx");
        var calib = RepoPaths.File("models/data/calib.npz");
        string[] common = ["--calib", calib, "--calib-samples", "16", "--verify-samples", "4", "--curves", "fast", "--target-bits", "8,4,3", "--quiet"];
        var curves = Out("detr.curves.json");
        var measured = Out("detr-measured");
        var (code, stdout, stderr) = Run(["compile", model, .. common, "-o", measured, "--cache-dir", Out("detr-cache"), "--write-curves", curves]);
        Assert.True(code == 0, stderr);
        Assert.Contains("(curves, 71 units)", stdout);

        // Every distortion times (1 + r), |r| <= 1e-6, fixed seed.
        var rng = new Random(11);
        var perturbed = Out("detr.perturbed.curves.json");
        CurvesFile.WriteFile(perturbed, CurvesFile.Read(curves)
            .Select(c => c with { Distortion = c.Distortion.Select(d => d * (1 + 1e-6 * (2 * rng.NextDouble() - 1))).ToArray() }).ToList());
        Assert.NotEqual(Sha(curves), Sha(perturbed));

        // Pinned, twice: one thread and no cache, and the default threads with the warm cache of the measured curves.
        var pinnedA = Out("detr-pinned-a");
        var pinnedB = Out("detr-pinned-b");
        (code, stdout, stderr) = Run(["compile", model, .. common, "-o", pinnedA, "--curves-file", perturbed, "--threads", "1", "--no-cache"]);
        Assert.True(code == 0, stderr);
        Assert.Contains("curves fast (curves file)", stdout);
        (code, _, stderr) = Run(["compile", model, .. common, "-o", pinnedB, "--curves-file", perturbed, "--threads", "2", "--cache-dir", Out("detr-cache")]);
        Assert.True(code == 0, stderr);

        foreach (var target in new[] { "8", "4", "3" })
        {
            // The tie rule: curves 1e-6 apart give the allocation of the measured curves...
            Assert.Equal(Allocation(Path.Combine(measured, $"bits-{target}", "report.json")), Allocation(Path.Combine(pinnedA, $"bits-{target}", "report.json")));
            // ...and so the same model bytes; pinned runs are identical whatever thread count or cache.
            var reference = Sha(Path.Combine(measured, $"bits-{target}", "model.onnx"));
            Assert.Equal(reference, Sha(Path.Combine(pinnedA, $"bits-{target}", "model.onnx")));
            Assert.Equal(reference, Sha(Path.Combine(pinnedB, $"bits-{target}", "model.onnx")));
        }
        Assert.Equal(Sha(Path.Combine(pinnedA, "manifest.json")), Sha(Path.Combine(pinnedB, "manifest.json")));
        using var manifest = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(pinnedA, "manifest.json")));
        var options = manifest.RootElement.GetProperty("options");
        Assert.Equal(Sha(perturbed).ToLowerInvariant(), options.GetProperty("curves_file_sha256").GetString());
        Assert.Equal("detr.perturbed.curves.json", options.GetProperty("curves_file").GetString());
        using var measuredManifest = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(measured, "manifest.json")));
        Assert.False(measuredManifest.RootElement.GetProperty("options").TryGetProperty("curves_file", out _));

        // The report embeds the curves it used (the file's, in the model's unit order), and names the tie rule.
        using var report = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(pinnedA, "bits-4", "report.json")));
        Assert.Equal(CurvesFile.ToJson(CurvesFile.Read(perturbed)),
            CurvesFile.ToJson(CurvesFile.Parse(report.RootElement.GetProperty("curves").GetRawText())));
        Assert.Contains(report.RootElement.GetProperty("notes").EnumerateArray(), n => n.GetString()!.StartsWith("allocation tie rule: curves snapped", StringComparison.Ordinal));
    }

    [Fact]
    public void DefaultGainCurvesCachedOrPinnedGiveTheMeasuredArtifact()
    {
        // Gain curves capture cut activations in the calibration pass; fetched outputs change what ONNX Runtime fuses,
        // and so the layer inputs compensation reads. Known curves must fetch the same, or a rerun with a warm cache
        // (or a build with pinned curves) writes other bytes than the first compile did.
        var model = RepoPaths.File("models/fixtures/detr_small.onnx");
        string[] common = ["--calib", RepoPaths.File("models/data/calib.npz"), "--calib-samples", "16", "--verify-samples", "2",
            "--target-bits", "4", "--quiet", "--cache-dir", Out("gain-cache")];
        var curves = Out("gain.curves.json");
        var (code, stdout, stderr) = Run(["compile", model, .. common, "-o", Out("gain-measured"), "--write-curves", curves]);
        Assert.True(code == 0, stderr);
        Assert.Contains("curves gain (", stdout);
        Assert.DoesNotContain("(cache)", stdout);
        (code, stdout, stderr) = Run(["compile", model, .. common, "-o", Out("gain-cached")]);
        Assert.True(code == 0, stderr);
        Assert.Contains("curves gain (cache)", stdout);
        (code, _, stderr) = Run(["compile", model, .. common, "-o", Out("gain-pinned"), "--curves-file", curves]);
        Assert.True(code == 0, stderr);
        var reference = Sha(Path.Combine(Out("gain-measured"), "model.onnx"));
        Assert.Equal(reference, Sha(Path.Combine(Out("gain-cached"), "model.onnx")));
        Assert.Equal(reference, Sha(Path.Combine(Out("gain-pinned"), "model.onnx")));

        // The curves carry their gains, so the cached and pinned compiles price the activations as the measuring one did.
        string Activations(string dir)
        {
            using var report = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(Out(dir), "report.json")));
            var activations = report.RootElement.GetProperty("activations");
            Assert.True(activations.GetProperty("priced").GetBoolean(), dir);
            return activations.GetRawText();
        }
        var priced = Activations("gain-measured");
        Assert.Equal(priced, Activations("gain-cached"));
        Assert.Equal(priced, Activations("gain-pinned"));
        Assert.All(CurvesFile.Read(curves), c => Assert.True(c.Gain > 0, c.Name));
    }

    [Fact]
    public void PinnedCurvesReproduceTheMeasuredCompile()
    {
        var curves = SmallCurves();
        var dir = Out("small-pinned");
        var (code, stdout, stderr) = Run("compile", fixture.ModelPath, "--calib", fixture.DataPath, "-o", dir, "--quiet",
            "--calib-samples", "16", "--curves-file", curves, "--write-curves", Out("small.again.curves.json"));
        Assert.True(code == 0, stderr);
        Assert.Contains("(curves file)", stdout);
        Assert.Equal(Sha(Path.Combine(Out("small-measured"), "model.onnx")), Sha(Path.Combine(dir, "model.onnx")));
        // The round trip is exact: the curves written back are the bytes read.
        Assert.Equal(Sha(curves), Sha(Out("small.again.curves.json")));
    }

    public static TheoryData<string, string> Mismatches => new()
    {
        { "renamed", "has unit 'renamed'" },
        { "missing", "has no curve for unit" },
        { "size", "size 7, but the model's unit has" },
        { "widths", "widths 2,3,4,5,6, but the candidate widths (--bits) are 2,3,4,5,6,8" },
        { "pinned", "pins or restricts the widths" },
        { "negative", "negative distortion" },
        { "schema", "this version reads \"onnxquant.curves/1\"" },
        { "not-json", "is not valid JSON" },
        { "absent", "file not found" },
    };

    [Theory]
    [MemberData(nameof(Mismatches))]
    public void CurvesThatDoNotFitTheModelFailWithExitTwo(string kind, string expected)
    {
        var good = JsonNode.Parse(File.ReadAllText(SmallCurves()))!;
        var units = good["units"]!.AsArray();
        var first = units[0]!;
        switch (kind)
        {
            case "renamed": first["name"] = "renamed"; break;
            case "missing": units.RemoveAt(units.Count - 1); break;
            case "size": first["size"] = 7; break;
            case "widths":
                first["bits"]!.AsArray().RemoveAt(5);
                first["distortion"]!.AsArray().RemoveAt(5);
                break;
            case "pinned": first["pinned_bits"] = 8; break;
            case "negative": first["distortion"]![0] = -1.0; break;
            case "schema": good["schema"] = "onnxquant.curves/0"; break;
        }
        var path = Out($"bad-{kind}.curves.json");
        if (kind == "not-json")
            File.WriteAllText(path, "{\"schema\": ");
        else if (kind != "absent")
            File.WriteAllText(path, good.ToJsonString());
        var dir = Out($"bad-{kind}");
        var (code, _, stderr) = Run("compile", fixture.ModelPath, "--calib", fixture.DataPath, "-o", dir, "--quiet",
            "--calib-samples", "16", "--curves-file", path);
        Assert.Equal(2, code);
        Assert.Contains(expected, stderr);
        Assert.Single(stderr.TrimEnd().Split('\n'));
        Assert.False(Directory.Exists(dir));
    }
}
