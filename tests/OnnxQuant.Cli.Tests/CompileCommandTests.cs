using OnnxQuant.Cli;
using OnnxQuant.Data;
using OnnxQuant.Frontend;
using Attribute = OnnxQuant.Frontend.Attribute;

namespace OnnxQuant.Cli.Tests;

/// <summary>A small conv + MLP model with a symbolic batch, its calibration data and a scratch folder.</summary>
public sealed class CompileCliFixture : IDisposable
{
    public CompileCliFixture()
    {
        Root = Path.Combine(Path.GetTempPath(), $"onnxquant-cli-compile-{Guid.NewGuid():N}");
        Directory.CreateDirectory(Root);
        ModelPath = Path.Combine(Root, "model.onnx");
        ModelIO.Save(BuildModel(), ModelPath);
        DataPath = Path.Combine(Root, "calib.npz");
        Npz.Write(DataPath, [new NamedArray("x", NpyArray.FromFloats(Random(40 * 2 * 8 * 8, 3), 40, 2, 8, 8))]);
    }

    public string Root { get; }
    public string ModelPath { get; }
    public string DataPath { get; }

    private static float[] Random(int n, int seed, float scale = 1f)
    {
        var r = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => scale * (float)(r.NextDouble() * 2 - 1)).ToArray();
    }

    private static Model BuildModel()
    {
        var g = new Graph("cli");
        var model = new Model(g) { IrVersion = 8 };
        model.OpsetImports[""] = 17;
        var x = new Value("x", new TensorType(DataType.Float, new Shape([Dim.Symbolic("N"), 2, 8, 8])));
        g.AddInput(x);
        Value Init(string name, long[] dims, float scale, int seed) =>
            g.AddInitializer(name, Tensor.FromFloats(name, dims, Random((int)dims.Aggregate(1L, (a, b) => a * b), seed, scale)));
        Value Op(string op, string name, Value[] inputs, params Attribute[] attributes)
        {
            var node = new Node(op, inputs, [name + "_out"], name: name, attributes: attributes);
            g.AddNode(node);
            return node.Outputs[0];
        }
        var conv = Op("Conv", "conv", [x, Init("conv.w", [8, 2, 3, 3], 0.4f, 1)], Attribute.FromInts("pads", [1, 1, 1, 1]));
        var relu = Op("Relu", "relu", [conv]);
        var flat = Op("Flatten", "flatten", [Op("GlobalAveragePool", "pool", [relu])]);
        var fc1 = Op("Relu", "relu1", [Op("MatMul", "fc1", [flat, Init("fc1.w", [8, 32], 0.5f, 2)])]);
        var fc2 = Op("MatMul", "fc2", [fc1, Init("fc2.w", [32, 16], 0.3f, 3)]);
        fc2.Type = new TensorType(DataType.Float, null);
        g.AddOutput(fc2);
        return model;
    }

    public void Dispose() => Directory.Delete(Root, true);
}

public class CompileCommandTests(CompileCliFixture fixture) : IClassFixture<CompileCliFixture>
{
    private static (int Code, string Out, string Err) Run(params string[] args) => CliRunner.Run(args);

    private string Out(string name) => Path.Combine(fixture.Root, name);

    [Fact]
    public void CompilesAndPrintsTheSummary()
    {
        var dir = Out("ok");
        var (code, stdout, stderr) = Run("compile", fixture.ModelPath, "--calib", fixture.DataPath, "-o", dir, "--target-bits", "4,8",
            "--calib-samples", "32", "--cache-dir", Out("cache"));
        Assert.True(code == 0, stderr);
        Assert.Contains("3 units", stdout);
        Assert.Contains("bits-4/model.onnx", stdout);
        Assert.Contains("curves: 0/", stderr); // plain progress lines when redirected
        Assert.True(File.Exists(Path.Combine(dir, "bits-4", "model.onnx")));
        Assert.True(File.Exists(Path.Combine(dir, "bits-8", "report.json")));
        Assert.True(File.Exists(Path.Combine(dir, "manifest.json")));
    }

    [Fact]
    public void QuietPrintsNoProgress()
    {
        var (code, stdout, stderr) = Run("compile", fixture.ModelPath, "--calib", fixture.DataPath, "-o", Out("quiet"), "--quiet",
            "--calib-samples", "16", "--no-cache");
        Assert.Equal(0, code);
        Assert.Equal("", stderr);
        Assert.Contains("4", stdout);
    }

