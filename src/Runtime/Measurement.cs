using System.Diagnostics;
using System.Globalization;

namespace OnnxQuant.Runtime;

/// <summary>Summary of a set of latency samples, in milliseconds.</summary>
public sealed record LatencyStats(int Runs, double MedianMs, double P90Ms, double MeanMs, double MinMs, double MaxMs)
{
    /// <summary>
    /// Summarizes samples. Percentiles interpolate linearly between the two nearest order statistics
    /// (position p * (n - 1)), so the median of an even count is the mean of the middle two.
    /// </summary>
    /// <exception cref="ArgumentException">No samples.</exception>
    public static LatencyStats From(IReadOnlyList<double> samplesMs)
    {
        if (samplesMs.Count == 0)
            throw new ArgumentException("no latency samples");
        var sorted = samplesMs.OrderBy(v => v).ToArray();
        return new LatencyStats(sorted.Length, Percentile(sorted, 0.5), Percentile(sorted, 0.9), sorted.Average(), sorted[0], sorted[^1]);
    }

    private static double Percentile(double[] sorted, double p)
    {
        var position = p * (sorted.Length - 1);
        var lower = (int)Math.Floor(position);
        var upper = Math.Min(lower + 1, sorted.Length - 1);
        return sorted[lower] + (sorted[upper] - sorted[lower]) * (position - lower);
    }

    /// <summary>Times one call in milliseconds.</summary>
    public static double TimeMs(Action action)
    {
        var start = Stopwatch.GetTimestamp();
        action();
        return Stopwatch.GetElapsedTime(start).TotalMilliseconds;
    }
}

/// <summary>Resident memory of this process, as Linux reports it in /proc/self/status.</summary>
public static class ProcessMemory
{
    /// <summary>Current resident set size in bytes (VmRSS).</summary>
    public static long CurrentResidentBytes() => ReadStatus("VmRSS:") ?? Environment.WorkingSet;

    /// <summary>Peak resident set size in bytes since the process started (VmHWM).</summary>
    public static long PeakResidentBytes() => ReadStatus("VmHWM:") ?? Process.GetCurrentProcess().PeakWorkingSet64;

    private static long? ReadStatus(string field)
    {
        const string status = "/proc/self/status";
        if (!File.Exists(status))
            return null;
        foreach (var line in File.ReadLines(status))
        {
            if (!line.StartsWith(field, StringComparison.Ordinal))
                continue;
            var parts = line[field.Length..].Trim().Split(' ', StringSplitOptions.RemoveEmptyEntries);
            return long.Parse(parts[0], CultureInfo.InvariantCulture) * 1024; // reported in kB
        }
        return null;
    }
}
