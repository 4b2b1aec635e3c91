using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Nodes;

namespace OnnxQuant.Cli.Tests;

/// <summary>
/// The curve cache never decides an artifact and never fails a compile: an entry that was edited, holds other widths
/// or was stored under another key is measured again (with a note) and the artifact equals the uncached one; a cache
/// folder that cannot be used is skipped with a note. Also: --threads above the core count is capped with a note.
/// </summary>
public class CurveCacheCompileTests(CompileCliFixture fixture) : IClassFixture<CompileCliFixture>
{
    private string Out(string name) => Path.Combine(fixture.Root, "cache-tests", name);

    private (int Code, string Out, string Err) Compile(string output, string cache, string threads = "1", params string[] extra) =>
        CliRunner.Run(["compile", fixture.ModelPath, "--calib", fixture.DataPath, "--calib-samples", "16", "--threads", threads,
            "-o", output, "--cache-dir", cache, .. extra]);

    private static string Sha(string path) => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(path)));

    private static JsonNode Report(string dir) => JsonNode.Parse(File.ReadAllBytes(Path.Combine(dir, "report.json")))!;

    /// <summary>Rewrites the entry's curves with <paramref name="edit"/>, keeping (or recomputing) the header's checksum.</summary>
    private static void Tamper(string entry, Func<JsonObject, JsonObject> edit, bool fixChecksum, string? key = null)
    {
        var text = File.ReadAllText(entry);
        var newline = text.IndexOf('\n');
        var header = JsonNode.Parse(text[..newline])!.AsObject();
        var body = Encoding.UTF8.GetBytes(edit(JsonNode.Parse(text[(newline + 1)..])!.AsObject()).ToJsonString());
        if (fixChecksum)
            header["sha256"] = Convert.ToHexStringLower(SHA256.HashData(body));
        if (key is not null)
            header["key"] = key;
        File.WriteAllBytes(entry, [.. Encoding.UTF8.GetBytes(header.ToJsonString() + "\n"), .. body]);
    }

    [Fact]
    public void BadCacheEntriesAreMeasuredAgainAndNeverChangeTheArtifact()
    {
        var cache = Out("cache");
        var (code, _, stderr) = Compile(Out("first"), cache);
        Assert.True(code == 0, stderr);
        var entry = Assert.Single(Directory.GetFiles(cache, "*.curves.json"));
        var model = Sha(Path.Combine(Out("first"), "model.onnx"));
        var curves = Report(Out("first"))["curves"]!.ToJsonString();
        Assert.False(Report(Out("first"))["curves_from_cache"]!.GetValue<bool>());

        // Intact: read from the cache, same artifact.
        (code, _, stderr) = Compile(Out("cached"), cache);
        Assert.True(code == 0, stderr);
        Assert.True(Report(Out("cached"))["curves_from_cache"]!.GetValue<bool>());
        Assert.Equal(model, Sha(Path.Combine(Out("cached"), "model.onnx")));

        var cases = new (string Name, Action Damage, string Note)[]
        {
            // A value edited by hand: the checksum no longer matches.
            ("edited", () => Tamper(entry, c => { c["units"]![0]!["distortion"]![0] = 1e9; return c; }, fixChecksum: false), "does not match its checksum"),
            // Fewer widths than requested, with a checksum that fits: caught by the request check.
            ("fewer-widths", () => Tamper(entry, c =>
            {
                foreach (var u in c["units"]!.AsArray())
                {
                    u!["bits"]!.AsArray().RemoveAt(0);
                    u["distortion"]!.AsArray().RemoveAt(0);
                }
                return c;
            }, fixChecksum: true), "do not fit --bits"),
            // A unit's size changed.
            ("other-size", () => Tamper(entry, c => { c["units"]![0]!["size"] = 1; return c; }, fixChecksum: true), "where the model has"),
            // Another entry's file under this name.
            ("other-key", () => Tamper(entry, c => c, fixChecksum: true, key: new string('0', 32)), "another key"),
            // Not JSON at all.
            ("garbage", () => File.WriteAllText(entry, "garbage"), "has no header line"),
        };
        foreach (var (name, damage, note) in cases)
        {
            damage();
            (code, var stdout, stderr) = Compile(Out(name), cache);
            Assert.True(code == 0, $"{name}: {stderr}");
            Assert.Contains($"curve cache: the entry {entry} ", stderr);
            Assert.Contains(note, stderr);
            Assert.False(Report(Out(name))["curves_from_cache"]!.GetValue<bool>(), name);
            Assert.Equal(curves, Report(Out(name))["curves"]!.ToJsonString());
            Assert.Equal(model, Sha(Path.Combine(Out(name), "model.onnx")));
            // The entry was measured again and replaced: the next compile reads it.
            (code, _, stderr) = Compile(Out(name + "-again"), cache);
            Assert.True(code == 0, stderr);
            Assert.True(Report(Out(name + "-again"))["curves_from_cache"]!.GetValue<bool>(), name);
        }
    }

    [Fact]
    public void UnusableCacheFolderIsSkippedWithANote()
    {
        Directory.CreateDirectory(Out(""));
        var file = Out("cache-is-a-file");
        File.WriteAllText(file, "not a folder");
        var (code, _, stderr) = Compile(Out("no-cache"), file);
        Assert.True(code == 0, stderr);
        Assert.Contains($"curve cache: {file} is a file, not a folder; curves are measured without the cache", stderr);
        Assert.Equal("not a folder", File.ReadAllText(file));
        Assert.True(File.Exists(Path.Combine(Out("no-cache"), "manifest.json")));
    }

    [Fact]
    public void ThreadsAboveTheCoreCountAreCappedWithANote()
    {
        var (code, _, stderr) = Compile(Out("threads"), Out("threads-cache"), "100000", "--quiet");
        Assert.True(code == 0, stderr);
        Assert.Equal($"note: --threads 100000 is more than the {Environment.ProcessorCount} cores of this machine; using {Environment.ProcessorCount}",
            stderr.Trim());
    }
}
