using OnnxQuant.Frontend;
using OnnxQuant.Passes.Canonicalize;

namespace OnnxQuant.Passes.Rewrite;

/// <summary>
/// Stores computed what a quantized model computes from its weights alone on every run. A layer called over learned
/// constants whose weight it shares with calls over the input (the reference-point MLP a DAB-style DETR applies to its
/// learned anchors, then to refined ones) stays a quantized layer, and so does what follows from it (the first decoder
/// layer's self-attention over those queries). ONNX Runtime folds such chains in a float model when a session starts,
/// but never through a DequantizeLinear, so the artifact would compute them on every run. Each value such a chain
/// hands to a node that reads the input is computed once, by ONNX Runtime with the session options it is given (the
/// compile gives the QDQ graph's own semantics: optimizations off), and stored: a value ONNX
/// Runtime would read through a QuantizeLinear/DequantizeLinear pair into a product as its integers, so that the
/// integer kernel that reads it still fuses, as it does with a weight. Values over
/// <see cref="ConstantExpressionPass.MaxElements"/> or 4x what they are computed from (and over <see cref="ConstantExpressionPass.SmallElements"/>) stay computed.
/// </summary>
public static class ArtifactConstants
{
    /// <summary>Folds the chains; returns how many values are now stored. The DequantizeLinear nodes and weights only
    /// those chains read go (dead-node elimination).</summary>
    public static int Fold(Model artifact, Runtime.SessionOptions options)
    {
        var constants = ConstantExpressionPass.Analyze(artifact.Graph, quantized: true);
        var computed = constants.Computed;
        var frontier = constants.LayerFrontier();
        if (frontier.Count == 0)
            return 0;
        var targets = new List<Value>();
        foreach (var value in frontier)
        {
            // The integers behind a dequantized activation: its DequantizeLinear stays for the reader's fusion.
            var stored = value.Producer is { OpType: "DequantizeLinear" } dq && dq.Inputs[0] is { } integers
                && integers.Producer is { OpType: "QuantizeLinear" } && computed.ContainsKey(integers) && !integers.IsGraphOutput
                && dq.Inputs.Skip(1).All(i => i is null || i.ConstantValue is not null)
                && value.Uses.All(u => u.Node.OpType is "MatMul" or "Conv" or "Gemm")
                ? integers : value;
            if (!targets.Contains(stored))
                targets.Add(stored);
        }
        var folded = ConstantExpressionPass.Fold(artifact, targets, computed, options, integers: true);
        if (folded.Count > 0)
            new DeadNodeEliminationPass().Run(artifact);
        return folded.Count;
    }

    /// <summary>Whether the model computes something through a layer from its constants alone.</summary>
    public static bool Any(Model artifact) => ConstantExpressionPass.Analyze(artifact.Graph, quantized: true).LayerFrontier().Count > 0;
}
