using System.Diagnostics;

namespace OnnxQuant.QatBridge.Tests;

/// <summary>Paths of the repository and a runner for the bridge's Python package with Debian's interpreter.</summary>
internal static class Repo
{
    public const string Python = "/usr/bin/python3";

    public static string Root => RepoPaths.Root;

    public static string PythonPackageDir => Path.Combine(Root, "src", "QatBridge", "python");

    /// <summary>Runs `python3 args` in the package folder with models/ on the path; fails on a non-zero exit.</summary>
    public static string RunPython(params string[] args)
    {
        var psi = new ProcessStartInfo(Python)
        {
            WorkingDirectory = PythonPackageDir,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        foreach (var a in args)
            psi.ArgumentList.Add(a);
        psi.Environment["PYTHONPATH"] = Path.Combine(Root, "models");
        psi.Environment["OPENBLAS_NUM_THREADS"] = "1";
        using var process = Process.Start(psi)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEnd();
        process.WaitForExit();
        if (process.ExitCode != 0)
            throw new InvalidOperationException($"python {string.Join(" ", args)} failed ({process.ExitCode}):\n{stderr}");
        return stdout.Result;
    }
}

/// <summary>A temporary folder removed at the end of the test.</summary>
public sealed class TempDir : IDisposable
{
    public string Path { get; } = System.IO.Path.Combine(System.IO.Path.GetTempPath(), $"onnxquant-qat-{Guid.NewGuid():N}");

    public TempDir() => Directory.CreateDirectory(Path);

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        try { Directory.Delete(Path, recursive: true); } catch (IOException) { }
    }
}
