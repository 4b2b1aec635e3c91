using OnnxQuant.Frontend;
using OnnxQuant.Passes.Pipeline;

namespace OnnxQuant.Passes.Canonicalize;

/// <summary>
/// Folds the layers that compute the same value for every input into constants: a chain of Conv, Gemm or MatMul over
/// learned constants alone. DETR's first decoder layer attends over its learned queries before it reads the image
/// (its self-attention and the cross-attention's query projection), DAB- and Conditional-DETR-style reference-point
/// MLPs start from learned anchors, SwinV2's continuous position bias is an MLP over a fixed coordinate table, and a
/// factorized weight (<c>A @ B</c>) is one layer's parameter. ONNX Runtime folds such chains in the float model when a
/// session starts, but not once their weights are quantized (a DequantizeLinear is never folded), so quantizing them
/// spends bits and adds an error that is the same on every input, and the artifact computes them on every run. A
/// weight that is also applied to the input (a module called once over constants and again over activations) is kept
/// a layer at every call (see <see cref="Rewrite.ArtifactConstants"/> for what the artifact then does).
/// Each value such a chain hands to a node that reads the input becomes an initializer holding what ONNX Runtime
/// computes for it (exactly the float model's value); the layers it came from are removed and listed in the report.
/// Values larger than <see cref="ConstantExpressionPass.MaxElements"/> or 4x the constants they are computed from
/// (and over <see cref="ConstantExpressionPass.SmallElements"/>) stay computed.
/// </summary>
public sealed class InputIndependentLayersPass : IPass
{
    public string Name => "fold-input-independent-layers";

    private static readonly HashSet<string> LayerOps = ["Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum"];

    public PassResult Run(Model model)
    {
        var graph = model.Graph;
        var first = ConstantExpressionPass.Analyze(graph);
        // A weight that layers reading the input share stays one quantized weight for every call (one module applied
        // again, as in training): its calls over constants are not folded. Removing computed values only turns more
        // readers into input readers of already non-constant ones, so one more analysis settles it.
        // The weights compared by value: once unshared (a later pass), each call holds its own copy of the same bytes.
        var inputWeights = graph.Nodes.Where(n => IsWeightedLayer(n) && !n.Outputs.Any(first.Computed.ContainsKey))
            .Select(Weight).OfType<Value>().ToLookup(v => v.Initializer!.RawData.Length);
        bool AppliedToInput(Value weight) => weight.Initializer is { } t
            && inputWeights[t.RawData.Length].Any(w => w.Initializer!.DataType == t.DataType && (w.Initializer.RawData.Equals(t.RawData) || w.Initializer.RawData.Span.SequenceEqual(t.RawData.Span)));
        var shared = graph.Nodes.Where(n => IsWeightedLayer(n) && first.Computed.ContainsKey(n.Outputs[0]) && Weight(n) is { } w && AppliedToInput(w))
            .ToHashSet<Node>(ReferenceEqualityComparer.Instance);
        var constants = shared.Count == 0 ? first : ConstantExpressionPass.Analyze(graph, shared);
        var targets = constants.LayerFrontier();
        if (targets.Count == 0)
            return PassResult.Unchanged;
        // Dead-node elimination before and after: the layers it takes out the second time are the folded ones.
        var elimination = new DeadNodeEliminationPass();
        elimination.Run(model);
        var layers = graph.Nodes.Where(IsWeightedLayer).ToList();
        var folded = ConstantExpressionPass.Fold(model, targets, constants.Computed);
        if (folded.Count == 0)
            return PassResult.Unchanged;
        elimination.Run(model);
        var kept = graph.Nodes.ToHashSet<Node>(ReferenceEqualityComparer.Instance);
        var removed = layers.Where(n => !kept.Contains(n))
            .Select(n => new RemovedLayer(n.Name.Length > 0 ? n.Name : $"{n.OpType} (unnamed)", n.OpType,
                "computes the same value for every input (it reads learned constants only): folded into a constant, exact"))
            .ToList();
        return PassResult.Changed(folded.Count) with { RemovedLayers = removed };
    }

    /// <summary>A layer with a weight of its own (what would have been quantized), not a product of two computed values
    /// such as attention's.</summary>
    internal static bool IsWeightedLayer(Node node) =>
        LayerOps.Contains(node.OpType) && GraphQueries.IsDefaultDomain(node) && node.Inputs.Count >= 2 && Weight(node) is not null;

    /// <summary>The layer's weight initializer: Conv's, ConvTranspose's and Gemm's second input, either input of a
    /// MatMul or Einsum.</summary>
    internal static Value? Weight(Node node)
    {
        static bool Stored(Value? v) => v is { Initializer: not null, IsGraphInput: false };
        if (node.OpType is "MatMul" or "Einsum")
            return node.Inputs.Count == 2 ? node.Inputs.FirstOrDefault(Stored) : null;
        return node.Inputs.Count > 1 && Stored(node.Inputs[1]) ? node.Inputs[1] : null;
    }
}
