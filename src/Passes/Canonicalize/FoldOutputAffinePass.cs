using OnnxQuant.Frontend;
using OnnxQuant.Passes.Pipeline;

namespace OnnxQuant.Passes.Canonicalize;

/// <summary>
/// Folds a constant that scales or shifts each output channel of a Conv, ConvTranspose or Gemm (a Mul, Div, Add or Sub
/// that alone reads the layer's output), or scales a MatMul's (with its bias Add), into the layer's weight and bias:
/// a frozen batch normalization exported as <c>x * scale + bias</c> (DETR's backbone, torchvision's detection
/// backbones with pretrained weights) is then part of its convolution, as a folded BatchNormalization would be. Scaling output channel c by k_c is <c>W'[c] = k_c W[c]</c>, <c>B'_c = k_c B_c</c>;
/// shifting it by d_c is <c>B'_c = B_c + d_c</c>. The constant must hold one value per output channel or one value,
/// on the channel axis of the output (axis 1 of a convolution's, the last of a Gemm's), so that it neither
/// broadcasts the output to another shape nor mixes positions. New initializers are written (the old ones may be
/// shared); dead ones go in dead-node elimination.
/// </summary>
public sealed class FoldOutputAffinePass : IPass
{
    public string Name => "fold-output-affine";

    public PassResult Run(Model model)
    {
        var graph = model.Graph;
        var folded = 0;
        foreach (var node in graph.Nodes.ToList())
        {
            if (node.Graph is not null && node.OpType == "BatchNormalization" && FoldBatchNorm(graph, node))
            {
                folded++;
                continue;
            }
            if (node.Graph is null || node.OpType is not ("Mul" or "Div" or "Add" or "Sub") || !GraphQueries.IsDefaultDomain(node)
                || node.Inputs.Count != 2 || node.Outputs.Count != 1)
                continue;
            for (var side = 0; side < 2; side++)
            {
                if (node.Inputs[side] is not { Producer: { } layer } output || GraphQueries.SoleUser(output) != node
                    || node.Inputs[1 - side] is not { ConstantValue: { DataType: DataType.Float } constant })
                    continue;
                // y - d and y / k fold; d - y and k / y do not.
                if (side == 1 && node.OpType is "Sub" or "Div")
                    continue;
                if ((Fold(graph, layer, node.OpType, constant) || (node.OpType is "Mul" or "Div" && ScaleLinear(graph, layer, node.OpType, constant)))
                    && GraphQueries.TryBypass(graph, node, output))
                {
                    folded++;
                    break;
                }
            }
        }
        return PassResult.Changed(folded);
    }

    /// <summary>
    /// A BatchNormalization (inference form) after a ConvTranspose (a decoder's or keypoint head's upsampling) or a
    /// Gemm (BatchNorm1d after a Linear) is the scale gamma / sqrt(var + eps) and the shift beta - mean * scale of
    /// each channel; <see cref="FoldBatchNormPass"/> takes the ones after a Conv.
    /// </summary>
    private static bool FoldBatchNorm(Graph graph, Node bn)
    {
        if (!GraphQueries.IsDefaultDomain(bn) || bn.Inputs.Count < 5 || bn.GetInt("training_mode", 0) != 0
            || bn.Outputs.Skip(1).Any(o => !o.IsOmitted && !GraphQueries.IsUnused(o))
            || bn.Inputs[0] is not { Producer: { OpType: "ConvTranspose" or "Gemm" } layer } output || GraphQueries.SoleUser(output) != bn)
            return false;
        var p = Enumerable.Range(1, 4).Select(i => bn.Inputs[i]?.ConstantValue).ToArray();
        if (p.Any(t => t is not { DataType: DataType.Float }) || p.Select(t => t!.ElementCount).Distinct().Count() != 1)
            return false;
        var eps = bn.GetFloat("epsilon", 1e-5f);
        var (gamma, beta, mean, variance) = (p[0]!.ToFloatArray(), p[1]!.ToFloatArray(), p[2]!.ToFloatArray(), p[3]!.ToFloatArray());
        var channels = gamma.Length;
        var scale = new float[channels];
        var shift = new float[channels];
        for (var c = 0; c < channels; c++)
        {
            scale[c] = gamma[c] / MathF.Sqrt(variance[c] + eps);
            shift[c] = beta[c] - mean[c] * scale[c];
        }
        // Shaped on the channel axis of the layer's output: [1, C, 1, ...] for a deconvolution, [C] for a Gemm.
        var rank = layer.OpType == "Gemm" ? 1 : layer.Inputs[1]?.ConstantValue?.Rank ?? 0;
        long[] dims = layer.OpType == "Gemm" ? [channels] : [1, channels, .. Enumerable.Repeat(1L, Math.Max(0, rank - 2))];
        if (!Fold(graph, layer, "Mul", Tensor.FromFloats("scale", dims, scale), dryRun: true))
            return false;
        Fold(graph, layer, "Mul", Tensor.FromFloats("scale", dims, scale));
        Fold(graph, layer, "Add", Tensor.FromFloats("shift", dims, shift));
        var result = bn.Outputs[0];
        var wasOutput = result.IsGraphOutput;
        graph.RemoveNode(bn, force: true);
        graph.ReplaceAllUsesWith(result, output, replaceGraphOutputs: true);
        if (wasOutput)
            output.Name = result.Name;
        return true;
    }