    [Fact]
    public void MaxDistortionGuardExitsThreeWhenTheRepairCannotMeetIt()
    {
        // 1e-9 needs every layer float; --max-repair-rate 3 stops the repair long before.
        var (code, _, stderr) = Run("compile", fixture.ModelPath, "--calib", fixture.DataPath, "-o", Out("guard"), "--quiet",
            "--target-bits", "2", "--calib-samples", "16", "--max-distortion", "1e-9", "--max-repair-rate", "3", "--cache-dir", Out("cache"));
        Assert.Equal(3, code);
        Assert.StartsWith("error: accuracy guard failed", stderr);
        Assert.Contains("after the repair raised widths to rate", stderr);
        using var report = System.Text.Json.JsonDocument.Parse(File.ReadAllBytes(Path.Combine(Out("guard"), "report.json")));
        var repair = report.RootElement.GetProperty("repair");
        Assert.False(repair.GetProperty("met").GetBoolean());
        Assert.InRange(repair.GetProperty("final_rate").GetDouble(), 2.0, 3.0);
    }

    private static double Measured(string dir) =>
        System.Text.Json.JsonDocument.Parse(File.ReadAllBytes(Path.Combine(dir, "report.json"))).RootElement
            .GetProperty("distortion").GetProperty("measured").GetDouble();

    [Fact]
    public void FailingGuardIsRepairedByRaisingWidths()
    {
        var plain = Out("unguarded");
        var (code, _, stderr) = Run("compile", fixture.ModelPath, "--calib", fixture.DataPath, "-o", plain, "--quiet",
            "--target-bits", "2", "--calib-samples", "16", "--cache-dir", Out("cache"));
        Assert.True(code == 0, stderr);
        var unguarded = Measured(plain);
        Assert.True(unguarded > 0);

        // A guard the 2-bit allocation fails: a quarter of what it measured.
        var limit = unguarded / 4;
        var dir = Out("repaired");
        (code, _, stderr) = Run("compile", fixture.ModelPath, "--calib", fixture.DataPath, "-o", dir, "--quiet",
            "--target-bits", "2", "--calib-samples", "16", "--cache-dir", Out("cache"),
            "--max-distortion", limit.ToString("R", System.Globalization.CultureInfo.InvariantCulture));
        Assert.True(code == 0, stderr);
        using var report = System.Text.Json.JsonDocument.Parse(File.ReadAllBytes(Path.Combine(dir, "report.json")));
        var root = report.RootElement;
        var repair = root.GetProperty("repair");
        Assert.True(repair.GetProperty("met").GetBoolean());
        Assert.Equal(unguarded, repair.GetProperty("initial_measured").GetDouble(), 6);
        Assert.True(repair.GetProperty("final_measured").GetDouble() <= limit);
        Assert.Equal(root.GetProperty("distortion").GetProperty("measured").GetDouble(), repair.GetProperty("final_measured").GetDouble());
        var raised = repair.GetProperty("raised").EnumerateArray().ToList();
        Assert.NotEmpty(raised);
        Assert.All(raised, r => Assert.True(r.GetProperty("to_bits").GetInt32() > r.GetProperty("from_bits").GetInt32()));
        // The rate grew above the 2-bit target and the report's units carry the raised widths.
        Assert.True(repair.GetProperty("final_rate").GetDouble() > 2.0);
        Assert.Equal(repair.GetProperty("final_rate").GetDouble(), root.GetProperty("rate").GetDouble());
        var units = root.GetProperty("units").EnumerateArray().ToDictionary(u => u.GetProperty("name").GetString()!, u => u.GetProperty("bits").GetInt32());
        Assert.All(raised, r => Assert.Equal(r.GetProperty("to_bits").GetInt32(), units[r.GetProperty("unit").GetString()!]));
    }

