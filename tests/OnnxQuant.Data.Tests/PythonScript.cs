using System.Diagnostics;

namespace OnnxQuant.Data.Tests;

/// <summary>Runs a Python script with Debian's interpreter (the one that has numpy) and fails the test on error.</summary>
internal static class PythonScript
{
    public const string Interpreter = "/usr/bin/python3";

    public static string Run(string script, string workingDirectory)
    {
        var scriptPath = Path.Combine(workingDirectory, $"script-{Guid.NewGuid():N}.py");
        File.WriteAllText(scriptPath, script);
        var psi = new ProcessStartInfo(Interpreter, scriptPath)
        {
            WorkingDirectory = workingDirectory,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        using var process = Process.Start(psi)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEnd();
        process.WaitForExit();
        if (process.ExitCode != 0)
            throw new InvalidOperationException($"python failed ({process.ExitCode}):\n{stderr}\n{stdout.Result}");
        return stdout.Result;
    }
}

/// <summary>A temporary directory removed when the test class is done.</summary>
public sealed class TempDir : IDisposable
{
    public TempDir()
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), $"onnxquant-test-{Guid.NewGuid():N}");
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        try { Directory.Delete(Path, recursive: true); } catch (IOException) { }
    }
}
