using System.Diagnostics;
using System.Security.Cryptography;
using System.Text.Json.Nodes;

namespace OnnxQuant.Cli.Tests;

/// <summary>
/// The committed small DETR with its pinned curves (no curve measurement, about a second a compile), copied into a
/// temporary folder with its calibration data, and reference artifacts of two compiles: the "previous" artifact a
/// faulty compile must leave whole, and the "new" one a completed compile writes.
/// </summary>
public sealed class FaultFixture : IDisposable
{
    public FaultFixture()
    {
        Root = Path.Combine(Path.GetTempPath(), $"onnxquant-faults-{Guid.NewGuid():N}");
        Inputs = Path.Combine(Root, "inputs");
        Directory.CreateDirectory(Inputs);
        Model = Copy("models/fixtures/detr_small.onnx");
        Calib = Copy("models/data/calib.npz");
        Curves = Copy("tests/OnnxQuant.Solvers.Tests/data/detr_small.curves.json");
        InputHashes = Hashes();
        Previous = Reference("previous", "5");
        Single = Reference("single", "4");
        Multi = Reference("multi", "8,4");
    }

    public string Root { get; }
    public string Inputs { get; }
    public string Model { get; }
    public string Calib { get; }
    public string Curves { get; }
    public IReadOnlyDictionary<string, string> InputHashes { get; }
    public string Previous { get; }
    public string Single { get; }
    public string Multi { get; }

    public string[] Args(string output, string targets) =>
        ["compile", Model, "--calib", Calib, "--calib-samples", "8", "--verify-samples", "2", "--curves-file", Curves,
         "--no-cache", "--threads", "1", "-q", "--target-bits", targets, "-o", output];

    /// <summary>sha256 of every input file, to show that no fault ever changed one.</summary>
    public Dictionary<string, string> Hashes() =>
        Directory.EnumerateFiles(Inputs).ToDictionary(f => f, f => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(f))));

    private string Reference(string name, string targets)
    {
        var dir = Path.Combine(Root, "ref", name);
        var (code, _, stderr) = FaultTests.Cli(null, Args(dir, targets));
        Assert.True(code == 0, stderr);
        return dir;
    }

    private string Copy(string relative)
    {
        var target = Path.Combine(Inputs, Path.GetFileName(relative));
        File.Copy(RepoPaths.File(relative), target);
        return target;
    }

    public void Dispose()
    {
        foreach (var mount in Mounts)
            Process.Start("umount", mount)?.WaitForExit();
        Directory.Delete(Root, true);
    }

    public List<string> Mounts { get; } = [];
}

/// <summary>
/// The build-step guarantees under faults, each run as a separate <c>onnxquant</c> process: SIGKILL at named points of
/// single- and multi-target compiles (ONNXQUANT_FAULT, see FaultPoints), a full disk, two compiles into one folder,
/// symbolic and hard links onto inputs, and every compile option given a malformed value. Every case asserts that
/// the inputs are byte-identical, that the output folder holds exactly the previous artifact or exactly the new one
/// (every file equal to a reference compile's, manifest hashes matching, timings aside), the documented exit code, and
/// one line on stderr for an error.
/// </summary>
public abstract class FaultTests(FaultFixture fx)
{
    protected const int Killed = 137; // 128 + SIGKILL, as a shell reports kill -9