    [Fact]
    public void CompensationLowersTheMeasuredDistortion()
    {
        // Verification runs the written model in ONNX Runtime; the same allocation options with and without compensation.
        double Compile(string compensation)
        {
            var dir = Out("compensation-" + compensation);
            var (code, _, stderr) = Run("compile", fixture.ModelPath, "--calib", fixture.DataPath, "-o", dir, "--quiet",
                "--target-bits", "3", "--calib-samples", "32", "--no-cache", "--compensation", compensation);
            Assert.True(code == 0, stderr);
            return Measured(dir);
        }
        var none = Compile("none");
        var all = Compile("all");
        Assert.True(all < 0.9 * none, $"with compensation {all}, without {none}");
        using var report = System.Text.Json.JsonDocument.Parse(File.ReadAllBytes(Path.Combine(Out("compensation-all"), "report.json")));
        var layers = report.RootElement.GetProperty("compensation").GetProperty("layers").EnumerateArray().ToList();
        Assert.Equal(3, layers.Count);
        Assert.All(layers, l => Assert.True(l.GetProperty("gptq").GetBoolean()));
    }

    [Fact]
    public void EmitsTheAllocationAsAQatRecipe()
    {
        var dir = Out("recipe");
        var recipePath = Out("recipe.json");
        var (code, stdout, stderr) = Run("compile", fixture.ModelPath, "--calib", fixture.DataPath, "-o", dir, "--quiet",
            "--target-bits", "4", "--calib-samples", "16", "--cache-dir", Out("cache"), "--emit-qat-recipe", recipePath,
            "--qat-attention-bits", "6");
        Assert.True(code == 0, stderr);
        Assert.Contains("QAT recipe, 3 layers", stdout);
        var recipe = OnnxQuant.QatBridge.QatRecipeJson.Read(recipePath);
        using var report = System.Text.Json.JsonDocument.Parse(File.ReadAllBytes(Path.Combine(dir, "report.json")));
        var allocated = report.RootElement.GetProperty("units").EnumerateArray()
            .ToDictionary(u => u.GetProperty("layer").GetString()!, u => u.GetProperty("bits").GetInt32());
        // Every allocated layer is in the recipe at its allocated width, with the compile's activation bits.
        Assert.Equal(allocated.Keys.Order(StringComparer.Ordinal), recipe.Layers.Select(l => l.Name));
        Assert.All(recipe.Layers, l => Assert.Equal(allocated[l.Name], l.WeightBits));
        // Each layer carries the artifact's grid: its weight scales, and the activation grid in front of it (8-bit,
        // as compiled) or act_bits 0 where the artifact leaves the input float (INT2 weight-only layers).
        Assert.All(recipe.Layers, l => Assert.NotNull(l.WeightScales));
        Assert.All(recipe.Layers, l => Assert.Equal(l.ActScale is null ? 0 : 8, l.ActBits));
        Assert.Equal(2, recipe.Revision);
        Assert.Equal(new OnnxQuant.QatBridge.BitWidths(4, 8, 6), recipe.Defaults);
        Assert.Equal(OnnxQuant.QatBridge.RecipeSource.Allocation, recipe.Source);
    }

    [Fact]
    public void QatRecipeNeedsOneTarget()
    {
        var recipePath = Out("recipe-front.json");
        var (code, _, stderr) = Run("compile", fixture.ModelPath, "--calib", fixture.DataPath, "-o", Out("recipe-front"), "--quiet",
            "--target-bits", "3,4", "--emit-qat-recipe", recipePath);
        Assert.Equal(2, code);
        Assert.Contains("exactly one --target-bits", stderr);
        Assert.False(File.Exists(recipePath));
        Assert.False(Directory.Exists(Out("recipe-front")));
    }

    [Fact]
    public void QatRecipeRefusesSixteenBitTensors()
    {
        var recipePath = Out("recipe-act16.json");
        var (code, _, stderr) = Run("compile", fixture.ModelPath, "--calib", fixture.DataPath, "-o", Out("recipe-act16"), "--quiet",
            "--target-bits", "4", "--act16-tensors", "2", "--emit-qat-recipe", recipePath);
        Assert.Equal(2, code);
        Assert.Contains("drop --act16-tensors", stderr);
        Assert.False(File.Exists(recipePath));
        Assert.False(Directory.Exists(Out("recipe-act16")));
    }

