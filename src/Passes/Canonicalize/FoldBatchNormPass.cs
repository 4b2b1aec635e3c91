using OnnxQuant.Frontend;
using OnnxQuant.Passes.Pipeline;

namespace OnnxQuant.Passes.Canonicalize;

/// <summary>
/// Folds BatchNormalization (inference form) into the Conv that feeds it:
/// <c>k_c = gamma_c / sqrt(var_c + eps)</c>, <c>W'[c] = k_c W[c]</c>, <c>B'_c = (B_c - mean_c) k_c + beta_c</c>.
/// Applies when the Conv's weight (and bias, if any) and all four BN parameters are constants, the Conv output is
/// read only by the BN, and the BN's optional training outputs are unused. New initializers are added (the old
/// weight may be shared); the dead ones go in dead-node elimination.
/// </summary>
public sealed class FoldBatchNormPass : IPass
{
    public string Name => "fold-batchnorm";

    public PassResult Run(Model model)
    {
        var graph = model.Graph;
        var folded = 0;
        foreach (var bn in graph.Nodes.ToList())
        {
            if (bn.OpType != "BatchNormalization" || !GraphQueries.IsDefaultDomain(bn) || bn.Inputs.Count < 5)
                continue;
            if (bn.Outputs.Skip(1).Any(o => !o.IsOmitted && !GraphQueries.IsUnused(o)))
                continue;
            if (bn.GetInt("training_mode", 0) != 0)
                continue;
            if (bn.Inputs[0] is not { Producer: { OpType: "Conv" } conv } convOut || GraphQueries.SoleUser(convOut) != bn)
                continue;
            if (!GraphQueries.IsDefaultDomain(conv) || conv.Inputs.Count < 2)
                continue;
            var weight = conv.Inputs[1]?.ConstantValue;
            var bias = conv.Inputs.Count > 2 && conv.Inputs[2] is { } b ? b?.ConstantValue : null;
            if (weight is null || weight.DataType != DataType.Float || (conv.Inputs.Count > 2 && conv.Inputs[2] is not null && bias is null))
                continue;
            var p = Enumerable.Range(1, 4).Select(i => bn.Inputs[i]?.ConstantValue).ToArray();
            if (p.Any(t => t is null || t.DataType != DataType.Float))
                continue;
            var channels = (int)weight.Dims[0];
            if (p.Any(t => t!.ElementCount != channels) || (bias is not null && bias.ElementCount != channels))
                continue;

            var eps = bn.GetFloat("epsilon", 1e-5f);
            var gamma = p[0]!.ToFloatArray();
            var beta = p[1]!.ToFloatArray();
            var mean = p[2]!.ToFloatArray();
            var variance = p[3]!.ToFloatArray();
            var w = weight.ToFloatArray();
            var biasValues = bias?.ToFloatArray() ?? new float[channels];
            var perChannel = w.Length / channels;
            var newW = new float[w.Length];
            var newB = new float[channels];
            for (var c = 0; c < channels; c++)
            {
                var k = gamma[c] / MathF.Sqrt(variance[c] + eps);
                for (var i = 0; i < perChannel; i++)
                    newW[c * perChannel + i] = w[c * perChannel + i] * k;
                newB[c] = (biasValues[c] - mean[c]) * k + beta[c];
            }

            var wValue = GraphQueries.AddFloatInitializer(graph, conv.Inputs[1]!.Name + "_bnfold", weight.GetDims(), newW);
            var bValue = GraphQueries.AddFloatInitializer(graph, (conv.Name.Length > 0 ? conv.Name : convOut.Name) + "_bias_bnfold", [channels], newB);
            conv.ReplaceInput(1, wValue);
            if (conv.Inputs.Count > 2)
                conv.ReplaceInput(2, bValue);
            else
                conv.AppendInput(bValue);
            var bnOut = bn.Outputs[0];
            graph.RemoveNode(bn, force: true);
            if (bnOut.IsGraphOutput)
            {
                graph.ReplaceAllUsesWith(bnOut, convOut, replaceGraphOutputs: true);
                convOut.Name = bnOut.Name;
            }
            else
            {
                graph.ReplaceAllUsesWith(bnOut, convOut);
            }
            folded++;
        }
        return PassResult.Changed(folded);
    }
}
