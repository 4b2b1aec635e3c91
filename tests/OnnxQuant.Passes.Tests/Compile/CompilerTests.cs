using System.Text.Json;
using OnnxQuant.Frontend;
using OnnxQuant.Passes.Compile;
using OnnxQuant.Runtime;
using OnnxQuant.Passes.Pipeline;
using OnnxQuant.Passes.Curves;
using OnnxQuant.Passes.Units;
using OnnxQuant.Passes.Quantization;
using OnnxQuant.Passes.Artifact;

namespace OnnxQuant.Passes.Tests.Compile;

/// <summary>Shares one model, data set and curve cache across the end-to-end tests (curves are measured once).</summary>
public sealed class CompileFixture : IDisposable
{
    public CompileFixture()
    {
        Root = Path.Combine(Path.GetTempPath(), $"onnxquant-compile-{Guid.NewGuid():N}");
        (ModelPath, DataPath) = TestModels.WriteDetector(Path.Combine(Root, "in"));
        Cache = Path.Combine(Root, "cache");
    }

    public string Root { get; }
    public string ModelPath { get; }
    public string DataPath { get; }
    public string Cache { get; }

    public CompileResult Compile(string name, CompileOptions options) =>
        Compiler.Run(ModelPath, DataPath, Path.Combine(Root, name), options with { Curves = options.Curves with { CacheDir = options.Curves.CacheDir ?? Cache } }, "test", SilentProgress.Instance);

    public void Dispose() => Directory.Delete(Root, true);
}

public class CompilerTests(CompileFixture fixture) : IClassFixture<CompileFixture>
{
    [Fact]
    public void FrontAt8643BitsRunsInOrtAndDistortionGrowsAsBitsDrop()
    {
        var result = fixture.Compile("front", new CompileOptions { Allocation = new() { TargetBits = [8, 6, 4, 3] } });
        Assert.Equal(4, result.Targets.Count);
        var measured = new List<double>();
        foreach (var target in result.Targets)
        {
            var r = target.Report;
            Assert.True(r.Rate <= r.TargetBits + 1e-9, $"rate {r.Rate} above target {r.TargetBits}");
            Assert.True(r.Rate >= r.TargetBits - 1.0, $"rate {r.Rate} far below target {r.TargetBits}");
            // The output loads and runs in ONNX Runtime and gives finite, close-to-float outputs.
            using var session = InferenceSession.Create(target.ModelPath);
            var outputs = session.Run([new NamedTensor("images", TensorData.FromFloats(TestModels.Images(2, 99), [2, 3, 16, 16]))]);
            Assert.Equal(2, outputs.Count);
            Assert.All(outputs.SelectMany(o => o.Data.ToFloats()), v => Assert.True(float.IsFinite(v)));
            Assert.True(File.Exists(target.ReportPath));
            measured.Add(r.Distortion.Measured);
        }
        for (var i = 1; i < measured.Count; i++)
            Assert.True(measured[i] > measured[i - 1], $"distortion did not grow: {string.Join(", ", measured)}");
        // 8-bit weights with 8-bit activations stay close to float: relative squared error well under 1 %.
        Assert.InRange(measured[0], 0, 1e-2);
        var model = ModelIO.Load(result.Targets[3].ModelPath);
        Assert.True(model.OpsetImports.Default >= 21, "INT4/INT2 containers need opset 21/25");
        Assert.Contains(model.Graph.Initializers, v => v.Initializer!.DataType is DataType.Int4 or DataType.Int2);
        Assert.True(File.Exists(Path.Combine(result.OutputDirectory, "manifest.json")));
    }

    /// <summary>A quantized model given back (ours, for size and speed) is refused as such, not as a model without layers.</summary>
    [Theory]
    [InlineData(OnnxQuant.Passes.Rewrite.DeployTarget.Size)]
    [InlineData(OnnxQuant.Passes.Rewrite.DeployTarget.Speed)]
    public void AnAlreadyQuantizedModelIsRefusedAsSuch(OnnxQuant.Passes.Rewrite.DeployTarget deploy)
    {
        var first = fixture.Compile($"quantized-{deploy}", new CompileOptions { Allocation = new() { TargetBits = [8] }, Rewrite = new() { Deploy = deploy } });
        var e = Assert.Throws<CompileException>(() => Compiler.Run(first.Targets[0].ModelPath, fixture.DataPath, Path.Combine(fixture.Root, $"again-{deploy}"),
            new CompileOptions { Allocation = new() { TargetBits = [4] } }, "test", SilentProgress.Instance));
        Assert.Contains("already quantized", e.Message);
        Assert.Contains("compile the float model", e.Message);
    }