    private static bool Fold(Graph graph, Node layer, string op, Tensor constant, bool dryRun = false)
    {
        if (!GraphQueries.IsDefaultDomain(layer) || layer.Outputs.Count != 1 || layer.Inputs.Count < 2
            || layer.Inputs[1] is not { ConstantValue: { DataType: DataType.Float } weight })
            return false;
        var biasValue = layer.Inputs.Count > 2 ? layer.Inputs[2] : null;
        var bias = biasValue?.ConstantValue;
        if (biasValue is not null && bias is not { DataType: DataType.Float })
            return false;
        // Output channels, the axis that holds them in the output, the output's rank, and where channel c's weights lie.
        int channels, axis, rank;
        Func<int, IEnumerable<long>> weightsOf;
        switch (layer.OpType)
        {
            case "Conv" when weight.Rank >= 3:
            {
                channels = (int)weight.Dims[0];
                var per = weight.ElementCount / channels;
                weightsOf = c => Range(c * per, per);
                (axis, rank) = (1, weight.Rank);
                break;
            }
            case "ConvTranspose" when weight.Rank >= 3 && layer.GetInt("group", 1) == 1:
            {
                channels = (int)weight.Dims[1];
                var inner = weight.ElementCount / weight.Dims[0] / channels;
                var n = channels;
                weightsOf = c => Enumerable.Range(0, (int)weight.Dims[0]).SelectMany(i => Range((i * n + c) * inner, inner));
                (axis, rank) = (1, weight.Rank);
                break;
            }
            case "Gemm" when weight.Rank == 2 && (bias is null || bias.Rank <= 1 || (bias.Rank == 2 && bias.Dims[0] == 1)):
            {
                var transB = layer.GetInt("transB", 0) != 0;
                channels = (int)weight.Dims[transB ? 0 : 1];
                var k = weight.Dims[transB ? 1 : 0];
                var n = channels;
                weightsOf = transB ? c => Range(c * k, k) : c => Enumerable.Range(0, (int)k).Select(i => (long)i * n + c);
                (axis, rank) = (1, 2);
                break;
            }
            default:
                return false;
        }
        if (bias is not null && bias.ElementCount != channels && bias.ElementCount != 1)
            return false;
        var values = PerChannel(constant, channels, axis, rank);
        if (values is null || values.Any(v => !float.IsFinite(v)) || (op == "Div" && values.Any(v => v == 0)))
            return false;

        // Gemm scales its bias by beta and its product by alpha: the shift goes into C as d / beta.
        var beta = layer.OpType == "Gemm" ? layer.GetFloat("beta", 1f) : 1f;
        if (layer.OpType == "Gemm" && bias is not null && beta == 0f)
            return false;
        if (dryRun)
            return true;
        var w = weight.ToFloatArray();
        var b = bias is null ? new float[channels] : bias.ElementCount == 1 ? Enumerable.Repeat(bias.ToFloatArray()[0], channels).ToArray() : bias.ToFloatArray();
        for (var c = 0; c < channels; c++)
        {
            switch (op)
            {
                case "Mul" or "Div":
                    var k = op == "Mul" ? values[c] : 1f / values[c];
                    foreach (var i in weightsOf(c))
                        w[i] *= k;
                    b[c] *= k;
                    break;
                case "Add":
                    b[c] += values[c] / (bias is null ? 1f : beta);
                    break;
                default:
                    b[c] -= values[c] / (bias is null ? 1f : beta);
                    break;
            }
        }
        var name = layer.Name.Length > 0 ? layer.Name : layer.Outputs[0].Name;
        if (op is "Mul" or "Div")
            layer.ReplaceInput(1, graph.AddInitializer(graph.UniqueName(name + "_scaled_weight"), Tensor.FromFloats("w", weight.GetDims(), w)));
        if (bias is null && op is "Mul" or "Div")
            return true;
        var newBias = graph.AddInitializer(graph.UniqueName(name + "_folded_bias"), Tensor.FromFloats("b", [channels], b));
        if (layer.Inputs.Count > 2)
            layer.ReplaceInput(2, newBias);
        else
        {
            layer.AppendInput(newBias);
            if (layer.OpType == "Gemm")
                layer.SetAttribute(Frontend.Attribute.FromFloat("beta", 1f));
        }
        return true;
    }