    internal static (int Code, string Out, string Err) Cli(string? fault, params string[] args)
    {
        var start = new ProcessStartInfo(Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        start.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "onnxquant.dll"));
        foreach (var a in args)
            start.ArgumentList.Add(a);
        start.Environment["ONNXQUANT_FAULT"] = fault ?? "";
        // A killed compile cannot delete its scratch folders (spilled rows, widths): each run gets a temporary folder of
        // its own, deleted here, so the kill tests leave nothing in the machine's.
        var scratch = Directory.CreateTempSubdirectory("onnxquant-fault-tmp-").FullName;
        start.Environment["TMPDIR"] = scratch;
        try
        {
            using var process = Process.Start(start)!;
            var stdout = process.StandardOutput.ReadToEndAsync();
            var stderr = process.StandardError.ReadToEndAsync();
            Assert.True(process.WaitForExit(120_000), "onnxquant did not finish in 2 minutes");
            process.WaitForExit();
            return (process.ExitCode, stdout.Result, stderr.Result);
        }
        finally
        {
            Directory.Delete(scratch, recursive: true);
        }
    }

    /// <summary>
    /// Every file of an artifact folder by relative path; report.json without its wall-time timings; report.html (which
    /// shows the timings) checked to be the page its own manifest and reports render to.
    /// </summary>
    protected static SortedDictionary<string, string> Contents(string dir)
    {
        var files = new SortedDictionary<string, string>(StringComparer.Ordinal);
        foreach (var file in Directory.EnumerateFiles(dir, "*", SearchOption.AllDirectories))
        {
            var relative = Path.GetRelativePath(dir, file);
            var bytes = File.ReadAllBytes(file);
            if (Path.GetFileName(file) == "report.json")
            {
                var json = JsonNode.Parse(bytes)!.AsObject();
                json.Remove("timings_s");
                bytes = System.Text.Encoding.UTF8.GetBytes(json.ToJsonString());
            }
            else if (relative == OnnxQuant.Passes.Artifact.HtmlReportWriter.FileName)
            {
                Assert.True(bytes.AsSpan().SequenceEqual(OnnxQuant.Passes.Artifact.HtmlReportWriter.RenderFolder(dir)),
                    $"{file} is not the page of the reports beside it");
                bytes = [];
            }
            files[relative] = Convert.ToHexString(SHA256.HashData(bytes));
        }
        return files;
    }

    /// <summary>The manifest's hashes match the model files beside it.</summary>
    protected static void AssertManifestMatches(string dir)
    {
        var manifest = JsonNode.Parse(File.ReadAllBytes(Path.Combine(dir, "manifest.json")))!;
        var outputs = manifest["outputs"]!.AsArray();
        Assert.NotEmpty(outputs);
        foreach (var o in outputs)
        {
            var file = Path.Combine(dir, o!["path"]!.GetValue<string>());
            Assert.Equal(o["sha256"]!.GetValue<string>(), Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(file))));
            Assert.True(File.Exists(Path.Combine(Path.GetDirectoryName(file)!, "report.json")), $"no report beside {file}");
        }
    }

    /// <summary>The folder is one whole artifact: exactly one of the references, file for file.</summary>
    protected static string AssertWhole(string dir, params string[] references)
    {
        Assert.True(Directory.Exists(dir), $"{dir} is missing");
        AssertManifestMatches(dir);
        var actual = Contents(dir);
        var match = references.Where(r => Contents(r).SequenceEqual(actual)).ToList();
        Assert.True(match.Count == 1, $"{dir} holds [{string.Join(", ", actual.Keys)}], equal to none of {string.Join(", ", references)}");
        return match[0];
    }

    protected void AssertInputsUntouched() => Assert.Equal(fx.InputHashes, fx.Hashes());

    protected static void AssertNoLeftovers(string output)
    {
        var parent = Path.GetDirectoryName(Path.GetFullPath(output))!;
        var name = Path.GetFileName(Path.GetFullPath(output));
        var left = Directory.EnumerateFileSystemEntries(parent, $".{name}.onnxquant-*").Select(Path.GetFileName)
            .Where(n => n != $".{name}.onnxquant-lock").ToList();
        Assert.True(left.Count == 0, $"left beside {output}: {string.Join(", ", left)}");
    }

    protected static void AssertOneErrorLine(string stderr, string contains)
    {
        var lines = stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.True(lines.Length == 1, $"expected one line on stderr, got {lines.Length}:\n{stderr}");
        Assert.StartsWith("error: ", lines[0]);
        Assert.Contains(contains, lines[0]);
    }

    protected string Fresh(string name)
    {
        var dir = Path.Combine(fx.Root, "runs", $"{name}-{Guid.NewGuid():N}"[..(name.Length + 9)]);
        Directory.CreateDirectory(Path.GetDirectoryName(dir)!);
        return dir;
    }

    protected static void CopyTree(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (var file in Directory.EnumerateFiles(from, "*", SearchOption.AllDirectories))
        {
            var target = Path.Combine(to, Path.GetRelativePath(from, file));
            Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            File.Copy(file, target);
        }
    }

    // 20 points of a single-target compile: the start of every stage, the lock, and every step of the write and the
    // publish (write:half#n stops with half of the n-th file written: model, report, manifest).
    protected FaultFixture Fx => fx;
}

