using OnnxQuant.Frontend;
using OnnxQuant.Passes.Pipeline;

namespace OnnxQuant.Passes.Canonicalize;

/// <summary>
/// Gives every unnamed node of the main graph a unique name (op type, then _1, _2, ... in node order), so units,
/// reports and <c>--exclude</c> patterns can refer to every layer. Deterministic: names follow the node order.
/// </summary>
public sealed class NameNodesPass : IPass
{
    public string Name => "name-nodes";

    public PassResult Run(Model model)
    {
        var named = 0;
        foreach (var node in model.Graph.Nodes)
        {
            if (node.Name.Length > 0)
                continue;
            node.Name = model.Graph.UniqueName(node.OpType);
            named++;
        }
        return PassResult.Changed(named);
    }
}

/// <summary>The canonicalization every compile runs, in order.</summary>
public static class Canonicalization
{
    public static IReadOnlyList<IPass> Passes() =>
    [
        new HalfPrecisionPass(),
        new DetachInitializerInputsPass(),
        new RemoveIdentityPass(),
        new RemoveDropoutPass(),
        new InferenceBatchNormPass(),
        new FoldWeightTransformsPass(),
        new ConstantExpressionPass(),
        new InputIndependentLayersPass(),
        new BatchReplicatedLayersPass(),
        new LinearFormsPass(),
        new UnshareWeightsPass(),
        new FoldBatchNormPass(),
        new FoldOutputAffinePass(),
        new DeadNodeEliminationPass(),
        new NameNodesPass(),
    ];

    /// <summary>The layers the passes took out of the graph, in the order they were removed.</summary>
    public static IReadOnlyList<RemovedLayer> RemovedLayers(IReadOnlyList<PassRecord> records) =>
        records.SelectMany(r => r.Result.RemovedLayers).ToList();

    /// <summary>What the passes changed, for the report ("fold-batchnorm 53, linear-forms 1"): every pass that
    /// rewrote something, in pass order, with its rewrites summed over the rounds; null when none did. Dead-node
    /// elimination and naming, which every export needs, are left out.</summary>
    public static string? Describe(IReadOnlyList<PassRecord> records)
    {
        var changed = records.Where(r => r.Result.Rewrites > 0 && r.Pass is not ("dead-node-elimination" or "name-nodes"))
            .GroupBy(r => r.Pass, StringComparer.Ordinal)
            .Select(g => $"{g.Key} {g.Sum(r => r.Result.Rewrites)}").ToList();
        return changed.Count == 0 ? null : "canonicalization rewrote the graph before anything was measured (pass, rewrites): " + string.Join(", ", changed);
    }
}
