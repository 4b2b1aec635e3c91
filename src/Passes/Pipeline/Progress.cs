namespace OnnxQuant.Passes.Pipeline;

/// <summary>Where long stages report progress: a terminal progress bar, plain lines, or nothing.</summary>
public interface IProgressSink
{
    /// <summary>Starts a stage of <paramref name="total"/> steps; dispose the result when the stage ends.</summary>
    IStageProgress Begin(string stage, int total);

    /// <summary>A one-line message between stages (what was found, what was decided).</summary>
    void Note(string message);
}

/// <summary>Progress of one stage.</summary>
public interface IStageProgress : IDisposable
{
    void Advance(int steps = 1);
}

/// <summary>Discards all progress (--quiet, tests).</summary>
public sealed class SilentProgress : IProgressSink
{
    public static readonly SilentProgress Instance = new();

    public IStageProgress Begin(string stage, int total) => NoStage.Instance;

    public void Note(string message) { }

    private sealed class NoStage : IStageProgress
    {
        public static readonly NoStage Instance = new();
        public void Advance(int steps = 1) { }
        public void Dispose() { }
    }
}

/// <summary>Plain lines for redirected output: one line when a stage starts, at every 25 %, and when it ends.</summary>
public sealed class LineProgress(TextWriter writer) : IProgressSink
{
    public IStageProgress Begin(string stage, int total)
    {
        writer.WriteLine($"{stage}: 0/{total}");
        return new Stage(writer, stage, total);
    }

    public void Note(string message) => writer.WriteLine(message);

    private sealed class Stage(TextWriter writer, string name, int total) : IStageProgress
    {
        private int _done;
        private int _lastQuarter;

        public void Advance(int steps = 1)
        {
            _done += steps;
            var quarter = total == 0 ? 4 : _done * 4 / total;
            if (quarter > _lastQuarter && _done < total)
            {
                _lastQuarter = quarter;
                writer.WriteLine($"{name}: {_done}/{total}");
            }
        }

        public void Dispose() => writer.WriteLine($"{name}: {_done}/{total} done");
    }
}
