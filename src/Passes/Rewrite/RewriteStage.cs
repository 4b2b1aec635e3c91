using OnnxQuant.Frontend;
using OnnxQuant.Passes.Allocate;
using OnnxQuant.Passes.Calibration;
using OnnxQuant.Passes.Quantization;
using OnnxQuant.Passes.Units;
using OnnxQuant.Solvers;

namespace OnnxQuant.Passes.Rewrite;

/// <summary>A rewritten copy of the canonical model and what the rewrite did.</summary>
/// <param name="Fusion">For the speed target, what ONNX Runtime made of <paramref name="Model"/> when the rewrite's own
/// check already saw it (null otherwise): the verify stage reuses it instead of optimizing the same model again.</param>
public sealed record RewrittenModel(Model Model, RewriteResult Result, Verify.FusionReport? Fusion = null)
{
    /// <summary>The model before what it computes from its weights alone was stored computed; null when nothing was.</summary>
    public Model? WithWeights { get; init; }
}

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
                // A tied copy's units take their representative's widths.
                if (units.Count == 0)
                    units = discovery.Units.Where(u => u.Layer == layer && partition.TiedTo.ContainsKey(u.Name)).ToList();
                int BitsOf(QuantUnit u) => bitsOf(partition.Representative(u.Name));
                if (units.Count == 0 || units.All(u => BitsOf(u) == FloatBits))
                    continue;
                foreach (var u in units)
                    Array.Fill(bits, BitsOf(u), u.ChannelStart, u.ChannelCount);
            }
            plans.Add(new LayerPlan(layer, bits) { SharesWeightOf = discovery.TieOf(layer) is { } tie && tie.Representative != layer ? tie.Representative.Name : null });
        }
        return plans;
    }

    public static RewrittenModel Run(Model canonical, IReadOnlyList<LayerPlan> plans, CalibrationTable? calibration,
        RewriteOptions options, int actBits, Int2Exclusions? int2 = null, Func<string, InputStatistics?>? statistics = null,
        CompensationMemo? memo = null)
    {
        var quantized = canonical.Clone();
        var result = QdqRewriter.Apply(quantized, plans, calibration, options, actBits, int2, statistics, memo);
        // ONNX Runtime fuses some float readers into a layer before it looks for QDQ kernels (a Gemm into FusedGemm
        // with its activation, a MatMul whose ReLU only a reduction reads), which leaves the layer's weight
        // dequantized on every run. Such a layer writes its output quantized, so that the integer kernel writes it
        // (at the cost of that output's rounding, which verification measures); whatever still does not fuse is the
        // verify stage's note.
        Verify.FusionReport? fusion = null;
        if (result.Speed is { } placement)
        {
            fusion = Verify.FusionCheck.Run(quantized, Runtime.SessionOptions.Default);
            var unfused = UnfusedLayers(fusion, placement, plans);
            if (unfused.Count > 0)
            {
                quantized = canonical.Clone();
                result = QdqRewriter.Apply(quantized, plans, calibration, options, actBits, int2, statistics, memo, unfused);
                fusion = null;
            }
        }
        var shared = ShareTiedWeights(quantized.Graph, plans, result);
        Canonicalize.UnshareWeightsPass.Reshare(quantized.Graph);
        var withWeights = ArtifactConstants.Any(quantized) ? quantized.Clone() : null;
        // The QDQ graph's own semantics (dequantized weights, float operators: ONNX Runtime without its optimizations,
        // whose fused integer kernels would round the same sums per fusion), on one thread: the stored values depend
        // neither on --threads nor on how a container is split.
        var folded = withWeights is null ? 0 : ArtifactConstants.Fold(quantized, Runtime.SessionOptions.Calibration with { IntraOpThreads = 1 });
        if (folded > 0)
            shared = Stored(quantized.Graph, shared) with { ConstantsFolded = folded };
        // Sharing the tied weights' tensors, or storing computed values, leaves the graph ONNX Runtime optimizes as it
        // was only without either.
        return new RewrittenModel(quantized, shared, plans.Any(p => p.SharesWeightOf is not null) || folded > 0 ? null : fusion)
        {
            WithWeights = folded > 0 ? withWeights : null,
        };
    }

    /// <summary>The layers' stored bytes once values computed from weights alone replaced what read them: a weight only
    /// such a value read is no longer stored.</summary>
    private static RewriteResult Stored(Graph graph, RewriteResult result) => result with
    {
        Layers = result.Layers.Select(l => l.Created.Count == 0 || l.Created.All(n => graph.FindInitializer(n) is not null) ? l
            : l with { Bytes = l.Created.Select(graph.FindInitializer).OfType<Value>().Sum(v => v.Initializer!.ByteSize) }).ToList(),
    };

    /// <summary>The quantized layers whose weight is still dequantized after ONNX Runtime's optimizations: found by the
    /// constant the DequantizeLinear reads (the rewrite names it after the layer's weight), or by the node reading it
    /// (a node ONNX Runtime fused keeps the name of the first node it took in, after "fused ").</summary>
    private static HashSet<string> UnfusedLayers(Verify.FusionReport fusion, SpeedPlacement placement, IReadOnlyList<LayerPlan> plans)
    {
        var layers = new HashSet<string>(StringComparer.Ordinal);
        if (fusion.WeightDequantizeLeft == 0)
            return layers;
        var offenders = fusion.Offenders.Select(o => o.LastIndexOf(" (", StringComparison.Ordinal) is var i and > 0 ? o[..i] : o)
            .Select(o => o.StartsWith("fused ", StringComparison.Ordinal) ? o["fused ".Length..] : o).ToHashSet(StringComparer.Ordinal);
        foreach (var (layer, node) in placement.LayerNodes)
            if (offenders.Contains(node))
                layers.Add(layer);
        foreach (var plan in plans)
            if (fusion.DequantizedConstants.Any(c => c.StartsWith(plan.Layer.WeightName + "_quantized", StringComparison.Ordinal)))
                layers.Add(plan.Layer.Name);
        return layers;
    }

    /// <summary>
    /// Tied layers quantized alike (same widths, same compensation statistics) made byte-identical tensors: each copy's
    /// is replaced by its representative's, so the artifact stores the weight once and every node keeps its own
    /// DequantizeLinear (what ONNX Runtime's fusions expect). A copy whose weight tensors differ (the speed target giving
    /// one a coarser scale so that its INT32 bias fits) keeps its own.
    /// </summary>
    internal static RewriteResult ShareTiedWeights(Graph graph, IReadOnlyList<LayerPlan> plans, RewriteResult result)
    {
        if (plans.All(p => p.SharesWeightOf is null))
            return result;
        var storage = result.Layers.ToList();
        var index = new Dictionary<string, int>(StringComparer.Ordinal);
        for (var i = 0; i < storage.Count; i++)
            index[storage[i].Layer] = i;
        foreach (var plan in plans)
        {
            if (plan.SharesWeightOf is not { } representative || !index.TryGetValue(plan.Layer.Name, out var mine) || !index.TryGetValue(representative, out var theirs))
                continue;
            var candidates = storage[theirs].Created.Select(graph.FindInitializer).OfType<Value>().ToList();
            var kept = new List<Value>();
            var shared = 0;
            foreach (var value in storage[mine].Created.Select(graph.FindInitializer).OfType<Value>())
            {
                if (candidates.FirstOrDefault(c => SameTensor(c.Initializer!, value.Initializer!)) is { } same)
                {
                    graph.ReplaceAllUsesWith(value, same);
                    graph.RemoveInitializer(value);
                    shared++;
                }
                else
                    kept.Add(value);
            }
            // The weight is shared when its largest tensor (the integers) is: what is left is this layer's own.
            var weightShared = shared > 0 && kept.All(v => v.Initializer!.ByteSize < candidates.Max(c => c.Initializer!.ByteSize));
            storage[mine] = weightShared
                ? storage[mine] with { SharesWeightOf = representative, Bytes = kept.Sum(v => v.Initializer!.ByteSize), IdealBits = 0, FloatBytes = 0 }
                : storage[mine] with { FloatBytes = 0 };
        }
        return result with { Layers = storage };
    }

    private static bool SameTensor(Tensor a, Tensor b) =>
        a.DataType == b.DataType && a.Dims.SequenceEqual(b.Dims) && a.RawData.Span.SequenceEqual(b.RawData.Span);
}
