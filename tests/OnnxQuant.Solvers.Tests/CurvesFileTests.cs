using System.Text;
using OnnxQuant.Solvers;

namespace OnnxQuant.Solvers.Tests;

public class CurvesFileTests
{
    private static readonly UnitCurve[] Units =
    [
        new("blocks.0.attn.qkv", 1769472, [2, 3, 4, 5, 6, 8], [2.5, 1.1, 0.5, 0.22, 0.1, 1.0 / 3]),
        new("head", 196608, [8], [0.01], PinnedBits: 8),
        new("blocks.0.mlp.fc1[0:64]", 49152, [2, 4, 8], [3e-7, 1e-8, 0]) { AllowedBits = [4, 8] },
        new("blocks.0.mlp.fc2", 49152, [2, 4, 8], [4e-7, 2e-8, 1e-9]) { Gain = 0.0123456789 },
    ];

    [Fact]
    public void RoundTripsExactly()
    {
        var json = CurvesFile.ToJson(Units);
        var back = CurvesFile.Parse(json);
        Assert.Equal(Units.Length, back.Count);
        for (var i = 0; i < Units.Length; i++)
        {
            Assert.Equal(Units[i].Name, back[i].Name);
            Assert.Equal(Units[i].Size, back[i].Size);
            Assert.Equal(Units[i].Bits, back[i].Bits);
            Assert.Equal(Units[i].Distortion, back[i].Distortion); // shortest round-trip numbers: bit-exact
            Assert.Equal(Units[i].PinnedBits, back[i].PinnedBits);
            Assert.Equal(Units[i].AllowedBits, back[i].AllowedBits);
            Assert.Equal(Units[i].Gain, back[i].Gain);
        }
        // A gain is written only where measured.
        Assert.Single(json.Split('\n'), l => l.Contains("\"gain\""));
        Assert.Equal(json, CurvesFile.ToJson(back));
    }

    [Fact]
    public void OutputIsDeterministicWithUnixLineEnds()
    {
        var json = CurvesFile.ToJson(Units);
        Assert.Equal(json, CurvesFile.ToJson(Units));
        Assert.DoesNotContain("\r", json);
        Assert.StartsWith("{\n  \"schema\": \"onnxquant.curves/1\",\n  \"units\": [", json);
        Assert.EndsWith("}\n", json);
        Assert.Contains("\"pinned_bits\": null", json);
    }

    [Fact]
    public void WriteFileIsAtomicAndReadable()
    {
        var dir = Directory.CreateTempSubdirectory("onnxquant-curves-").FullName;
        try
        {
            var path = Path.Combine(dir, "curves.json");
            CurvesFile.WriteFile(path, Units);
            Assert.Equal(CurvesFile.ToJson(Units), File.ReadAllText(path));
            Assert.Single(Directory.GetFiles(dir));
            Assert.Equal(Units.Length, CurvesFile.Read(path).Count);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void WritingNonFiniteDistortionIsAnError()
    {
        var error = Assert.Throws<SolverException>(() => CurvesFile.ToJson([new UnitCurve("x", 1, [2], [double.NaN])]));
        Assert.Contains("unit 'x' has distortion NaN", error.Message);
        error = Assert.Throws<SolverException>(() => CurvesFile.ToJson([new UnitCurve("x", 1, [2], [1]) { Gain = -1 }]));
        Assert.Contains("unit 'x' has gain -1", error.Message);
    }

    [Theory]
    [InlineData("", "is not valid JSON")]
    [InlineData("[1, 2]", "must hold a JSON object")]
    [InlineData("{\"units\": []}", "has no \"schema\" string")]
    [InlineData("{\"schema\": \"onnxquant.curves/1\"}", "has no \"units\" array")]
    [InlineData("{\"schema\": \"onnxquant.curves/1\", \"units\": [], \"extra\": 1}", "unknown top-level key \"extra\"")]
    [InlineData("{\"schema\": \"onnxquant.curves/1\", \"units\": [3]}", "units[0] must be an object, found a number")]
    [InlineData("{\"schema\": \"onnxquant.curves/1\", \"units\": [{\"size\": 1, \"bits\": [2], \"distortion\": [1]}]}", "units[0] needs a \"name\" string")]
    [InlineData("{\"schema\": \"onnxquant.curves/1\", \"units\": [{\"name\": \"a\", \"size\": 1.5, \"bits\": [2], \"distortion\": [1]}]}", "units[0] ('a') needs \"size\": a whole number")]
    [InlineData("{\"schema\": \"onnxquant.curves/1\", \"units\": [{\"name\": \"a\", \"size\": 4, \"bits\": [2, \"3\"], \"distortion\": [1, 2]}]}", "\"bits\"[1] must be a whole number, found \"3\"")]
    [InlineData("{\"schema\": \"onnxquant.curves/1\", \"units\": [{\"name\": \"a\", \"size\": 4, \"bits\": [2], \"distortion\": [null]}]}", "\"distortion\"[0] must be a finite number, found null")]
    [InlineData("{\"schema\": \"onnxquant.curves/1\", \"units\": [{\"name\": \"a\", \"size\": 4, \"bits\": [2], \"distortion\": [1e999]}]}", "\"distortion\"[0] must be a finite number")]
    [InlineData("{\"schema\": \"onnxquant.curves/1\", \"units\": [{\"name\": \"a\", \"size\": 4, \"bits\": [2], \"distortion\": [1], \"pinned_bits\": \"8\"}]}", "\"pinned_bits\" must be a whole number or null")]
    [InlineData("{\"schema\": \"onnxquant.curves/1\", \"units\": [{\"name\": \"a\", \"size\": 4, \"bits\": [2], \"distortion\": [1], \"gain\": -0.5}]}", "\"gain\" must be a non-negative number or null, found -0.5")]
    [InlineData("{\"schema\": \"onnxquant.curves/1\", \"units\": [{\"name\": \"a\", \"size\": 4, \"bits\": [2], \"distortion\": [1], \"gain\": \"1\"}]}", "\"gain\" must be a non-negative number or null, found \"1\"")]
    public void MalformedFilesSayWhatAndWhere(string json, string expected)
    {
        var error = Assert.Throws<SolverException>(() => CurvesFile.Parse(Encoding.UTF8.GetBytes(json), "model.curves.json"));
        Assert.Equal(SolverErrorKind.InvalidCurvesFile, error.Kind);
        Assert.StartsWith("curves file 'model.curves.json' ", error.Message);
        Assert.Contains(expected, error.Message);
    }

    [Fact]
    public void TruncatedJsonNamesTheLine()
    {
        var json = CurvesFile.ToJson(Units);
        var error = Assert.Throws<SolverException>(() => CurvesFile.Parse(json[..(json.Length / 2)]));
        Assert.Matches(@"is not valid JSON at line \d+", error.Message);
    }

    [Fact]
    public void MissingFileIsFileNotFound()
    {
        var path = Path.Combine(Path.GetTempPath(), $"no-such-curves-{Guid.NewGuid():N}.json");
        Assert.Throws<FileNotFoundException>(() => CurvesFile.Read(path));
    }
}
