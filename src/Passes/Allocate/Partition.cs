using OnnxQuant.Passes.Units;
using OnnxQuant.Solvers;

namespace OnnxQuant.Passes.Allocate;

/// <summary>A layer kept at the head width outside the budget, and why.</summary>
public sealed record HeadReport(string Layer, string OpType, long Size, int Bits, string Reason);

/// <summary>The units the budget is shared over (with their curves), and the layers kept outside it.</summary>
public sealed record Partition(IReadOnlyList<QuantUnit> FreeUnits, IReadOnlyList<UnitCurve> FreeCurves,
    IReadOnlyList<HeadReport> Heads, IReadOnlyList<string> Notes)
{
    /// <summary>Units of tied layers (<see cref="WeightTie"/>) that take the width of another unit, by name.</summary>
    public IReadOnlyDictionary<string, string> TiedTo { get; init; } = new Dictionary<string, string>(StringComparer.Ordinal);

    /// <summary>The unit whose width <paramref name="unit"/> takes: itself unless it is a tied copy.</summary>
    public string Representative(string unit) => TiedTo.TryGetValue(unit, out var r) ? r : unit;
}

/// <summary>
/// Splits the discovered units into those the budget is shared over and the layers kept at --head-bits outside it:
/// layers that do not reach the feature (found by discovery) and layers all of whose units have a zero curve (the
/// feature cannot see them, so their curves would hand them the least width for free).
/// </summary>
public static class PartitionStage
{
    public static Partition Run(UnitDiscoveryResult discovery, IReadOnlyList<UnitCurve> curves, IReadOnlyList<string> features, int headBits)
    {
        // Tied layers share one width per unit: the first's units stand for all, their curves summed (each copy's error
        // reaches the features on its own path: pyramid levels, separate heads).
        var original = discovery;
        var (merged, tiedTo) = TiedCurves.Merge(MarkTies(discovery, curves), Quantization.StableRounding.Round);
        if (tiedTo.Count > 0)
        {
            discovery = discovery with { Units = discovery.Units.Where(u => !tiedTo.ContainsKey(u.Name)).ToList() };
            curves = merged;
        }
        var zero = curves.Where(c => c.Distortion.All(d => d == 0)).Select(c => c.Name).ToHashSet(StringComparer.Ordinal);
        var zeroLayers = discovery.Units.Where(u => zero.Contains(u.Name)).Select(u => u.Layer).Distinct()
            .Where(l => discovery.Units.Where(u => u.Layer == l).All(u => zero.Contains(u.Name))).ToList();
        var freeUnits = discovery.Units.Where(u => !zero.Contains(u.Name) && !zeroLayers.Contains(u.Layer)).ToList();
        if (freeUnits.Count == 0)
            throw new CompileException($"every unit's error curve is zero at the features {string.Join(", ", features)}: nothing to allocate (choose another --feature)");
        var unitLayer = discovery.Units.ToDictionary(u => u.Name, u => u.Layer, StringComparer.Ordinal);
        var zeroCopies = original.Units.Where(u => tiedTo.TryGetValue(u.Name, out var r) && zeroLayers.Contains(unitLayer[r]))
            .Select(u => u.Layer).Distinct().ToList();
        var heads = discovery.Heads.Select(h => new HeadReport(h.Name, h.OpType, h.Size, headBits,
                "does not reach the feature; kept at --head-bits outside the budget"))
            .Concat(zeroLayers.Concat(zeroCopies).Select(h => new HeadReport(h.Name, h.OpType, h.Size, headBits,
                "error curve is zero at the feature; kept at --head-bits outside the budget")))
            .ToList();
        IReadOnlyList<string> notes = heads.Count > 0
            ? [$"{heads.Count} layer(s) do not affect the feature and are kept at {headBits} bits outside the budget (see heads)"]
            : [];
        if (tiedTo.Count > 0)
        {
            var ties = discovery.Ties.Where(t => t.Layers.Count(l => l.ReachesFeature) > 1).ToList();
            notes = [.. notes, $"{ties.Count} weight(s) applied by {ties.Sum(t => t.Layers.Count(l => l.ReachesFeature))} layers: each shares one width per unit and one quantized weight"];
        }
        var byName = curves.ToDictionary(c => c.Name, StringComparer.Ordinal);
        return new Partition(freeUnits, freeUnits.Select(u => byName[u.Name]).ToList(), heads, notes) { TiedTo = new Dictionary<string, string>(tiedTo, StringComparer.Ordinal) };
    }

    /// <summary>
    /// The curves with <see cref="UnitCurve.TiedTo"/> set from <paramref name="discovery"/>'s ties (and cleared
    /// elsewhere, whatever a curves file said): every unit of a tied layer that reaches the features takes the width of
    /// the same unit of the tie's first such layer.
    /// </summary>
    public static IReadOnlyList<UnitCurve> MarkTies(UnitDiscoveryResult discovery, IReadOnlyList<UnitCurve> curves)
    {
        var tiedTo = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var tie in discovery.Ties)
        {
            var reaching = tie.Layers.Where(l => l.ReachesFeature).ToList();
            if (reaching.Count < 2)
                continue;
            var representative = discovery.Units.Where(u => u.Layer == reaching[0]).ToList();
            foreach (var copy in reaching.Skip(1))
            {
                var units = discovery.Units.Where(u => u.Layer == copy).ToList();
                if (units.Count != representative.Count)
                    throw new InvalidOperationException($"tied layers '{reaching[0].Name}' and '{copy.Name}' have different units");
                for (var i = 0; i < units.Count; i++)
                    tiedTo[units[i].Name] = representative[i].Name;
            }
        }
        return curves.Select(c => c.TiedTo == tiedTo.GetValueOrDefault(c.Name) ? c : c with { TiedTo = tiedTo.GetValueOrDefault(c.Name) }).ToList();
    }
}
