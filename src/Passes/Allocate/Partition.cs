using OnnxQuant.Passes.Units;
using OnnxQuant.Solvers;

namespace OnnxQuant.Passes.Allocate;

/// <summary>A layer kept at the head width outside the budget, and why.</summary>
public sealed record HeadReport(string Layer, string OpType, long Size, int Bits, string Reason);

/// <summary>The units the budget is shared over (with their curves), and the layers kept outside it.</summary>
public sealed record Partition(IReadOnlyList<QuantUnit> FreeUnits, IReadOnlyList<UnitCurve> FreeCurves,
    IReadOnlyList<HeadReport> Heads, IReadOnlyList<string> Notes);

/// <summary>
/// Splits the discovered units into those the budget is shared over and the layers kept at --head-bits outside it:
/// layers that do not reach the feature (found by discovery) and layers all of whose units have a zero curve (the
/// feature cannot see them, so their curves would hand them the least width for free).
/// </summary>
public static class PartitionStage
{
    public static Partition Run(UnitDiscoveryResult discovery, IReadOnlyList<UnitCurve> curves, IReadOnlyList<string> features, int headBits)
    {
        var zero = curves.Where(c => c.Distortion.All(d => d == 0)).Select(c => c.Name).ToHashSet(StringComparer.Ordinal);
        var zeroLayers = discovery.Units.Where(u => zero.Contains(u.Name)).Select(u => u.Layer).Distinct()
            .Where(l => discovery.Units.Where(u => u.Layer == l).All(u => zero.Contains(u.Name))).ToList();
        var freeUnits = discovery.Units.Where(u => !zero.Contains(u.Name) && !zeroLayers.Contains(u.Layer)).ToList();
        if (freeUnits.Count == 0)
            throw new CompileException($"every unit's error curve is zero at the features {string.Join(", ", features)}: nothing to allocate (choose another --feature)");
        var heads = discovery.Heads.Select(h => new HeadReport(h.Name, h.OpType, h.Size, headBits,
                "does not reach the feature; kept at --head-bits outside the budget"))
            .Concat(zeroLayers.Select(h => new HeadReport(h.Name, h.OpType, h.Size, headBits,
                "error curve is zero at the feature; kept at --head-bits outside the budget")))
            .ToList();
        var notes = heads.Count > 0
            ? new[] { $"{heads.Count} layer(s) do not affect the feature and are kept at {headBits} bits outside the budget (see heads)" }
            : [];
        var byName = curves.ToDictionary(c => c.Name, StringComparer.Ordinal);
        return new Partition(freeUnits, freeUnits.Select(u => byName[u.Name]).ToList(), heads, notes);
    }
}
