using System.Globalization;

namespace OnnxQuant.Passes.Pipeline;

/// <summary>
/// Private temporary folders for what a compile moves out of memory (cut activations, input rows, quantized widths;
/// hundreds of megabytes on a full-size detector). Each compile deletes its own when it ends; a compile that is killed
/// (kill -9, the out-of-memory killer) cannot, so the folder's name carries the process id and the next compile on the
/// machine deletes the folders whose process is gone and that nothing has written to for
/// <see cref="StaleAfter"/> (the age guards against a process id from another PID namespace sharing the folder).
/// </summary>
public static class ScratchFolder
{
    private const string Prefix = "onnxquant-";

    /// <summary>How long a dead process's folder is left alone.</summary>
    public static readonly TimeSpan StaleAfter = TimeSpan.FromHours(2);

    /// <summary>Creates <c>onnxquant-KIND-PID-random</c> in the temporary folder, after sweeping stale ones.</summary>
    public static string Create(string kind)
    {
        Sweep(Path.GetTempPath(), DateTime.UtcNow);
        return Directory.CreateTempSubdirectory($"{Prefix}{kind}-{Environment.ProcessId.ToString(CultureInfo.InvariantCulture)}-").FullName;
    }

    /// <summary>Deletes the scratch folders under <paramref name="root"/> left by processes that no longer run; returns
    /// how many. Never throws: a folder that cannot be deleted is left for the next sweep.</summary>
    public static int Sweep(string root, DateTime now)
    {
        var deleted = 0;
        IEnumerable<string> folders;
        try
        {
            folders = Directory.EnumerateDirectories(root, Prefix + "*").ToList();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return 0;
        }
        foreach (var folder in folders)
        {
            if (OwnerOf(Path.GetFileName(folder)) is not { } pid || pid == Environment.ProcessId || IsRunning(pid))
                continue;
            try
            {
                if (now - Directory.GetLastWriteTimeUtc(folder) < StaleAfter)
                    continue;
                Directory.Delete(folder, recursive: true);
                deleted++;
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
            }
        }
        return deleted;
    }

    /// <summary>The process id in <c>onnxquant-KIND-PID-random</c>, or null for any other name.</summary>
    internal static int? OwnerOf(string name)
    {
        if (!name.StartsWith(Prefix, StringComparison.Ordinal))
            return null;
        var parts = name[Prefix.Length..].Split('-');
        return parts.Length == 3 && parts[0].Length > 0 && parts[0].All(char.IsAsciiLetterLower)
               && int.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out var pid) && pid > 0 ? pid : null;
    }

    private static bool IsRunning(int pid)
    {
        if (OperatingSystem.IsLinux())
            return Directory.Exists($"/proc/{pid.ToString(CultureInfo.InvariantCulture)}");
        try
        {
            using var process = System.Diagnostics.Process.GetProcessById(pid);
            return !process.HasExited;
        }
        catch (ArgumentException)
        {
            return false;
        }
        catch (InvalidOperationException)
        {
            return false;
        }
    }
}
