using OnnxQuant.Passes.Artifact;

namespace OnnxQuant.Passes.Guards;

/// <summary>A unit the repair may raise: its layer, weight count and curve (widths ascending).</summary>
public sealed record RepairUnit(string Name, string Layer, long Size, IReadOnlyList<int> Bits, IReadOnlyList<double> Distortion);

/// <summary>What the guards see of one configuration: the measured distortion and, when AP is measured, the drop in points.</summary>
public sealed record GuardMeasurement(double Distortion, double? ApDrop);

/// <summary>The repaired widths (unit -> bits, <see cref="GuardRepair.FloatBits"/> = float) and the report.</summary>
public sealed record RepairOutcome(IReadOnlyDictionary<string, int> Bits, RepairReport Report);

/// <summary>
/// Repairs an allocation that fails --max-distortion or --max-drop before failing the compile: raises the widths of
/// the units whose curves promise the largest drop in distortion per added weight-bit, <c>(D_u(b) - D_u(b')) /
/// (n_u (b' - b))</c> with b' the next candidate width, and restores a layer to float (32 bits, distortion 0) once
/// all its units are at the widest candidate and that is still not enough. Each round adds steps until the predicted
/// distortion falls to what the guard needs (scaled by the last measured/predicted ratio; halved for the AP guard,
/// which has no model), then rewrites and measures again. The rate grows above the target: the budget gives way to
/// the guard, and the report says by how much (--max-repair-rate bounds it). It stops when the guard holds, when nothing is left to raise, or after
/// <see cref="MaxRounds"/> rounds.
/// </summary>
public static class GuardRepair
{
    public const int FloatBits = 32;
    public const int MaxRounds = 12;

    public static bool Holds(GuardOptions options, GuardMeasurement m) =>
        (options.MaxDistortion is not { } max || m.Distortion <= max)
        && (options.MaxDrop is not { } drop || m.ApDrop is not { } d || d <= drop);

    /// <param name="measure">Rewrites and measures the model with the given widths.</param>
    public static RepairOutcome Run(GuardOptions options, IReadOnlyList<RepairUnit> units, IReadOnlyDictionary<string, int> initial,
        GuardMeasurement first, Func<IReadOnlyDictionary<string, int>, GuardMeasurement> measure)
    {
        var bits = new Dictionary<string, int>(initial, StringComparer.Ordinal);
        var byName = units.ToDictionary(u => u.Name, StringComparer.Ordinal);
        var total = units.Sum(u => u.Size);
        double Rate() => total == 0 ? 0 : (double)units.Sum(u => u.Size * (long)bits[u.Name]) / total;
        double D(RepairUnit u, int b) => b == FloatBits ? 0 : u.Distortion[IndexOf(u.Bits, b)];
        double Predicted() => units.Sum(u => D(u, bits[u.Name]));
        var initialRate = Rate();
        long Cost() => units.Sum(u => u.Size * (long)bits[u.Name]);
        var budget = options.MaxRepairRate is { } cap ? (long)Math.Floor(cap * total) : long.MaxValue;
        var current = first;
        var rounds = 0;
        while (!Holds(options, current) && rounds < MaxRounds)
        {
            var predicted = Predicted();
            var goal = predicted * 0.5;
            if (options.MaxDistortion is { } max && current.Distortion > max && current.Distortion > 0)
                goal = Math.Min(goal * 2, predicted * max / current.Distortion * 0.9);
            var raised = false;
            while (true)
            {
                var step = BestStep(units, bits, D, budget - Cost());
                if (step is null)
                    break;
                foreach (var (name, to) in step)
                    bits[name] = to;
                raised = true;
                if (Predicted() <= goal)
                    break;
            }
            if (!raised)
                break;
            rounds++;
            current = measure(bits);
        }
        var changed = units.Where(u => bits[u.Name] != initial[u.Name])
            .Select(u => new RaisedUnit(u.Name, initial[u.Name], bits[u.Name])).ToList();
        var report = new RepairReport(Describe(options), first.Distortion, current.Distortion, first.ApDrop, current.ApDrop,
            initialRate, Rate(), rounds, Holds(options, current), changed);
        return new RepairOutcome(bits, report);
    }

    /// <summary>The step with the largest predicted gain per added weight-bit (ties: the earlier unit), or null.</summary>
    private static IReadOnlyList<(string Name, int To)>? BestStep(IReadOnlyList<RepairUnit> units, Dictionary<string, int> bits,
        Func<RepairUnit, int, double> d, long room)
    {
        IReadOnlyList<(string, int)>? best = null;
        var bestValue = double.NegativeInfinity;
        foreach (var u in units)
        {
            var b = bits[u.Name];
            if (b == FloatBits || b == u.Bits[^1])
                continue;
            var next = u.Bits.First(x => x > b);
            if (u.Size * (long)(next - b) > room)
                continue;
            var value = (d(u, b) - d(u, next)) / ((double)u.Size * (next - b));
            if (value > bestValue)
                (best, bestValue) = ([(u.Name, next)], value);
        }
        // A layer all of whose units are at their widest width can go back to float.
        foreach (var layer in units.GroupBy(u => u.Layer))
        {
            if (!layer.All(u => bits[u.Name] == u.Bits[^1]) || layer.Sum(u => (long)(FloatBits - bits[u.Name]) * u.Size) > room)
                continue;
            var value = layer.Sum(u => d(u, bits[u.Name])) / layer.Sum(u => (double)(FloatBits - bits[u.Name]) * u.Size);
            if (value > bestValue)
                (best, bestValue) = (layer.Select(u => (u.Name, FloatBits)).ToList(), value);
        }
        return best;
    }

    private static int IndexOf(IReadOnlyList<int> list, int value)
    {
        for (var i = 0; i < list.Count; i++)
            if (list[i] == value)
                return i;
        throw new ArgumentException($"{value} bits is not a candidate width");
    }

    private static string Describe(GuardOptions options) => string.Join(", ",
        new[] { options.MaxDistortion is { } d ? $"max-distortion {d.ToString(System.Globalization.CultureInfo.InvariantCulture)}" : null,
                options.MaxDrop is { } p ? $"max-drop {p.ToString(System.Globalization.CultureInfo.InvariantCulture)}" : null }
            .Where(s => s is not null));
}
