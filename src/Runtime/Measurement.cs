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

/// <summary>
/// Times several models in one process in alternating turns, so that drift in the machine's load affects all alike,
/// while each timed run finds its own model in the state repeated inference keeps it in. A model needs runs, not one
/// run, to get there after another has run: on this project's 2-core machine the bundled small DETR's W8A8 artifact
/// took about 12 runs to fall from 2.35 to 1.56 ms at one thread after the float model had run, and both models were
/// up to 4 times slower for about 15 runs at two threads (the other session's worker threads still competing for the
/// cores). Run-by-run alternation therefore times every run in that transient. Each turn starts with
/// <c>settle</c> untimed runs; <c>block = 1, settle = 0</c> is run-by-run alternation.
/// </summary>
public static class AlternatingTimer
{
    /// <summary>Timed runs per model and turn unless the caller says otherwise.</summary>
    public const int DefaultBlock = 20;

    /// <summary>Untimed runs at the start of each turn unless the caller says otherwise.</summary>
    public const int DefaultSettle = 20;

    /// <summary>
    /// Runs each model <paramref name="warmup"/> times untimed, then times <paramref name="runs"/> runs of each in turns
    /// of <paramref name="block"/> timed runs (models in order), each turn after <paramref name="settle"/> untimed runs
    /// when there is more than one model. Returns the milliseconds of every timed run, per model, in run order.
    /// </summary>
    public static IReadOnlyList<IReadOnlyList<double>> Time(IReadOnlyList<Action> models, int warmup, int runs,
        int block = DefaultBlock, int settle = DefaultSettle)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(warmup);
        ArgumentOutOfRangeException.ThrowIfNegative(settle);
        ArgumentOutOfRangeException.ThrowIfLessThan(runs, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(block, 1);
        foreach (var model in models)
            for (var i = 0; i < warmup; i++)
                model();
        var samples = models.Select(_ => new List<double>(runs)).ToList();
        for (var done = 0; done < runs; done += block)
        {
            var count = Math.Min(block, runs - done);
            for (var m = 0; m < models.Count; m++)
            {
                for (var i = 0; models.Count > 1 && i < settle; i++)
                    models[m]();
                for (var i = 0; i < count; i++)
                    samples[m].Add(LatencyStats.TimeMs(models[m]));
            }
        }
        return samples;
    }
}