/// <summary>SIGKILL at 26 named points of single- and multi-target compiles.</summary>
public class KillPointTests(FaultFixture fx) : FaultTests(fx), IClassFixture<FaultFixture>
{
    public static TheoryData<string> SinglePoints() => new(
        "stage:load", "stage:canonicalize", "stage:discover", "stage:calibrate", "stage:curves", "stage:allocate",
        "stage:rewrite", "stage:verify", "stage:write", "output:locked", "write:model", "write:half", "write:report",
        "write:half#2", "write:manifest", "write:half#3", "publish:synced", "publish:swapped", "publish:done",
        "stage:verify#2");

    // 6 more in a two-target compile: inside the second target and between its files.
    public static TheoryData<string> MultiPoints() => new(
        "stage:allocate#2", "write:model#2", "write:half#2", "write:report#2", "write:half#4", "publish:swapped");

    [Theory]
    [MemberData(nameof(SinglePoints))]
    public void KilledSingleTargetCompileLeavesThePreviousOrTheNewArtifact(string point) =>
        KillAt(point, "4", Fx.Single);

    [Theory]
    [MemberData(nameof(MultiPoints))]
    public void KilledMultiTargetCompileLeavesThePreviousOrTheNewArtifact(string point) =>
        KillAt(point, "8,4", Fx.Multi);

    private void KillAt(string point, string targets, string expected)
    {
        var output = Fresh("kill");
        CopyTree(Fx.Previous, output);
        var (code, _, stderr) = Cli("kill@" + point, Fx.Args(output, targets));
        Assert.True(code == Killed, $"the compile was not killed at {point} (exit {code}): {stderr}");
        AssertInputsUntouched();
        var found = AssertWhole(output, Fx.Previous, expected);
        // Before the swap the previous artifact stays; from the swap on the new one is there.
        var published = point.StartsWith("publish:swapped", StringComparison.Ordinal) || point.StartsWith("publish:done", StringComparison.Ordinal);
        Assert.Equal(published ? expected : Fx.Previous, found);

        // The next compile clears what the killed one left and publishes the new artifact.
        (code, _, stderr) = Cli(null, Fx.Args(output, targets));
        Assert.True(code == 0, stderr);
        AssertWhole(output, expected);
        AssertNoLeftovers(output);
        AssertInputsUntouched();
    }

}

/// <summary>A full disk, two compiles into one folder, links onto inputs, special files.</summary>
public class FaultCaseTests(FaultFixture fx) : FaultTests(fx), IClassFixture<FaultFixture>
{
    [Fact]
    public void FullDiskFailsWithExit2AndKeepsThePreviousArtifact()
    {
        // A real full disk: a small tmpfs where the mount is allowed (root in CI's container), else the injected
        // ENOSPC of the write path (the same IOException the kernel's error becomes).
        var disk = Path.Combine(Fx.Root, "disk");
        Directory.CreateDirectory(disk);
        var mounted = TryMountTmpfs(disk, "4m");
        if (mounted)
            Fx.Mounts.Add(disk);
        var output = Path.Combine(disk, "out");
        CopyTree(Fx.Previous, output);
        if (mounted)
        {
            // Leave less room than the new model needs.
            var free = new DriveInfo(disk).AvailableFreeSpace;
            File.WriteAllBytes(Path.Combine(disk, "filler"), new byte[Math.Max(0, free - 256 * 1024)]);
        }
        var (code, _, stderr) = Cli(mounted ? null : "enospc@write:half", Fx.Args(output, "8,4"));
        Assert.Equal(2, code);
        AssertOneErrorLine(stderr, "No space left on device");
        Assert.Contains("previous contents", stderr);
        AssertWhole(output, Fx.Previous);
        AssertNoLeftovers(output);
        AssertInputsUntouched();
    }

    private static bool TryMountTmpfs(string dir, string size, bool readOnly = false)
    {
        try
        {
            using var mount = Process.Start("mount", ["-t", "tmpfs", "-o", $"size={size}{(readOnly ? ",ro" : "")}", "tmpfs", dir])!;
            return mount.WaitForExit(10_000) && mount.ExitCode == 0;
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return false; // no mount program
        }
    }

