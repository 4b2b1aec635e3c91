using System.Text.Json;
using OnnxQuant.Cli;
using OnnxQuant.Runtime;

namespace OnnxQuant.Cli.Tests;

public sealed class BenchCommandTests : IDisposable
{
    private const string NodeTests = "/usr/share/libonnx-testdata/data/node";
    private static readonly string Add = Path.Combine(NodeTests, "test_add", "model.onnx");
    private static readonly string Conv = Path.Combine(NodeTests, "test_basic_conv_with_padding", "model.onnx");
    private readonly string _dir = Directory.CreateTempSubdirectory("onnxquant-bench-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static (int Code, string Out, string Err) Run(params string[] args) => CliRunner.Run(args);

    [Fact]
    public void JsonIsOneObjectWithTheLatencyFigures()
    {
        var (code, stdout, stderr) = Run("bench", Add, "--runs", "7", "--warmup", "2", "--threads", "1", "--json");
        Assert.True(code == ExitCodes.Ok, stderr);
        using var doc = JsonDocument.Parse(stdout);
        var root = doc.RootElement;
        Assert.Equal(JsonValueKind.Object, root.ValueKind);
        Assert.Equal(7, root.GetProperty("runs").GetInt32());
        Assert.Equal("cpu", root.GetProperty("ep").GetString());
        Assert.Equal(1, root.GetProperty("threads").GetInt32());
        var median = root.GetProperty("median_ms").GetDouble();
        var p90 = root.GetProperty("p90_ms").GetDouble();
        Assert.True(median > 0 && p90 >= median && root.GetProperty("min_ms").GetDouble() <= median, stdout);
        Assert.True(root.GetProperty("peak_rss_mb").GetDouble() > 10, stdout);
        var inputs = root.GetProperty("inputs").EnumerateArray().Select(i => i.GetProperty("name").GetString()!).ToArray();
        Assert.Equal(["x", "y"], inputs);
        Assert.False(root.TryGetProperty("ratio", out _));
        Assert.False(root.TryGetProperty("turns", out _));
    }

    [Fact]
    public void TablePrintsLatencyAndPeakMemory()
    {
        var (code, stdout, stderr) = Run("bench", Conv, "--runs", "3", "--warmup", "1", "--threads", "1");
        Assert.True(code == ExitCodes.Ok, stderr);
        Assert.Contains("median ms", stdout);
        Assert.Contains("p90 ms", stdout);
        Assert.Contains("peak resident memory:", stdout);
        Assert.Contains("threads: 1", stdout);
        Assert.DoesNotContain("\u001b[", stdout); // no escape codes when output is captured
    }

    [Fact]
    public void VsRunsBothModelsAndPrintsTheRatio()
    {
        var (code, stdout, stderr) = Run("bench", Add, "--vs", Conv, "--runs", "5", "--warmup", "1", "--threads", "1", "--json");
        Assert.True(code == ExitCodes.Ok, stderr);
        using var doc = JsonDocument.Parse(stdout);
        var root = doc.RootElement;
        var vs = root.GetProperty("vs");
        Assert.Equal(Conv, vs.GetProperty("model").GetString());
        var expected = vs.GetProperty("median_ms").GetDouble() / root.GetProperty("median_ms").GetDouble();
        Assert.Equal(expected, root.GetProperty("ratio").GetDouble(), 0.01 * expected + 1e-3);
        var turns = root.GetProperty("turns");
        Assert.Equal(AlternatingTimer.DefaultBlock, turns.GetProperty("block").GetInt32());
        Assert.Equal(AlternatingTimer.DefaultSettle, turns.GetProperty("settle").GetInt32());
        // The op-type profile of both models: the Add model runs one Add per run, the Conv model one Conv.
        var profiles = root.GetProperty("profiles").EnumerateArray().ToList();
        Assert.Equal([Add, Conv], profiles.Select(p => p.GetProperty("model").GetString()));
        Assert.Equal(10, profiles[0].GetProperty("runs").GetInt32());
        var addOps = profiles[0].GetProperty("ops").EnumerateArray().ToList();
        Assert.Equal("Add", Assert.Single(addOps).GetProperty("op_type").GetString());
        Assert.Equal(1.0, addOps[0].GetProperty("nodes_per_run").GetDouble());
        Assert.Contains(profiles[1].GetProperty("ops").EnumerateArray(), o => o.GetProperty("op_type").GetString()!.Contains("Conv"));

        var table = Run("bench", Add, "--vs", Conv, "--runs", "3", "--warmup", "0", "--threads", "1", "--profile-runs", "2", "--block", "1", "--settle", "0");
        Assert.Equal(ExitCodes.Ok, table.Code);
        Assert.Contains("turns of 1 timed runs after 0 untimed", table.Out);
        Assert.Contains("latency ratio (median", table.Out);
        Assert.Contains("time per op type (ONNX Runtime profiler, 2 runs per model", table.Out);
        Assert.Contains("│ Add ", table.Out);

        var none = Run("bench", Add, "--vs", Conv, "--runs", "2", "--warmup", "0", "--threads", "1", "--profile-runs", "0", "--json");
        Assert.Equal(ExitCodes.Ok, none.Code);
        Assert.DoesNotContain("\"profiles\"", none.Out);
    }

    [Fact]
    public void CudaOnACpuOnlyLibraryIsAUserErrorWithDirections()
    {
        var (code, _, stderr) = Run("bench", Add, "--ep", "cuda", "--runs", "1");
        if (code == ExitCodes.Ok)
            return; // a CUDA-enabled library on a GPU machine
        Assert.Equal(ExitCodes.BadInput, code);
        var lines = stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Single(lines);
        Assert.StartsWith("error: ", lines[0]);
        Assert.Contains("ONNXQUANT_ORT_LIB", lines[0]);
        Assert.Contains("--ep cpu", lines[0]);
    }

    [Fact]
    public void AutoFallsBackToCpuWithOneNotice()
    {
        var (code, stdout, stderr) = Run("bench", Add, "--ep", "auto", "--runs", "2", "--warmup", "0", "--json");
        Assert.True(code == ExitCodes.Ok, stderr);
        using var doc = JsonDocument.Parse(stdout);
        Assert.Equal("auto", doc.RootElement.GetProperty("ep_requested").GetString());
        if (doc.RootElement.GetProperty("ep").GetString() == "cuda")
            return;
        Assert.Equal("cpu", doc.RootElement.GetProperty("ep").GetString());
        var lines = stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Single(lines);
        Assert.StartsWith("notice: --ep auto runs on CPU", lines[0]);
    }

    [Theory]
    [InlineData("--runs", "0")]
    [InlineData("--warmup", "-1")]
    [InlineData("--block", "0")]
    [InlineData("--settle", "-1")]
    [InlineData("--threads", "-2")]
    [InlineData("--shape", "x=3x4x")]
    [InlineData("--shape", "nonexistent=1x2")]
    [InlineData("--shape", "x=3x4x6")]
    [InlineData("--shape", "x")]
    public void BadOptionsAreUserErrors(string option, string value)
    {
        var (code, stdout, stderr) = Run("bench", Add, option, value);
        Assert.Equal(ExitCodes.BadInput, code);
        Assert.Equal("", stdout);
        Assert.StartsWith("error: ", stderr);
        Assert.Single(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
    }

    /// <summary>x [1, 8, 32, 32] -> Relu -> "mid" -> Conv 3x3 -> "y", and "z" = If(true) { Neg(y) } else { Abs(y) }: an
    /// inner tensor with work after it.</summary>
    private string ReluThenConv()
    {
        var g = new OnnxQuant.Frontend.Graph("relu_conv");
        var x = new OnnxQuant.Frontend.Value("x", new OnnxQuant.Frontend.TensorType(OnnxQuant.Frontend.DataType.Float, OnnxQuant.Frontend.Shape.Of(1, 8, 32, 32)));
        g.AddInput(x);
        var relu = new OnnxQuant.Frontend.Node("Relu", [x], ["mid"]);
        g.AddNode(relu);
        var w = g.AddInitializer("w", OnnxQuant.Frontend.Tensor.FromFloats("w", [8, 8, 3, 3], Enumerable.Range(0, 576).Select(i => (i % 7 - 3) * 0.05f).ToArray()));
        var conv = new OnnxQuant.Frontend.Node("Conv", [relu.Outputs[0], w], ["y"],
            attributes: [OnnxQuant.Frontend.Attribute.FromInts("pads", [1, 1, 1, 1])]);
        g.AddNode(conv);
        g.AddOutput(conv.Outputs[0]);
        // An If whose branches read the Conv's output from the outer graph: pruning must see through subgraph reads.
        OnnxQuant.Frontend.Graph Branch(string op)
        {
            var branch = new OnnxQuant.Frontend.Graph(op + "_branch");
            var node = new OnnxQuant.Frontend.Node(op, [conv.Outputs[0]], [op + "_y"]);
            branch.AddNode(node);
            node.Outputs[0].Type = new OnnxQuant.Frontend.TensorType(OnnxQuant.Frontend.DataType.Float, OnnxQuant.Frontend.Shape.Of(1, 8, 32, 32));
            branch.AddOutput(node.Outputs[0]);
            return branch;
        }
        // A condition computed from the data, so that ONNX Runtime cannot fold the If away.
        var max = new OnnxQuant.Frontend.Node("ReduceMax", [x], ["x_max"], attributes: [OnnxQuant.Frontend.Attribute.FromInt("keepdims", 0)]);
        g.AddNode(max);
        var floor = g.AddInitializer("floor", OnnxQuant.Frontend.Tensor.FromFloats("floor", [], [-1e30f]));
        var test = new OnnxQuant.Frontend.Node("Greater", [max.Outputs[0], floor], ["cond"]);
        g.AddNode(test);
        var branchIf = new OnnxQuant.Frontend.Node("If", [test.Outputs[0]], ["z"],
            attributes: [OnnxQuant.Frontend.Attribute.FromGraph("then_branch", Branch("Neg")), OnnxQuant.Frontend.Attribute.FromGraph("else_branch", Branch("Abs"))]);
        g.AddNode(branchIf);
        branchIf.Outputs[0].Type = new OnnxQuant.Frontend.TensorType(OnnxQuant.Frontend.DataType.Float, OnnxQuant.Frontend.Shape.Of(1, 8, 32, 32));
        g.AddOutput(branchIf.Outputs[0]);
        var model = new OnnxQuant.Frontend.Model(g) { ProducerName = "onnxquant-tests" };
        model.OpsetImports.Default = 17;
        var path = Path.Combine(_dir, "relu_conv.onnx");
        OnnxQuant.Frontend.ModelIO.Save(model, path);
        return path;
    }

    [Fact]
    public void OutputTimesOnlyWhatTheNamedTensorsNeed()
    {
        var model = ReluThenConv();
        string[] Ops(string json, int index) => JsonDocument.Parse(json).RootElement.GetProperty("profiles")[index].GetProperty("ops")
            .EnumerateArray().Select(o => o.GetProperty("op_type").GetString()!).ToArray();

        var whole = Run("bench", model, "--vs", model, "--runs", "2", "--warmup", "0", "--threads", "1", "--profile-runs", "2", "--json");
        Assert.True(whole.Code == ExitCodes.Ok, whole.Err);
        Assert.Contains(Ops(whole.Out, 0), o => o.Contains("Conv", StringComparison.Ordinal)); // not vacuous: the whole model convolves
        Assert.Contains("If", Ops(whole.Out, 0));

        var cut = Run("bench", model, "--vs", model, "--output", "mid", "--runs", "2", "--warmup", "0", "--threads", "1", "--profile-runs", "2", "--json");
        Assert.True(cut.Code == ExitCodes.Ok, cut.Err);
        using var doc = JsonDocument.Parse(cut.Out);
        Assert.Equal(["mid"], doc.RootElement.GetProperty("outputs").EnumerateArray().Select(o => o.GetString()!));
        for (var m = 0; m < 2; m++)
            Assert.Equal(["Relu"], Ops(cut.Out, m));

        var table = Run("bench", model, "--output", "mid", "--output", "y", "--runs", "2", "--warmup", "0", "--threads", "1");
        Assert.True(table.Code == ExitCodes.Ok, table.Err);
        Assert.Contains("timed up to: mid, y", table.Out);

        var missing = Run("bench", model, "--output", "nothing", "--runs", "1");
        Assert.Equal(ExitCodes.BadInput, missing.Code);
        Assert.Contains("--output 'nothing'", missing.Err);
        Assert.Contains("its outputs: y, z", missing.Err);
    }

    [Fact]
    public void MissingOrCorruptModelsAreUserErrors()
    {
        var missing = Run("bench", Path.Combine(_dir, "missing.onnx"));
        Assert.Equal(ExitCodes.BadInput, missing.Code);
        Assert.Contains("missing.onnx", missing.Err);

        var corrupt = Path.Combine(_dir, "corrupt.onnx");
        File.WriteAllBytes(corrupt, File.ReadAllBytes(Add)[..50]);
        var (code, _, stderr) = Run("bench", corrupt);
        Assert.Equal(ExitCodes.BadInput, code);
        Assert.Contains("corrupt.onnx", stderr);
        Assert.Single(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
    }

    [Fact]
    public void AMissingOrtLibIsAUserError()
    {
        var missing = Path.Combine(_dir, "libonnxruntime.so");
        var (code, stdout, stderr) = Run("bench", Add, "--ort-lib", missing);
        Assert.Equal(ExitCodes.BadInput, code);
        Assert.Equal("", stdout);
        Assert.Contains(missing, stderr);
        Assert.Contains("ONNXQUANT_ORT_LIB", stderr);
    }

    [Fact]
    public async Task WithoutAnOverrideTheToolRunsOnItsPackagedLibrary()
    {
        // A fresh process with no override and an empty HOME: the ONNX Runtime of the NuGet package, nothing else.
        var tool = Path.Combine(AppContext.BaseDirectory, "onnxquant.dll");
        var start = new System.Diagnostics.ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var arg in new[] { tool, "bench", Add, "--runs", "1", "--warmup", "0", "--json" })
            start.ArgumentList.Add(arg);
        start.Environment["HOME"] = _dir;
        start.Environment.Remove("XDG_CACHE_HOME");
        start.Environment.Remove("ONNXQUANT_ORT_LIB");
        using var process = System.Diagnostics.Process.Start(start)!;
        var stderr = process.StandardError.ReadToEndAsync();
        var stdout = await process.StandardOutput.ReadToEndAsync();
        await process.WaitForExitAsync();
        Assert.True(process.ExitCode == ExitCodes.Ok, await stderr);
        using var doc = JsonDocument.Parse(stdout);
        Assert.Equal(OnnxQuant.Runtime.OrtLibraryLocator.PackagedVersion, doc.RootElement.GetProperty("ort_version").GetString());
    }

    [Fact]
    public async Task AnOrtLibOverrideIsLoadedInsteadOfThePackagedLibrary()
    {
        // A copy of the packaged library in another folder: the override must load it (a fresh process, since a
        // process loads one library), and a file that is no library must be refused with a user error.
        var packaged = OnnxQuant.Runtime.OrtLibraryLocator.Resolve(null, _ => null).Path;
        var copy = Directory.CreateDirectory(Path.Combine(_dir, "custom-ort")).FullName;
        File.Copy(packaged, Path.Combine(copy, "libonnxruntime.so"));
        var (code, stdout, stderr) = await RunFresh("bench", Add, "--runs", "1", "--warmup", "0", "--json", "--ort-lib", copy);
        Assert.True(code == ExitCodes.Ok, stderr);
        using (var doc = JsonDocument.Parse(stdout))
            Assert.Equal(OnnxQuant.Runtime.OrtLibraryLocator.PackagedVersion, doc.RootElement.GetProperty("ort_version").GetString());

        var broken = Path.Combine(_dir, "broken", "libonnxruntime.so");
        Directory.CreateDirectory(Path.GetDirectoryName(broken)!);
        File.WriteAllText(broken, "not a shared library");
        (code, stdout, stderr) = await RunFresh("bench", Add, "--ort-lib", broken);
        Assert.Equal(ExitCodes.BadInput, code);
        Assert.Equal("", stdout);
        var line = Assert.Single(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith($"error: cannot load the ONNX Runtime library {broken}", line);
    }

    private async Task<(int Code, string Out, string Err)> RunFresh(params string[] args)
    {
        var start = new System.Diagnostics.ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        start.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "onnxquant.dll"));
        foreach (var arg in args)
            start.ArgumentList.Add(arg);
        start.Environment.Remove("ONNXQUANT_ORT_LIB");
        using var process = System.Diagnostics.Process.Start(start)!;
        var stderr = process.StandardError.ReadToEndAsync();
        var stdout = await process.StandardOutput.ReadToEndAsync();
        await process.WaitForExitAsync();
        return (process.ExitCode, stdout, await stderr);
    }

    [Fact]
    public void ParsesShapes()
    {
        var shapes = BenchCommand.ParseShapes(["images=1x3x512x512", "a=b=2,3", "scalar="]);
        Assert.Equal([1L, 3, 512, 512], shapes["images"]);
        Assert.Equal([2L, 3], shapes["a=b"]);
        Assert.Empty(shapes["scalar"]);
        Assert.Throws<CliInputException>(() => BenchCommand.ParseShapes(["x=1x2", "x=3"]));
        Assert.Throws<CliInputException>(() => BenchCommand.ParseShapes(["x=1x-2"]));
    }
}