    public static TheoryData<string, string[], string> BadInputs => new()
    {
        { "missing-model", ["compile", "{root}/nope.onnx", "--calib", "{data}"], "nope.onnx" },
        { "missing-data", ["compile", "{model}", "--calib", "{root}/nope.npz"], "nope.npz" },
        { "wrong-name", ["compile", "{model}", "--calib", "{root}/wrong-name.npz"], "'y'" },
        { "wrong-shape", ["compile", "{model}", "--calib", "{root}/wrong-shape.npz"], "input 'x'" },
        { "wrong-dtype", ["compile", "{model}", "--calib", "{root}/wrong-dtype.npz"], "Double" },
        { "nan", ["compile", "{model}", "--calib", "{root}/nan.npz"], "NaN in sample 3" },
        { "corrupt-model", ["compile", "{root}/corrupt.onnx", "--calib", "{data}"], "corrupt.onnx" },
        { "bad-target", ["compile", "{model}", "--calib", "{data}", "--target-bits", "four"], "--target-bits" },
        { "infeasible", ["compile", "{model}", "--calib", "{data}", "--target-bits", "2.5", "--min-bits", "4"], "infeasible" },
        { "bad-feature", ["compile", "{model}", "--calib", "{data}", "--feature", "nothing"], "'nothing'" },
        { "act-bits", ["compile", "{model}", "--calib", "{data}", "--act-bits", "5"], "--act-bits 5" },
        { "speed-act-bits", ["compile", "{model}", "--calib", "{data}", "--deploy", "speed", "--act-bits", "16"], "--deploy speed" },
        { "speed-format", ["compile", "{model}", "--calib", "{data}", "--deploy", "speed", "--format", "matmulnbits"], "--deploy speed" },
    };

    [Theory]
    [MemberData(nameof(BadInputs))]
    public void BadInputIsOneLineExitTwoAndNoOutput(string name, string[] template, string expected)
    {
        var root = fixture.Root;
        Npz.Write(Path.Combine(root, "wrong-name.npz"), [new NamedArray("y", NpyArray.FromFloats(new float[2 * 2 * 8 * 8], 2, 2, 8, 8))]);
        Npz.Write(Path.Combine(root, "wrong-shape.npz"), [new NamedArray("x", NpyArray.FromFloats(new float[2 * 3 * 8 * 8], 2, 3, 8, 8))]);
        Npz.Write(Path.Combine(root, "wrong-dtype.npz"), [new NamedArray("x", NpyArray.FromDoubles(new double[2 * 2 * 8 * 8], 2, 2, 8, 8))]);
        var nan = new float[5 * 2 * 8 * 8];
        nan[3 * 128 + 5] = float.NaN;
        Npz.Write(Path.Combine(root, "nan.npz"), [new NamedArray("x", NpyArray.FromFloats(nan, 5, 2, 8, 8))]);
        File.WriteAllBytes(Path.Combine(root, "corrupt.onnx"), File.ReadAllBytes(fixture.ModelPath)[..40]);
        var modelBytes = File.ReadAllBytes(fixture.ModelPath);
        var outDir = Out("bad-" + name);
        var args = template.Select(a => a.Replace("{root}", root).Replace("{model}", fixture.ModelPath).Replace("{data}", fixture.DataPath))
            .Concat(["-o", outDir, "--no-cache", "--calib-samples", "8"]).ToArray();
        var (code, stdout, stderr) = Run(args);
        Assert.True(code == 2, $"{name}: exit {code}\n{stderr}");
        var lines = stderr.TrimEnd().Split('\n');
        Assert.Single(lines);
        Assert.StartsWith("error: ", lines[0]);
        Assert.Contains(expected, lines[0]);
        Assert.False(Directory.Exists(outDir) && Directory.EnumerateFileSystemEntries(outDir).Any(), "partial output written");
        Assert.Equal(modelBytes, File.ReadAllBytes(fixture.ModelPath));
        _ = stdout;
    }

    [Fact]
    public void UnwritableOutputFolderExitsTwoBeforeCalibration()
    {
        // The folder would be created under a file: known at the start, so the compile must not calibrate first.
        var outDir = Path.Combine(fixture.ModelPath, "out");
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var (code, _, stderr) = Run("compile", fixture.ModelPath, "--calib", fixture.DataPath, "--target-bits", "4", "-o", outDir, "--quiet");
        Assert.Equal(2, code);
        // Whichever check sees it first (the output-alias guard or the writability probe), the one line names -o.
        Assert.Contains($"-o {outDir}", stderr);
        Assert.Single(stderr.Trim().Split('\n'));
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(15), $"took {clock.Elapsed}");
    }
}