    [Fact]
    public async Task SecondCompileIntoTheSameFolderIsRefusedWhileTheFirstRuns()
    {
        var output = Fresh("concurrent");
        CopyTree(Fx.Previous, output);
        var first = Task.Run(() => Cli("pause@stage:calibrate", Fx.Args(output, "4")));
        // The first holds the lock once its staging folder exists.
        var parent = Path.GetDirectoryName(output)!;
        var deadline = DateTime.UtcNow.AddSeconds(60);
        while (!Directory.EnumerateDirectories(parent, $".{Path.GetFileName(output)}.onnxquant-staging-*").Any())
        {
            Assert.True(DateTime.UtcNow < deadline, "the first compile never staged");
            Thread.Sleep(50);
        }
        var (code, _, stderr) = Cli(null, Fx.Args(output, "8,4"));
        Assert.Equal(2, code);
        AssertOneErrorLine(stderr, "another onnxquant compile is writing this folder");
        var (firstCode, _, firstErr) = await first;
        Assert.True(firstCode == 0, firstErr);
        AssertWhole(output, Fx.Single);
        AssertNoLeftovers(output);
        AssertInputsUntouched();
    }

    [Fact]
    public void SymlinkedOutputFolderIsPublishedThroughTheLink()
    {
        var real = Fresh("real");
        CopyTree(Fx.Previous, real);
        var link = Fresh("link");
        Directory.CreateSymbolicLink(link, real);
        var (code, _, stderr) = Cli(null, Fx.Args(link, "4"));
        Assert.True(code == 0, stderr);
        Assert.NotNull(new DirectoryInfo(link).LinkTarget);
        AssertWhole(real, Fx.Single);
        AssertNoLeftovers(real);
        AssertInputsUntouched();
    }

    public static TheoryData<string, string> AliasCases() => new()
    {
        { "output-is-input-folder-by-link", "holds the input model" },
        { "output-holds-hard-link-of-input", "hard link" },
        { "output-inside-calibration-folder", "lies inside the calibration data folder" },
        { "recipe-onto-input-model", "is the input model" },
        { "recipe-onto-calibration-through-link", "is the calibration data" },
        { "recipe-into-artifact", "lies inside the output folder" },
        { "curves-onto-curves-file", "is the curves file" },
        { "output-inside-artifact", "lies inside the artifact folder" },
    };

