using OnnxQuant.Frontend;
using OnnxQuant.Passes.Canonicalize;

namespace OnnxQuant.Passes.Rewrite;

/// <summary>
/// Removes the Reshapes that have no effect in a speed artifact. Folding a token linear's bias into Gemm wraps the
/// Gemm in a flatten and an unflatten Reshape, so consecutive linears (an FFN, a projection followed by the heads'
/// split, the heads' merge followed by the output projection) leave two or three Reshapes back to back, each with its
/// Q/DQ pair; on the small DETR Reshape was the third most expensive op type at one thread (142 nodes, 0.46 of 3.0 ms of
/// kernel time), for moving no data. Five rules, applied until none matches; none changes a value:
/// <list type="bullet">
/// <item>A Reshape whose target has no 0 ("copy this dimension") entry reads the data behind a Reshape feeding it,
/// directly or through a Q/DQ pair that only re-rounds values already on its grid (the inner Reshape's input is the
/// output of a DequantizeLinear with the same scale and zero point).</item>
/// <item>A Reshape to [-1, K] of a matrix known to have K columns (a Gemm's output, through Relu and per-tensor Q/DQ)
/// is dropped.</item>
/// <item>The Shape of a value a Reshape to a fully given target produced is that target (so the Reshape that only
/// fed the Shape goes).</item>
/// <item>The leading dimensions of a folded linear's unflattened output (Slice(Shape(.), 0, -1), which the next folded
/// linear computes for its own unflatten) are those the unflatten was given.</item>
/// <item>A QuantizeLinear of a DequantizeLinear with the same per-tensor scale and zero point is the DequantizeLinear's
/// input.</item>
/// </list>
/// Reshapes, Q/DQ and shape computations left without readers are removed, with the initializers only they read.
/// </summary>
internal static class ReshapeChains
{
    private static readonly HashSet<string> Removable = ["Reshape", "QuantizeLinear", "DequantizeLinear", "Shape", "Slice", "Concat"];

    /// <returns>The Reshape nodes removed.</returns>
    public static int Collapse(Graph graph)
    {
        var before = graph.Nodes.Count(n => Is(n, "Reshape"));
        bool changed;
        do
        {
            changed = false;
            foreach (var node in graph.Nodes.ToList())
            {
                if (node.Graph is null)
                    continue;
                if (Is(node, "Reshape") && node.Inputs.Count >= 2 && node.Inputs[0] is { } data && Target(node) is { } target)
                {
                    if ((node.GetInt("allowzero", 0) == 1 || !target.Contains(0)) && ReshapeBehind(data) is { Inputs: [{ } inner, ..] })
                    {
                        node.ReplaceInput(0, inner);
                        data = inner;
                        changed = true;
                    }
                    if (target.Length == 2 && target[0] == -1 && Columns(data) == target[1] && !node.Outputs[0].IsGraphOutput)
                    {
                        graph.ReplaceAllUsesWith(node.Outputs[0], data);
                        changed = true;
                    }
                }
                if (Is(node, "Shape") && node.Attributes.Count == 0 && node.Inputs[0] is { } measured && KnownShape(measured) is { } dims
                    && !node.Outputs[0].IsGraphOutput && node.Outputs[0].Uses.Count > 0)
                {
                    var constant = graph.AddInitializer(graph.UniqueName(node.Outputs[0].Name + "_known"), Tensor.FromInt64s("s", [dims.Length], dims));
                    graph.ReplaceAllUsesWith(node.Outputs[0], constant);
                    changed = true;
                }
                if (Is(node, "Slice") && LeadingDimensionsOfFold(node) is { } leading && !node.Outputs[0].IsGraphOutput && node.Outputs[0].Uses.Count > 0)
                {
                    graph.ReplaceAllUsesWith(node.Outputs[0], leading);
                    changed = true;
                }
                if (Is(node, "QuantizeLinear") && node.Inputs[0]?.Producer is { } dq && Is(dq, "DequantizeLinear") && SameParameters(node, dq)
                    && dq.Inputs[0] is { } quantized && !node.Outputs[0].IsGraphOutput && node.Outputs[0].Uses.Count > 0)
                {
                    graph.ReplaceAllUsesWith(node.Outputs[0], quantized);
                    changed = true;
                }
            }
            foreach (var node in graph.Nodes.Reverse().ToList())
                if (Removable.Contains(node.OpType) && GraphQueries.IsDefaultDomain(node) && node.Outputs.All(GraphQueries.IsUnused))
                {
                    var inputs = node.Inputs.Where(v => v is not null).Select(v => v!).ToList();
                    graph.RemoveNode(node);
                    foreach (var v in inputs)
                        if (v.IsInitializer && !v.IsGraphInput && GraphQueries.IsUnused(v) && graph.Initializers.Contains(v))
                            graph.RemoveInitializer(v);
                    changed = true;
                }
        }
        while (changed);
        return before - graph.Nodes.Count(n => Is(n, "Reshape"));
    }

