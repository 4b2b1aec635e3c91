using System.Text.Json;

namespace OnnxQuant.Runtime;

/// <summary>Time one op type took per run, summed over its nodes, and how many of its nodes ran per run.</summary>
public sealed record OpTime(string OpType, double MsPerRun, double NodesPerRun);

/// <summary>
/// Where a model's time goes, by op type, read from ONNX Runtime's profiler trace (a JSON array of Chrome trace
/// events). Node events named <c>NAME_kernel_time</c> carry the op type in <c>args.op_name</c> and the duration in
/// microseconds; <c>model_run</c> session events mark the runs.
/// </summary>
public sealed record OpProfile(int Runs, double MsPerRun, IReadOnlyList<OpTime> Ops)
{
    /// <summary>
    /// Reads a trace, ignoring every node event before the start of run number <paramref name="skipRuns"/> (warm-up
    /// runs). Op types are ordered by time, largest first, ties by name.
    /// </summary>
    /// <exception cref="InvalidDataException">Not a profiler trace, or fewer runs than skipped.</exception>
    public static OpProfile Read(string path, int skipRuns = 0)
    {
        using var document = JsonDocument.Parse(File.ReadAllBytes(path));
        if (document.RootElement.ValueKind != JsonValueKind.Array)
            throw new InvalidDataException($"{path}: not an ONNX Runtime profile (expected a JSON array of trace events)");
        var runs = new List<(long Start, long Duration)>();
        var nodes = new List<(long Start, long Duration, string OpType)>();
        foreach (var e in document.RootElement.EnumerateArray())
        {
            if (!e.TryGetProperty("name", out var nameElement) || !e.TryGetProperty("ts", out var ts) || !e.TryGetProperty("dur", out var dur))
                continue;
            var name = nameElement.GetString() ?? "";
            var category = e.TryGetProperty("cat", out var cat) ? cat.GetString() : null;
            if (category == "Session" && name == "model_run")
                runs.Add((ts.GetInt64(), dur.GetInt64()));
            else if (category == "Node" && name.EndsWith("_kernel_time", StringComparison.Ordinal)
                     && e.TryGetProperty("args", out var args) && args.TryGetProperty("op_name", out var op))
                nodes.Add((ts.GetInt64(), dur.GetInt64(), op.GetString() ?? "?"));
        }
        runs.Sort();
        if (runs.Count <= skipRuns)
            throw new InvalidDataException($"{path}: the profile holds {runs.Count} run(s), {skipRuns} of them warm-up");
        var cutoff = runs[skipRuns].Start;
        var counted = runs.Count - skipRuns;
        var ops = nodes.Where(n => n.Start >= cutoff)
            .GroupBy(n => n.OpType, StringComparer.Ordinal)
            .Select(g => new OpTime(g.Key, g.Sum(n => n.Duration) / 1000.0 / counted, (double)g.Count() / counted))
            .OrderByDescending(o => o.MsPerRun).ThenBy(o => o.OpType, StringComparer.Ordinal)
            .ToList();
        return new OpProfile(counted, runs.Skip(skipRuns).Sum(r => r.Duration) / 1000.0 / counted, ops);
    }

    /// <summary>
    /// Profiles models under the same conditions: a fresh profiling session per model, <paramref name="warmup"/> runs
    /// not counted, then <paramref name="runs"/> counted, one model after the other: alternating run by run would start
    /// every run with the other model's data in the caches and its threads still spinning, and a kernel's time is far
    /// less exposed to drift in the machine's load than a run's. The trace files are deleted after reading.
    /// </summary>
    public static IReadOnlyList<OpProfile> Measure(IReadOnlyList<string> modelPaths, SessionOptions options,
        IReadOnlyList<IReadOnlyList<NamedTensor>> inputs, int runs, int warmup) =>
        Measure(modelPaths.Select(p => (Func<SessionOptions, InferenceSession>)(o => InferenceSession.Create(p, o))).ToList(), options, inputs, runs, warmup);

    /// <param name="open">Opens each model with the options it is given (the profiling ones).</param>
    /// <param name="outputs">The outputs each run fetches; null: all. ONNX Runtime still runs every node of the graph, so a
    /// caller that wants less computed passes a model pruned to these outputs.</param>
    public static IReadOnlyList<OpProfile> Measure(IReadOnlyList<Func<SessionOptions, InferenceSession>> open, SessionOptions options,
        IReadOnlyList<IReadOnlyList<NamedTensor>> inputs, int runs, int warmup, IReadOnlyList<string>? outputs = null)
    {
        var sessions = new List<InferenceSession>();
        var traces = new List<string>();
        try
        {
            foreach (var create in open)
                sessions.Add(create(options with
                {
                    ProfilePrefix = Path.Combine(Path.GetTempPath(), $"onnxquant-profile-{Environment.ProcessId}-{Guid.NewGuid():N}"),
                }));
            for (var m = 0; m < sessions.Count; m++)
                for (var i = 0; i < warmup + runs; i++)
                    sessions[m].Run(inputs[m], outputs);
            foreach (var session in sessions)
                traces.Add(session.EndProfiling());
            return traces.Select(t => Read(t, warmup)).ToList();
        }
        finally
        {
            foreach (var session in sessions)
                session.Dispose();
            foreach (var trace in traces)
                if (File.Exists(trace))
                    File.Delete(trace);
        }
    }
}