    [Fact]
    public void MixedAllocationBeatsUniformAtTheSameSize()
    {
        var mixed = fixture.Compile("mixed", new CompileOptions { Allocation = new() { TargetBits = [3] } }).Targets[0].Report;
        var uniform = fixture.Compile("uniform", new CompileOptions { Allocation = new() { TargetBits = [3], MinBits = 3 }, Curves = new() { CandidateBits = [3] } }).Targets[0].Report;
        Assert.Equal(3.0, uniform.Rate, 9);
        Assert.True(mixed.Rate <= uniform.Rate + 1e-9);
        Assert.True(mixed.Units.Select(u => u.Bits).Distinct().Count() > 1, "the allocation is not mixed");
        Assert.True(mixed.Distortion.Measured < uniform.Distortion.Measured,
            $"mixed {mixed.Distortion.Measured} not below uniform {uniform.Distortion.Measured}");
        Assert.True(mixed.Distortion.Predicted < uniform.Distortion.Predicted);
    }

    [Fact]
    public void CompilesAreByteIdenticalAcrossRunsAndThreadCounts()
    {
        var a = fixture.Compile("det-a", new CompileOptions { Allocation = new() { TargetBits = [4] }, Execution = new() { Threads = 1 }, Curves = new() { CacheDir = Path.Combine(fixture.Root, "cache-a") } });
        var b = fixture.Compile("det-b", new CompileOptions { Allocation = new() { TargetBits = [4] }, Execution = new() { Threads = 2 }, Curves = new() { CacheDir = Path.Combine(fixture.Root, "cache-b") } });
        Assert.False(a.Targets[0].Report.CurvesFromCache);
        Assert.False(b.Targets[0].Report.CurvesFromCache);
        Assert.Equal(File.ReadAllBytes(a.Targets[0].ModelPath), File.ReadAllBytes(b.Targets[0].ModelPath));
        Assert.Equal(StripTimings(a.Targets[0].ReportPath), StripTimings(b.Targets[0].ReportPath));
        var manifestA = File.ReadAllText(Path.Combine(a.OutputDirectory, "manifest.json")).Replace("\"threads\"", "");
        var manifestB = File.ReadAllText(Path.Combine(b.OutputDirectory, "manifest.json")).Replace("\"threads\"", "");
        Assert.Equal(manifestA, manifestB);
    }

    [Fact]
    public void CurvesAreReusedFromTheCacheAtAnotherBudget()
    {
        var cache = Path.Combine(fixture.Root, "cache-reuse");
        var first = fixture.Compile("reuse-4", new CompileOptions { Allocation = new() { TargetBits = [4] }, Curves = new() { CacheDir = cache } });
        var second = fixture.Compile("reuse-5", new CompileOptions { Allocation = new() { TargetBits = [5] }, Curves = new() { CacheDir = cache } });
        Assert.False(first.Targets[0].Report.CurvesFromCache);
        Assert.True(second.Targets[0].Report.CurvesFromCache);
        Assert.Equal(0, second.CurveRuns);
        Assert.Equal(first.Targets[0].Report.Curves.SelectMany(c => c.Distortion), second.Targets[0].Report.Curves.SelectMany(c => c.Distortion));
        Assert.Single(Directory.GetFiles(cache));
    }