    /// <summary>
    /// A MatMul with a constant [K, N] weight, alone or with the Add of its bias, scaled by one constant or one per
    /// output channel ([N]): the scale goes into the weight's columns and the bias (a transformer library's
    /// <c>q_proj(x) * scaling</c>, a ConvNeXt block's layer scale).
    /// </summary>
    private static bool ScaleLinear(Graph graph, Node producer, string op, Tensor constant)
    {
        if (constant.Rank > 1 || !GraphQueries.IsDefaultDomain(producer))
            return false;
        Node? matmul = null;
        Value? bias = null;
        if (producer.OpType == "MatMul")
            matmul = producer;
        else if (producer.OpType == "Add" && producer.Inputs.Count == 2)
            for (var side = 0; side < 2 && matmul is null; side++)
                if (producer.Inputs[side] is { Producer: { OpType: "MatMul" } m } product && GraphQueries.SoleUser(product) == producer
                    && producer.Inputs[1 - side] is { IsInitializer: true, IsGraphInput: false, Uses.Count: 1, Initializer.DataType: DataType.Float } b)
                    (matmul, bias) = (m, b);
        if (matmul is null || !GraphQueries.IsDefaultDomain(matmul) || matmul.Inputs.Count != 2 || matmul.Inputs[0] is not { ConstantValue: null }
            || matmul.Inputs[1]?.ConstantValue is not { DataType: DataType.Float, Rank: 2 } weight)
            return false;
        var n = (int)weight.Dims[1];
        if ((constant.ElementCount != 1 && constant.ElementCount != n) || (bias is not null && (bias.Initializer!.ElementCount != n || bias.Initializer.Dims[^1] != n)))
            return false;
        var k = constant.ToFloatArray();
        var scale = Enumerable.Range(0, n).Select(c => op == "Mul" ? k[k.Length == 1 ? 0 : c] : 1f / k[k.Length == 1 ? 0 : c]).ToArray();
        if (scale.Any(v => !float.IsFinite(v)))
            return false;
        var w = weight.ToFloatArray();
        for (var i = 0; i < w.Length; i++)
            w[i] *= scale[i % n];
        var name = matmul.Name.Length > 0 ? matmul.Name : matmul.Outputs[0].Name;
        matmul.ReplaceInput(1, graph.AddInitializer(graph.UniqueName(name + "_scaled_weight"), Tensor.FromFloats("w", weight.GetDims(), w)));
        if (bias is not null)
        {
            var b = bias.Initializer!.ToFloatArray();
            for (var c = 0; c < n; c++)
                b[c] *= scale[c];
            graph.SetInitializer(bias, Tensor.FromFloats(bias.Name, bias.Initializer.GetDims(), b));
        }
        return true;
    }

    private static IEnumerable<long> Range(long start, long count)
    {
        for (var i = 0L; i < count; i++)
            yield return start + i;
    }

    /// <summary>The constant's value for each channel, when it holds one per channel (or one in all) on
    /// <paramref name="axis"/> of a rank-<paramref name="rank"/> output; null otherwise.</summary>
    private static float[]? PerChannel(Tensor constant, int channels, int axis, int rank)
    {
        if (constant.Rank > rank)
            return null;
        var data = constant.ToFloatArray();
        if (data.Length == 1)
            return Enumerable.Repeat(data[0], channels).ToArray();
        // Right-aligned against the output's axes: only the channel axis may be longer than 1.
        var offset = rank - constant.Rank;
        for (var i = 0; i < constant.Rank; i++)
        {
            var d = constant.Dims[i];
            if (i + offset == axis ? d != channels && d != 1 : d != 1)
                return null;
        }
        return data.Length == channels ? data : null;
    }
}