    [Theory]
    [MemberData(nameof(AliasCases))]
    public void OutputsAliasingAnInputAreRefused(string name, string message)
    {
        var scratch = Fresh(name);
        Directory.CreateDirectory(scratch);
        var calibDir = Path.Combine(scratch, "calibdir");
        Directory.CreateDirectory(calibDir);
        var args = Fx.Args(Path.Combine(scratch, "out"), "4").ToList();
        void Set(string option, string value) => args[args.IndexOf(option) + 1] = value;
        switch (name)
        {
            case "output-is-input-folder-by-link":
                var link = Path.Combine(scratch, "inputs-link");
                Directory.CreateSymbolicLink(link, Fx.Inputs);
                Set("-o", link);
                break;
            case "output-holds-hard-link-of-input":
                var artifact = Path.Combine(scratch, "artifact");
                CopyTree(Fx.Single, artifact);
                File.Delete(Path.Combine(artifact, "model.onnx"));
                Assert.Equal(0, Link(Fx.Model, Path.Combine(artifact, "model.onnx")));
                Set("-o", artifact);
                break;
            case "output-inside-calibration-folder":
                File.Copy(Fx.Calib, Path.Combine(calibDir, "calib.npz"));
                Set("--calib", calibDir);
                Set("-o", Path.Combine(calibDir, "out"));
                break;
            case "recipe-onto-input-model":
                args.AddRange(["--emit-qat-recipe", Fx.Model]);
                break;
            case "recipe-onto-calibration-through-link":
                var calibLink = Path.Combine(scratch, "calib-link.npz");
                File.CreateSymbolicLink(calibLink, Fx.Calib);
                args.AddRange(["--emit-qat-recipe", calibLink]);
                break;
            case "recipe-into-artifact":
                args.AddRange(["--emit-qat-recipe", Path.Combine(scratch, "out", "model.onnx")]);
                break;
            case "curves-onto-curves-file":
                args.AddRange(["--write-curves", Fx.Curves]);
                break;
            case "output-inside-artifact":
                var outer = Path.Combine(scratch, "outer");
                CopyTree(Fx.Multi, outer);
                Set("-o", Path.Combine(outer, "bits-4", "again"));
                break;
        }
        var before = Directory.EnumerateFileSystemEntries(scratch, "*", SearchOption.AllDirectories).Order().ToList();
        var (code, _, stderr) = Cli(null, [.. args]);
        Assert.Equal(2, code);
        AssertOneErrorLine(stderr, message);
        AssertInputsUntouched();
        // Refused before anything was written: not even a lock file.
        Assert.Equal(before, Directory.EnumerateFileSystemEntries(scratch, "*", SearchOption.AllDirectories).Order().ToList());
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "link", SetLastError = true)]
    private static extern int Link(string existing, string created);

    [Fact]
    public void UnwritableOutputParentFailsBeforeAnyStage()
    {
        // A read-only file system where mount is allowed (root ignores file modes), else a folder without write permission.
        var parent = Fresh("readonly");
        Directory.CreateDirectory(parent);
        if (TryMountTmpfs(parent, "1m", readOnly: true))
            Fx.Mounts.Add(parent);
        else if (!OperatingSystem.IsWindows())
            File.SetUnixFileMode(parent, UnixFileMode.UserRead | UnixFileMode.UserExecute);
        var (code, _, stderr) = Cli(null, Fx.Args(Path.Combine(parent, "out"), "4"));
        Assert.Equal(2, code);
        AssertOneErrorLine(stderr, $"cannot write in {parent}");
        Assert.Empty(Directory.EnumerateFileSystemEntries(parent));
        AssertInputsUntouched();
    }

    [Fact]
    public void OtherCommandsRefuseBadOutputsAndBoundsWithOneLine()
    {
        var scratch = Fresh("other");
        Directory.CreateDirectory(scratch);
        var cases = new (string[] Args, string Message)[]
        {
            (["bench", Fx.Model, "--runs", "2147483647"], "--runs must be 1..100000"),
            (["bench", Fx.Model, "--warmup", "-1"], "--warmup must be 0..100000"),
            (["qat-recipe", "-o", scratch], "is a folder"),
            (["qat-recipe", "--model", Fx.Model, "-o", Fx.Model], "is the model"),
            (["frobnicate"], "frobnicate"),
            (["compile"], "Required argument missing for command: 'compile'"),
        };
        foreach (var (args, message) in cases)
        {
            var (code, _, stderr) = Cli(null, args);
            Assert.True(code == 2, $"{string.Join(" ", args)}: exit {code}: {stderr}");
            AssertOneErrorLine(stderr, message);
        }
        Assert.Empty(Directory.EnumerateFileSystemEntries(scratch));
        AssertInputsUntouched();
    }

    [Fact]
    public void SpecialFilesAndLinkLoopsAreRefusedWithoutBlocking()
    {
        var scratch = Fresh("special");
        Directory.CreateDirectory(scratch);
        var fifo = Path.Combine(scratch, "calib.npz");
        using (var mkfifo = Process.Start("mkfifo", [fifo])!)
        {
            mkfifo.WaitForExit();
            Assert.Equal(0, mkfifo.ExitCode);
        }
        var loop = Path.Combine(scratch, "loop");
        File.CreateSymbolicLink(loop, loop);
        // A model whose external data file is a FIFO: opening it would block until a writer came.
        var external = Path.Combine(scratch, "external");
        Directory.CreateDirectory(external);
        var externalModel = Path.Combine(external, "m.onnx");
        OnnxQuant.Frontend.ModelIO.Save(OnnxQuant.Frontend.ModelIO.Load(Fx.Model), externalModel,
            new OnnxQuant.Frontend.SaveOptions { ExternalData = OnnxQuant.Frontend.ExternalDataMode.Always });
        File.Delete(externalModel + ".data");
        using (var mkfifo = Process.Start("mkfifo", [externalModel + ".data"])!)
            mkfifo.WaitForExit();
        // A calibration folder holding a link to itself.
        var calibDir = Path.Combine(scratch, "calib-dir");
        Directory.CreateDirectory(calibDir);
        File.Copy(Fx.Calib, Path.Combine(calibDir, "a.npz"));
        File.CreateSymbolicLink(Path.Combine(calibDir, "b.npz"), Path.Combine(calibDir, "b.npz"));
        foreach (var (option, value, message) in new[]
                 {
                     ("--calib", fifo, "FIFO"), ("--curves-file", fifo, "FIFO"), ("--calib", Path.Combine(loop, "x.npz"), "symbolic links"),
                     ("-o", Path.Combine(loop, "out"), "symbolic links"),
                     ("--calib", calibDir, "link loop"), (Fx.Model, externalModel, "FIFO"),
                 })
        {
            var args = Fx.Args(Path.Combine(scratch, "out"), "4").ToList();
            var at = args.IndexOf(option);
            args[option == Fx.Model ? at : at + 1] = value; // the model is an argument, the rest are options
            var (code, _, stderr) = Cli(null, [.. args]);
            Assert.True(code == 2, $"{option} {value}: exit {code}: {stderr}");
            AssertOneErrorLine(stderr, message);
        }
        AssertInputsUntouched();
    }
}