    [Fact]
    public void ReportHasTheIssueKeys()
    {
        var result = fixture.Compile("report", new CompileOptions { Allocation = new() { TargetBits = [4] } });
        using var doc = JsonDocument.Parse(File.ReadAllBytes(result.Targets[0].ReportPath));
        var root = doc.RootElement;
        Assert.Equal("onnxquant.report/1", root.GetProperty("schema").GetString());
        Assert.Equal(4, root.GetProperty("target_bits").GetDouble());
        Assert.InRange(root.GetProperty("rate").GetDouble(), 3, 4);
        Assert.Equal("onnxquant.curves/1", root.GetProperty("curves").GetProperty("schema").GetString());
        Assert.Equal(7, root.GetProperty("units").GetArrayLength());
        var sizes = root.GetProperty("sizes");
        Assert.True(sizes.GetProperty("ideal_packed_bits").GetInt64() > 0);
        Assert.True(sizes.GetProperty("quantized_weight_bytes").GetInt64() < sizes.GetProperty("float_weight_bytes").GetInt64() / 4);
        Assert.True(root.GetProperty("distortion").GetProperty("predicted").GetDouble() > 0);
        Assert.True(root.GetProperty("distortion").GetProperty("held_out").GetBoolean());
        foreach (var stage in new[] { "load", "canonicalize", "discover", "calibrate", "curves", "allocate", "rewrite", "verify", "write" })
            Assert.True(root.GetProperty("timings_s").TryGetProperty(stage, out _), stage);
    }

    [Fact]
    public void LayersThatDoNotReachTheFeatureStayAtHeadBits()
    {
        var result = fixture.Compile("heads", new CompileOptions { Allocation = new() { TargetBits = [3] }, Features = new() { Features = ["encoded"] } });
        var r = result.Targets[0].Report;
        Assert.Equal(["box_head", "class_head"], r.Heads.Select(h => h.Layer).Order().ToList());
        Assert.All(r.Heads, h => Assert.Equal(8, h.Bits));
        Assert.Equal(5, r.Units.Count);
        Assert.Contains(r.Notes, n => n.Contains("outside the budget"));
        Assert.All(r.Layers.Where(l => r.Heads.Any(h => h.Layer == l.Layer)), l => Assert.Equal(8, l.MaxBits));
    }

    [Fact]
    public void GroupGranularityAndFastCurves()
    {
        var result = fixture.Compile("groups", new CompileOptions { Allocation = new() { TargetBits = [4] }, Units = new() { Granularity = Granularity.Group, GroupSize = 16 }, Curves = new() { Mode = CurveMode.Fast } });
        var r = result.Targets[0].Report;
        Assert.Contains(r.Units, u => u.Name.EndsWith("[16:32]"));
        Assert.True(r.Units.Count > 5);
        Assert.Equal(CurveMode.Fast, r.CurveMode);
        // The proxy predicts the measured distortion within an order of magnitude on this model.
        Assert.InRange(r.Distortion.Measured / r.Distortion.Predicted, 0.1, 10);
    }

    [Fact]
    public void MatMulNBitsFormatPacksMatMuls()
    {
        var result = fixture.Compile("nbits", new CompileOptions { Allocation = new() { TargetBits = [4] }, Rewrite = new() { Format = WeightFormat.MatMulNBits, BlockSize = 16 } });
        var model = ModelIO.Load(result.Targets[0].ModelPath);
        Assert.Equal(3, model.Graph.Nodes.Count(n => n.OpType == "MatMulNBits"));
        Assert.DoesNotContain(model.Graph.Nodes, n => n.OpType == "MatMul");
        Assert.InRange(result.Targets[0].Report.Distortion.Measured, 0, 0.5);
    }

    private static string StripTimings(string reportPath)
    {
        var text = File.ReadAllText(reportPath);
        var start = text.IndexOf("\"timings_s\"", StringComparison.Ordinal);
        return text[..start];
    }

    [Theory]
    [InlineData(8, 1e-4, 2.9e-4, false)] // within 3x
    [InlineData(8, 1e-4, 3.1e-4, true)]
    [InlineData(0, 1e-4, 1e-2, false)]   // float activations: the gap is not theirs
    [InlineData(8, 0.0, 1e-2, false)]    // nothing predicted
    public void TheMeasuredGapNoteNeedsQuantizedActivationsAndMoreThanThreeTimesThePrediction(int actBits, double predicted, double measured, bool expected)
    {
        var note = Compiler.MeasuredGapNote(actBits, predicted, null, measured);
        Assert.Equal(expected, note is not null);
        if (note is not null)
            Assert.Contains($"{measured / predicted:0.#}x the predicted", note);
        Assert.Null(Compiler.MeasuredGapNote(actBits, null, null, measured));
    }
}
