using System.Diagnostics;

namespace OnnxQuant.Passes.Pipeline;

/// <summary>Wall time of one stage in seconds.</summary>
public sealed record StageTime(string Stage, double Seconds);

/// <summary>
/// The one stage timer of a compile: every stage runs through <see cref="Time{T}"/>; a stage that runs several
/// times (allocate, rewrite and verify once per target) accumulates. Stages are listed in the order they first ran.
/// </summary>
public sealed class StageClock
{
    private readonly List<string> _order = [];
    private readonly Dictionary<string, double> _seconds = new(StringComparer.Ordinal);

    public T Time<T>(string stage, Func<T> work)
    {
        FaultPoints.Reach("stage:" + stage);
        var watch = Stopwatch.StartNew();
        try
        {
            return work();
        }
        finally
        {
            Add(stage, watch.Elapsed.TotalSeconds);
        }
    }

    public void Time(string stage, Action work) => Time(stage, () => { work(); return 0; });

    private void Add(string stage, double seconds)
    {
        if (!_seconds.ContainsKey(stage))
            _order.Add(stage);
        _seconds[stage] = _seconds.GetValueOrDefault(stage) + seconds;
    }

    public IReadOnlyList<StageTime> Timings => _order.Select(s => new StageTime(s, _seconds[s])).ToList();
}
