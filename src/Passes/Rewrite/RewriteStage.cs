using OnnxQuant.Frontend;
using OnnxQuant.Passes.Allocate;
using OnnxQuant.Passes.Calibration;
using OnnxQuant.Passes.Quantization;
using OnnxQuant.Passes.Units;
using OnnxQuant.Solvers;

namespace OnnxQuant.Passes.Rewrite;

/// <summary>A rewritten copy of the canonical model and what the rewrite did.</summary>
public sealed record RewrittenModel(Model Model, RewriteResult Result);

/// <summary>Turns one target's allocation into per-channel widths for every quantized layer and rewrites a copy.</summary>
public static class RewriteStage
{
    /// <summary>The width that means "keep this unit's layer float" (the accuracy guard's repair restores layers).</summary>
    public const int FloatBits = 32;

    /// <summary>
    /// Per-channel widths of every layer: heads at their head width, allocated layers from their units; layers with
    /// neither (no unit in the budget) stay float.
    /// </summary>
    public static IReadOnlyList<LayerPlan> Plans(UnitDiscoveryResult discovery, Partition partition, Allocation allocation) =>
        Plans(discovery, partition, allocation.BitsOf);

    /// <summary>As above with the widths of <paramref name="bitsOf"/>; a layer all of whose units get
    /// <see cref="FloatBits"/> stays float.</summary>
    public static IReadOnlyList<LayerPlan> Plans(UnitDiscoveryResult discovery, Partition partition, Func<string, int> bitsOf)
    {
        var plans = new List<LayerPlan>();
        var heads = partition.Heads.ToDictionary(h => h.Layer, h => h.Bits, StringComparer.Ordinal);
        foreach (var layer in discovery.Layers)
        {
            var bits = new int[layer.Channels];
            if (heads.TryGetValue(layer.Name, out var headBits))
                Array.Fill(bits, headBits);
            else
            {
                var units = partition.FreeUnits.Where(u => u.Layer == layer).ToList();
                if (units.Count == 0 || units.All(u => bitsOf(u.Name) == FloatBits))
                    continue;
                foreach (var u in units)
                    Array.Fill(bits, bitsOf(u.Name), u.ChannelStart, u.ChannelCount);
            }
            plans.Add(new LayerPlan(layer, bits));
        }
        return plans;
    }

    public static RewrittenModel Run(Model canonical, IReadOnlyList<LayerPlan> plans, CalibrationTable? calibration,
        RewriteOptions options, int actBits, Int2Exclusions? int2 = null, Func<string, InputStatistics?>? statistics = null,
        CompensationMemo? memo = null)
    {
        var quantized = canonical.Clone();
        var result = QdqRewriter.Apply(quantized, plans, calibration, options, actBits, int2, statistics, memo);
        return new RewrittenModel(quantized, result);
    }
}
