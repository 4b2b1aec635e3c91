using System.Text.Json;
using OnnxQuant.Cli;

namespace OnnxQuant.Cli.Tests;

public sealed class SolveCommandTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("onnxquant-solve-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    // Sizes share the factor 4096; distortion falls with bits; the head is pinned at 8.
    private const string Curves = """
        {"schema": "onnxquant.curves/1", "units": [
          {"name": "stem", "size": 4096, "bits": [2,3,4,5,6,8], "distortion": [4.0, 1.9, 0.8, 0.35, 0.16, 0.04], "pinned_bits": null},
          {"name": "attn", "size": 16384, "bits": [2,3,4,5,6,8], "distortion": [2.5, 1.1, 0.5, 0.22, 0.1, 0.03], "pinned_bits": null},
          {"name": "mlp", "size": 32768, "bits": [2,3,4,5,6,8], "distortion": [3.0, 1.2, 0.45, 0.2, 0.09, 0.02], "pinned_bits": null},
          {"name": "head", "size": 8192, "bits": [8], "distortion": [0.01], "pinned_bits": 8}
        ]}
        """;

    private string Write(string text, string name = "curves.json")
    {
        var path = Path.Combine(_dir, name);
        File.WriteAllText(path, text);
        return path;
    }

    private static (int Code, string Out, string Err) Run(params string[] args) => CliRunner.Run(args);

    [Theory]
    [InlineData("dp")]
    [InlineData("lagrangian")]
    public void JsonHasTheAgreedKeysAndConsistentFigures(string solver)
    {
        var (code, stdout, stderr) = Run("solve", Write(Curves), "--target-bits", "3.5", "--solver", solver, "--json");
        Assert.True(code == ExitCodes.Ok, stderr);
        using var doc = JsonDocument.Parse(stdout);
        var root = doc.RootElement;
        Assert.Equal(["solver", "target_bits", "rate", "distortion", "allocation", "stats"], root.EnumerateObject().Select(p => p.Name));
        Assert.Equal(solver, root.GetProperty("solver").GetString());
        Assert.Equal(3.5, root.GetProperty("target_bits").GetDouble());
        var allocation = root.GetProperty("allocation");
        Assert.Equal(["stem", "attn", "mlp", "head"], allocation.EnumerateObject().Select(p => p.Name));
        Assert.Equal(8, allocation.GetProperty("head").GetInt32());
        long[] sizes = [4096, 16384, 32768, 8192];
        var bits = allocation.EnumerateObject().Select(p => p.Value.GetInt32()).ToArray();
        var rate = sizes.Zip(bits, (n, b) => n * b).Sum() / (double)sizes.Sum();
        Assert.Equal(rate, root.GetProperty("rate").GetDouble(), 12);
        Assert.True(rate <= 3.5);
        Assert.All(bits, b => Assert.True(b >= 2));
    }

    [Fact]
    public void DpFindsTheOptimumOnAHandCheckedInstance()
    {
        // Budget 3.5 * 61440 = 215040 weight-bits, 65536 of them taken by the pinned head; brute force over the
        // three free units gives the least distortion the DP must match.
        var (code, stdout, _) = Run("solve", Write(Curves), "--target-bits", "3.5", "--json");
        Assert.Equal(ExitCodes.Ok, code);
        using var doc = JsonDocument.Parse(stdout);
        var distortion = doc.RootElement.GetProperty("distortion").GetDouble();
        int[] widths = [2, 3, 4, 5, 6, 8];
        double[][] d = [[4.0, 1.9, 0.8, 0.35, 0.16, 0.04], [2.5, 1.1, 0.5, 0.22, 0.1, 0.03], [3.0, 1.2, 0.45, 0.2, 0.09, 0.02]];
        var best = double.MaxValue;
        for (var a = 0; a < 6; a++)
            for (var b = 0; b < 6; b++)
                for (var c = 0; c < 6; c++)
                    if (4096L * widths[a] + 16384L * widths[b] + 32768L * widths[c] + 8192L * 8 <= 215040)
                        best = Math.Min(best, d[0][a] + d[1][b] + d[2][c] + 0.01);
        Assert.Equal(best, distortion, 12);
    }

    [Fact]
    public void TiedUnitsAreAllocatedAsTheirRepresentative()
    {
        // mlp.p4 applies mlp's weight: one unit of mlp's size whose curve is the sum, as the compile that wrote it allocates.
        const string tied = """
            {"schema": "onnxquant.curves/1", "units": [
              {"name": "attn", "size": 16384, "bits": [2,4,8], "distortion": [2.5, 0.5, 0.03], "pinned_bits": null},
              {"name": "mlp", "size": 32768, "bits": [2,4,8], "distortion": [3.0, 0.45, 0.02], "pinned_bits": null},
              {"name": "mlp.p4", "size": 32768, "bits": [2,4,8], "distortion": [1.0, 0.15, 0.01], "pinned_bits": null, "tied_to": "mlp"}
            ]}
            """;
        var (code, stdout, stderr) = Run("solve", Write(tied), "--target-bits", "4", "--json");
        Assert.True(code == 0, stderr);
        Assert.Contains("1 tied unit(s)", stderr);
        var root = JsonDocument.Parse(stdout).RootElement;
        var allocation = root.GetProperty("allocation");
        Assert.Equal(["attn", "mlp"], allocation.EnumerateObject().Select(p => p.Name));
        // 49,152 weights at 4 bits: both at 4 (mlp counted once), distortion 0.5 + (0.45 + 0.15).
        Assert.Equal(4, allocation.GetProperty("attn").GetInt32());
        Assert.Equal(4, allocation.GetProperty("mlp").GetInt32());
        Assert.Equal(4.0, root.GetProperty("rate").GetDouble(), 12);
        Assert.Equal(1.1, root.GetProperty("distortion").GetDouble(), 9);
    }

    [Fact]
    public void TablePrintsEveryUnit()
    {
        var (code, stdout, _) = Run("solve", Write(Curves), "--target-bits", "4");
        Assert.Equal(ExitCodes.Ok, code);
        Assert.Contains("solver dp, target 4 bits: rate", stdout);
        Assert.Contains("dp: exact", stdout);
        foreach (var name in new[] { "stem", "attn", "mlp", "head" })
            Assert.Contains(name, stdout);
        Assert.Contains("8 (pinned)", stdout);
    }

    [Fact]
    public void SeveralTargetsPrintTheFrontAndKeepInfeasibleOnesInTheirRow()
    {
        var (code, stdout, _) = Run("solve", Write(Curves), "--target-bits", "1.5,3,4,8", "--json");
        Assert.Equal(ExitCodes.Ok, code);
        using var doc = JsonDocument.Parse(stdout);
        var front = doc.RootElement.GetProperty("front").EnumerateArray().ToArray();
        Assert.Equal(4, front.Length);
        Assert.Equal("TargetBelowMinBits", front[0].GetProperty("reason").GetString());
        Assert.Contains("below the minimum bit width 2", front[0].GetProperty("error").GetString());
        var distortions = front[1..].Select(p => p.GetProperty("distortion").GetDouble()).ToArray();
        Assert.True(distortions[0] >= distortions[1] && distortions[1] >= distortions[2]);
        Assert.Equal(8, front[3].GetProperty("rate").GetDouble());

        var (tableCode, table, _) = Run("solve", Write(Curves), "--target-bits", "1.5,3,4,8");
        Assert.Equal(ExitCodes.Ok, tableCode);
        Assert.Contains("rate-distortion front over 4 targets", table);
        Assert.Contains("bits @ 3", table);
        Assert.Contains("infeasible budget", table);
    }

    [Fact]
    public void OutputIsByteIdenticalAcrossRuns()
    {
        var path = Write(Curves);
        foreach (var solver in new[] { "dp", "lagrangian" })
        {
            var first = Run("solve", path, "--target-bits", "2.5,3.5", "--solver", solver, "--json").Out;
            var second = Run("solve", path, "--target-bits", "2.5,3.5", "--solver", solver, "--json").Out;
            Assert.Equal(first, second);
        }
    }

    [Theory]
    [InlineData("1.5", "below the minimum bit width 2")]
    [InlineData("abc", "--target-bits: 'abc' is not a positive number")]
    [InlineData("3,-1", "'-1' is not a positive number")]
    public void BadTargetsExit2WithOneLine(string target, string expected)
    {
        var (code, stdout, stderr) = Run("solve", Write(Curves), "--target-bits", target);
        Assert.Equal(ExitCodes.BadInput, code);
        Assert.Equal("", stdout);
        var line = Assert.Single(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith("error: ", line);
        Assert.Contains(expected, line);
    }

    [Theory]
    [InlineData("{\"schema\": \"onnxquant.curves/1\", \"units\": [", "is not valid JSON")]
    [InlineData("{\"schema\": \"onnxquant.curves/2\", \"units\": []}", "this version reads \"onnxquant.curves/1\"")]
    [InlineData("{\"schema\": \"onnxquant.curves/1\", \"units\": [{\"name\": \"a\", \"size\": 4, \"bits\": [2], \"distortion\": [-1]}]}", "unit 'a' has negative distortion")]
    [InlineData("{\"schema\": \"onnxquant.curves/1\", \"units\": [{\"name\": \"a\", \"size\": 4, \"bits\": [2,3], \"distortion\": [1]}]}", "2 bit widths but 1 distortion values")]
    [InlineData("{\"schema\": \"onnxquant.curves/1\", \"units\": [{\"name\": \"a\", \"size\": 4, \"bit\": [2], \"distortion\": [1]}]}", "unknown key \"bit\"")]
    public void MalformedCurvesExit2NamingTheProblem(string json, string expected)
    {
        var (code, stdout, stderr) = Run("solve", Write(json), "--target-bits", "3");
        Assert.Equal(ExitCodes.BadInput, code);
        Assert.Equal("", stdout);
        Assert.Contains(expected, stderr);
        Assert.DoesNotContain("   at ", stderr);
    }

    [Fact]
    public void MissingFileExits2()
    {
        var (code, _, stderr) = Run("solve", Path.Combine(_dir, "nope.json"), "--target-bits", "3");
        Assert.Equal(ExitCodes.BadInput, code);
        Assert.Contains("nope.json", stderr);
    }

    [Fact]
    public void RisingCurveWarnsOnStderrAndMonotoneOptionFixesIt()
    {
        var json = """{"schema": "onnxquant.curves/1", "units": [{"name": "bumpy", "size": 64, "bits": [2,3,4], "distortion": [3, 1, 2], "pinned_bits": null}]}""";
        var (code, _, stderr) = Run("solve", Write(json), "--target-bits", "4");
        Assert.Equal(ExitCodes.Ok, code);
        Assert.Contains("warning: unit 'bumpy': distortion rises with more bits (3->4); used as given", stderr);
        var (monoCode, monoOut, monoErr) = Run("solve", Write(json), "--target-bits", "4", "--monotone", "--json");
        Assert.Equal(ExitCodes.Ok, monoCode);
        Assert.Contains("made monotone", monoErr);
        // 3 and 4 bits now tie (running minimum 1): the tie rule spends the budget, without it the tie goes to fewer bits.
        Assert.Contains("\"bumpy\": 4", monoOut);
        Assert.Contains("\"tie_tolerance\": 0.0001", monoOut);
        var (_, exactOut, _) = Run("solve", Write(json), "--target-bits", "4", "--monotone", "--json", "--tie-tolerance", "0");
        Assert.Contains("\"bumpy\": 3", exactOut);
        Assert.Contains("\"tie_step\": 0", exactOut);
    }

    [Fact]
    public void LagrangianEpsilonAndMinBitsAreUsed()
    {
        var (code, stdout, _) = Run("solve", Write(Curves), "--target-bits", "4", "--solver", "lagrangian", "--epsilon", "0.5", "--min-bits", "3", "--json");
        Assert.Equal(ExitCodes.Ok, code);
        using var doc = JsonDocument.Parse(stdout);
        Assert.Equal(0.5, doc.RootElement.GetProperty("stats").GetProperty("epsilon").GetDouble());
        Assert.All(doc.RootElement.GetProperty("allocation").EnumerateObject(), p => Assert.True(p.Value.GetInt32() >= 3));
        var (badCode, _, badErr) = Run("solve", Write(Curves), "--target-bits", "4", "--solver", "lagrangian", "--epsilon", "-1");
        Assert.Equal(ExitCodes.BadInput, badCode);
        Assert.Contains("epsilon must be a finite non-negative number", badErr);
    }

    [Fact]
    public void ExampleCurvesGiveADpFrontNoWorseThanTheLagrangianOne()
    {
        var path = Path.Combine(AppContext.BaseDirectory, "data", "vit-small.curves.json");
        var targets = "2.5,3,3.5,4,5";
        var (dpCode, dpOut, _) = Run("solve", path, "--target-bits", targets, "--json");
        var (lgCode, lgOut, lgErr) = Run("solve", path, "--target-bits", targets, "--solver", "lagrangian", "--json");
        Assert.Equal(ExitCodes.Ok, dpCode);
        Assert.Equal(ExitCodes.Ok, lgCode);
        using var dp = JsonDocument.Parse(dpOut);
        using var lg = JsonDocument.Parse(lgOut);
        var dpFront = dp.RootElement.GetProperty("front").EnumerateArray().ToArray();
        var lgFront = lg.RootElement.GetProperty("front").EnumerateArray().ToArray();
        Assert.Equal(5, dpFront.Length);
        for (var i = 0; i < dpFront.Length; i++)
        {
            var target = dpFront[i].GetProperty("target_bits").GetDouble();
            Assert.True(dpFront[i].GetProperty("rate").GetDouble() <= target);
            Assert.True(lgFront[i].GetProperty("rate").GetDouble() <= target);
            Assert.True(dpFront[i].GetProperty("distortion").GetDouble() <= lgFront[i].GetProperty("distortion").GetDouble() + 1e-12);
            Assert.True(dpFront[i].GetProperty("stats").GetProperty("exact").GetBoolean());
            Assert.Equal(8, dpFront[i].GetProperty("allocation").GetProperty("head.bbox").GetInt32());
        }
        // Where the hull steps over the 0.02 window the Lagrangian says so on stderr.
        var missed = lgFront.Count(p => p.GetProperty("stats").GetProperty("window_missed").GetBoolean());
        Assert.Equal(missed, lgErr.Split('\n').Count(l => l.Contains("no multiplier gives a rate within 0.02")));
    }
}