    private static bool Is(Node node, string op) => node.OpType == op && GraphQueries.IsDefaultDomain(node);

    private static long[]? Target(Node reshape) =>
        reshape.Inputs[1]?.ConstantValue is { DataType: DataType.Int64 } t ? t.ToInt64Array() : null;

    /// <summary>The Reshape whose output <paramref name="value"/> is, directly or through a Q/DQ pair that cannot change
    /// it.</summary>
    private static Node? ReshapeBehind(Value value)
    {
        if (value.Producer is { } direct && Is(direct, "Reshape"))
            return direct;
        if (value.Producer is { } dq && Is(dq, "DequantizeLinear") && dq.Inputs[0]?.Producer is { } q && Is(q, "QuantizeLinear")
            && SameParameters(q, dq) && q.Inputs[0]?.Producer is { } reshape && Is(reshape, "Reshape")
            && reshape.Inputs[0]?.Producer is { } onGrid && Is(onGrid, "DequantizeLinear") && SameParameters(onGrid, dq))
            return reshape;
        return null;
    }

    /// <summary>Same per-tensor scale and zero point (the same initializers: the rewrite shares them between tensors whose
    /// values a pass-through op only moves).</summary>
    private static bool SameParameters(Node a, Node b) =>
        a.Inputs.Count >= 2 && b.Inputs.Count >= 2 && a.Inputs[1] is { } scale && ReferenceEquals(scale, b.Inputs[1])
        && scale.ConstantValue is { } s && s.GetDims().Length == 0
        && ReferenceEquals(a.Inputs.ElementAtOrDefault(2), b.Inputs.ElementAtOrDefault(2));

    /// <summary>The column count of a value known to be a matrix, else null.</summary>
    private static long? Columns(Value value)
    {
        var producer = value.Producer;
        if (producer is null)
            return null;
        if (Is(producer, "Gemm") && producer.Inputs.Count >= 2 && producer.Inputs[1] is { } b && Dims(b) is [var rows, var columns])
            return producer.GetInt("transB", 0) == 1 ? rows : columns;
        if (ShapeKeepingInput(producer) is { } input)
            return Columns(input);
        return null;
    }

    /// <summary>The shape of a value a Reshape to a fully given target (no -1, no 0) produced, seen through Relu and
    /// per-tensor Q/DQ; else null.</summary>
    private static long[]? KnownShape(Value value)
    {
        var producer = value.Producer;
        if (producer is null)
            return null;
        if (Is(producer, "Reshape") && producer.Inputs.Count >= 2 && Target(producer) is { } target && target.All(d => d > 0))
            return target;
        if (ShapeKeepingInput(producer) is { } input)
            return KnownShape(input);
        return null;
    }

    /// <summary>
    /// For <c>Slice(Shape(v), 0, -1)</c> where v (through Relu and per-tensor Q/DQ) is a Reshape to <c>Concat(L, [N])</c>
    /// (the unflatten of a folded linear): L, the leading dimensions v was given. Null for any other Slice.
    /// </summary>
    private static Value? LeadingDimensionsOfFold(Node slice)
    {
        if (slice.Inputs.Count is < 3 or > 4 || slice.Inputs[0]?.Producer is not { } shape || !Is(shape, "Shape") || shape.Attributes.Count > 0
            || Int64s(slice.Inputs[1]) is not [0] || Int64s(slice.Inputs[2]) is not [-1]
            || (slice.Inputs.Count == 4 && Int64s(slice.Inputs[3]) is not [0]) || shape.Inputs[0] is not { } v)
            return null;
        var producer = v.Producer;
        while (producer is not null && ShapeKeepingInput(producer) is { } input)
            producer = input.Producer;
        if (producer is null || !Is(producer, "Reshape") || producer.Inputs.Count < 2 || producer.Inputs[1]?.Producer is not { } concat
            || !Is(concat, "Concat") || concat.GetInt("axis", 0) != 0 || concat.Inputs.Count != 2 || Int64s(concat.Inputs[1]) is not [> 0]
            || concat.Inputs[0] is not { } leading)
            return null;
        return leading;
    }

    /// <summary>The input of a node whose output has its input's shape (Relu, per-tensor Q/DQ), else null.</summary>
    private static Value? ShapeKeepingInput(Node node) =>
        (Is(node, "Relu") || ((Is(node, "QuantizeLinear") || Is(node, "DequantizeLinear")) && node.Inputs.Count >= 2
                              && node.Inputs[1]?.ConstantValue?.GetDims().Length == 0))
            ? node.Inputs[0]
            : null;

    private static long[]? Int64s(Value? value) => value?.ConstantValue is { DataType: DataType.Int64 } t ? t.ToInt64Array() : null;

    /// <summary>A constant's dims, or those of the constant a DequantizeLinear reads (a quantized weight).</summary>
    private static long[]? Dims(Value value) =>
        value.ConstantValue?.GetDims()
        ?? (value.Producer is { } dq && Is(dq, "DequantizeLinear") ? dq.Inputs[0]?.ConstantValue?.GetDims() : null);
}