/// <summary>Every compile option with a value it cannot take, and the command line's own errors.</summary>
public class MalformedOptionTests(FaultFixture fx) : FaultTests(fx), IClassFixture<FaultFixture>
{
    // Every compile option with a value it cannot take (and the command line's own errors): exit 2, one line naming
    // the option, nothing written. In process, since nothing here needs a kill.
    public static TheoryData<string[], string> Malformed() => new()
    {
        { ["--calib-samples", "abc"], "--calib-samples" },
        { ["--calib-samples", "0"], "--calib-samples" },
        { ["--verify-samples", "-1"], "--verify-samples" },
        { ["--target-bits", "abc"], "--target-bits" },
        { ["--target-bits", "NaN"], "--target-bits" },
        { ["--target-bits", "3.501,3.504"], "bits-3.5" },
        { ["--target-bits", "4,4"], "--target-bits" },
        { ["--bits", "1,9"], "--bits" },
        { ["--bits", "x"], "--bits" },
        { ["--min-bits", "99"], "--min-bits" },
        { ["--solver", "bogus"], "bogus" },
        { ["--epsilon", "NaN"], "--epsilon" },
        { ["--epsilon", "-1"], "--epsilon" },
        { ["--act-bits", "7"], "--act-bits" },
        { ["--act-calibration", "median"], "median" },
        { ["--granularity", "row"], "row" },
        { ["--group-size", "x"], "--group-size" },
        { ["--head-bits", "x"], "--head-bits" },
        { ["--format", "int3"], "int3" },
        { ["--block-size", "x"], "--block-size" },
        { ["--run-batch", "0"], "--run-batch" },
        { ["--curves", "slow"], "slow" },
        { ["--curves-file", "/nonexistent/c.json"], "--curves-file" },
        { ["--max-distortion", "NaN"], "--max-distortion" },
        { ["--max-distortion", "-1"], "--max-distortion" },
        { ["--max-drop", "NaN"], "--max-drop" },
        { ["--max-drop", "1"], "--max-drop" },
        { ["--threads", "-1"], "--threads" },
        { ["--threads", "x"], "--threads" },
        { ["--ort-lib", "/nonexistent/libonnxruntime.so"], "/nonexistent/libonnxruntime.so" },
        { ["--verify-data", "/nonexistent/v.npz"], "/nonexistent/v.npz" },
        { ["--feature", "no_such_tensor"], "no_such_tensor" },
        { ["--emit-qat-recipe", ""], "--emit-qat-recipe" },
        { ["--emit-qat-recipe", "r.json", "--qat-attention-bits", "99"], "--qat-attention-bits" },
        { ["--write-curves", "/nonexistent/dir/c.json"], "--write-curves" },
        { ["--no-such-option"], "--no-such-option" },
        { ["--calib"], "'--calib' is required" },
        { ["-o", ""], "-o" },
    };

    [Theory]
    [MemberData(nameof(Malformed))]
    public void MalformedOptionValuesExit2WithOneLine(string[] bad, string names)
    {
        var output = Fresh("malformed");
        var args = Fx.Args(output, "4").ToList();
        // A later value of an option wins over the default given by Args, except for options parsed as lists.
        foreach (var option in bad.Where(b => b.StartsWith('-')))
            if (args.IndexOf(option) is var at and >= 0)
                args.RemoveRange(at, 2);
        if (bad is ["--calib"])
            bad = []; // the required option left out
        var (code, _, stderr) = Cli(null, [.. args, .. bad]);
        Assert.Equal(2, code);
        AssertOneErrorLine(stderr, names);
        Assert.False(Directory.Exists(output), $"{output} was created");
        AssertNoLeftovers(output);
        AssertInputsUntouched();
    }

}
