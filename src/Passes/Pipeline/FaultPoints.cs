using System.Diagnostics;
using System.Globalization;

namespace OnnxQuant.Passes.Pipeline;

/// <summary>
/// Named points of a compile where the fault-injection tests stop the process the hard way, so the guarantees
/// (inputs untouched, the previous or the new artifact whole) are tested where they could break rather than at
/// random. Set <c>ONNXQUANT_FAULT=action@point[#n]</c>: <c>kill</c> sends SIGKILL to the process itself (as
/// <c>kill -9</c> does), <c>enospc</c> throws the I/O error a full disk gives, <c>pause</c> sleeps 5 s (to overlap two
/// compiles); <c>#n</c> picks the n-th time the point is reached (default the first). Unset, a point costs one
/// dictionary lookup. Points: <c>stage:&lt;name&gt;</c> at the start of every stage, then <c>output:locked</c>,
/// <c>write:model</c>, <c>write:half</c> (half a file written), <c>write:report</c>, <c>write:manifest</c>,
/// <c>publish:synced</c>, <c>publish:swapped</c>, <c>publish:done</c>.
/// </summary>
public static class FaultPoints
{
    public const string Variable = "ONNXQUANT_FAULT";

    private static readonly (string Action, string Point, int Hit)? Spec = Parse(Environment.GetEnvironmentVariable(Variable));
    private static readonly Dictionary<string, int> Hits = new(StringComparer.Ordinal);
    private static readonly Lock Gate = new();

    public static void Reach(string point, string? path = null)
    {
        if (Spec is not { } spec || spec.Point != point)
            return;
        int hit;
        lock (Gate)
            hit = Hits[point] = Hits.GetValueOrDefault(point) + 1;
        if (hit != spec.Hit)
            return;
        switch (spec.Action)
        {
            case "kill":
                Process.GetCurrentProcess().Kill();
                Thread.Sleep(Timeout.Infinite);
                break;
            case "enospc":
                throw new IOException($"No space left on device : '{path ?? point}'", 28);
            case "pause":
                Thread.Sleep(5000);
                break;
        }
    }

    private static (string, string, int)? Parse(string? text)
    {
        if (string.IsNullOrEmpty(text) || text.IndexOf('@') is var at && at <= 0)
            return null;
        var point = text[(at + 1)..];
        var hit = 1;
        if (point.LastIndexOf('#') is var hash and > 0)
        {
            hit = int.Parse(point[(hash + 1)..], CultureInfo.InvariantCulture);
            point = point[..hash];
        }
        return (text[..at], point, hit);
    }
}
