using OnnxQuant.Frontend;
using OnnxQuant.Passes.Pipeline;

namespace OnnxQuant.Passes.Canonicalize;

/// <summary>
/// Folds layout changes of constants into new constants: Transpose, Reshape, Flatten, Squeeze and Unsqueeze whose
/// data input is an initializer (and whose shape/axes are constant), and Constant nodes holding a tensor. Exporters
/// often store a weight in one layout and transpose it in the graph; after this pass the consumer reads the weight
/// directly, so unit discovery sees a constant weight. Works on raw bytes, so any element type folds.
/// </summary>
public sealed class FoldWeightTransformsPass : IPass
{
    public string Name => "fold-weight-transforms";

    public PassResult Run(Model model)
    {
        var graph = model.Graph;
        var folded = 0;
        foreach (var node in graph.Nodes.ToList())
        {
            if (!GraphQueries.IsDefaultDomain(node) || node.Outputs.Count != 1 || node.Outputs[0].IsGraphOutput)
                continue;
            Tensor? result = node.OpType switch
            {
                "Constant" => FoldConstant(node),
                "Transpose" => node.Inputs[0]?.ConstantValue is { } t && t.DataType != DataType.String && !DataTypes.IsSubByte(t.DataType)
                    ? Transpose(t, node.GetInts("perm")) : null,
                "Reshape" => FoldReshape(node),
                "Flatten" => node.Inputs[0]?.ConstantValue is { } t ? Reshaped(t, Flatten(t.Dims, node.GetInt("axis", 1))) : null,
                "Squeeze" or "Unsqueeze" => FoldSqueeze(node, model),
                _ => null,
            };
            if (result is null)
                continue;
            var output = node.Outputs[0];
            graph.RemoveNode(node, force: true);
            var value = graph.AddInitializer(graph.UniqueName(output.Name + "_folded"), result);
            graph.ReplaceAllUsesWith(output, value);
            folded++;
        }
        return PassResult.Changed(folded);
    }

    private static Tensor? FoldConstant(Node node)
    {
        if (node.Attributes.Count != 1 || node.GetAttribute("value") is not { Kind: AttributeKind.Tensor } a)
            return null;
        return a.AsTensor().Clone();
    }

    private static Tensor? FoldReshape(Node node)
    {
        if (node.Inputs[0]?.ConstantValue is not { } data || node.Inputs.Count < 2 ||
            node.Inputs[1]?.ConstantValue is not { } shapeTensor || data.DataType == DataType.String)
            return null;
        var shape = shapeTensor.ToInt64Array();
        var allowZero = node.GetInt("allowzero", 0) != 0;
        var dims = new long[shape.Length];
        long known = 1;
        var infer = -1;
        for (var i = 0; i < shape.Length; i++)
        {
            dims[i] = shape[i] == 0 && !allowZero ? (i < data.Rank ? data.Dims[i] : -2) : shape[i];
            if (dims[i] == -2)
                return null;
            if (dims[i] == -1)
            {
                if (infer >= 0) return null;
                infer = i;
            }
            else
                known *= dims[i];
        }
        if (infer >= 0)
        {
            if (known == 0 || data.ElementCount % known != 0) return null;
            dims[infer] = data.ElementCount / known;
        }
        return Reshaped(data, dims);
    }

    private static Tensor? FoldSqueeze(Node node, Model model)
    {
        if (node.Inputs[0]?.ConstantValue is not { } data || data.DataType == DataType.String)
            return null;
        IReadOnlyList<long>? axes;
        if (node.Inputs.Count > 1 && node.Inputs[1] is { } axesValue)
            axes = axesValue?.ConstantValue?.ToInt64Array();
        else
            axes = node.GetInts("axes");
        var squeeze = node.OpType == "Squeeze";
        if (axes is null)
        {
            if (!squeeze) return null;
            return Reshaped(data, data.Dims.Where(d => d != 1).ToArray());
        }
        if (squeeze)
        {
            var rank = data.Rank;
            var drop = axes.Select(a => a < 0 ? a + rank : a).ToHashSet();
            if (drop.Any(a => a < 0 || a >= rank || data.Dims[(int)a] != 1)) return null;
            return Reshaped(data, data.Dims.Where((_, i) => !drop.Contains(i)).ToArray());
        }
        var outRank = data.Rank + axes.Count;
        var add = axes.Select(a => a < 0 ? a + outRank : a).ToHashSet();
        if (add.Any(a => a < 0 || a >= outRank) || add.Count != axes.Count) return null;
        var dims = new List<long>();
        var src = 0;
        for (var i = 0; i < outRank; i++)
            dims.Add(add.Contains(i) ? 1 : data.Dims[src++]);
        return Reshaped(data, dims.ToArray());
    }

    private static long[] Flatten(IReadOnlyList<long> dims, long axis)
    {
        if (axis < 0) axis += dims.Count;
        long outer = 1, inner = 1;
        for (var i = 0; i < dims.Count; i++)
            if (i < axis) outer *= dims[i]; else inner *= dims[i];
        return [outer, inner];
    }

    private static Tensor? Reshaped(Tensor data, long[] dims)
    {
        if (dims.Aggregate(1L, (a, b) => a * b) != data.ElementCount) return null;
        return Tensor.FromRaw(data.Name, data.DataType, dims, data.RawData);
    }

    /// <summary>Transposes the raw elements (element size >= 1 byte) by <paramref name="perm"/> (default: reverse).</summary>
    internal static Tensor? Transpose(Tensor data, IReadOnlyList<long>? perm)
    {
        var rank = data.Rank;
        var p = perm?.Select(x => (int)x).ToArray() ?? Enumerable.Range(0, rank).Reverse().ToArray();
        if (p.Length != rank || p.Distinct().Count() != rank || p.Any(x => x < 0 || x >= rank)) return null;
        var size = DataTypes.BitWidth(data.DataType) / 8;
        var src = data.RawData.Span;
        var dims = data.Dims.ToArray();
        var outDims = p.Select(i => dims[i]).ToArray();
        var strides = new long[rank];
        long s = 1;
        for (var d = rank - 1; d >= 0; d--) { strides[d] = s; s *= dims[d]; }
        var result = new byte[src.Length];
        var index = new long[rank];
        for (long o = 0; o < data.ElementCount; o++)
        {
            long from = 0;
            for (var d = 0; d < rank; d++)
                from += index[d] * strides[p[d]];
            src.Slice((int)(from * size), size).CopyTo(result.AsSpan((int)(o * size), size));
            for (var d = rank - 1; d >= 0; d--)
            {
                if (++index[d] < outDims[d]) break;
                index[d] = 0;
            }
        }
        return Tensor.FromRaw(data.Name, data.DataType, outDims, result);
    }
}
