using OnnxQuant.Frontend;
using OnnxQuant.Passes.Pipeline;
using OnnxQuant.Runtime;
using Attribute = OnnxQuant.Frontend.Attribute;

namespace OnnxQuant.Passes.Canonicalize;

/// <summary>
/// <see cref="InputIndependentLayersPass"/> for models with a symbolic batch: a DETR export with a dynamic batch axis
/// repeats its learned queries to the batch (<c>query.weight.unsqueeze(0).repeat(batch, 1, 1)</c>, a Tile whose
/// multiples come from the input's Shape; its target <c>zeros_like</c> them, a ConstantOfShape), so its first decoder
/// layer reads values that depend on the input's batch size and nothing else, and nothing there is folded: those
/// layers were units, measured and quantized, and computed on every run. Such a value is the same batch-1 slice
/// repeated along one axis whatever the batch; the pass finds the values a layer computes from constants and input
/// shapes alone that a node reading the input's data takes, evaluates them at batch 1, 2 and 3 in ONNX Runtime, and
/// where batch b holds b copies of batch 1 along one axis, replaces the value by a Tile of the batch-1 slice to the
/// running batch (the batch-1 value itself where it does not grow). The layers that computed it are removed and
/// listed in the report. A weight also applied to the input stays a layer at every call, as in
/// <see cref="InputIndependentLayersPass"/>. Runs only when every model input has a symbolic first axis and fixed
/// other axes (the batch the only size the data brings), at opset 13 or later.
/// </summary>
public sealed class BatchReplicatedLayersPass : IPass
{
    public string Name => "fold-batch-replicated-layers";

    /// <summary>Most elements of one batch-1 slice stored.</summary>
    public const long MaxSliceElements = 1 << 20;

    // Replication is checked to this relative precision: ONNX Runtime's kernels may block a batch-3 product
    // differently from a batch-1 one.
    private const double Tolerance = 1e-5;

    private static readonly HashSet<string> LayerOps = ["Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum"];
    private static readonly HashSet<string> DataSizedOps = ["NonZero", "NonMaxSuppression", "Compress", "Unique", "TopK"];
    private static readonly HashSet<string> Random = ["RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"];

    public PassResult Run(Model model)
    {
        var graph = model.Graph;
        if ((model.OpsetImports.Default ?? 1) < 13)
            return PassResult.Unchanged;
        var inputs = graph.Inputs.Where(v => !v.IsInitializer).ToList();
        if (inputs.Count == 0 || !inputs.All(BatchOnlySymbolic))
            return PassResult.Unchanged;
        var first = Analyze(graph, null);
        if (first.Frontier.Count == 0)
            return PassResult.Unchanged;
        // A weight layers reading the data share stays one quantized weight for every call.
        var dataWeights = graph.Nodes.Where(n => InputIndependentLayersPass.IsWeightedLayer(n) && !n.Outputs.Any(first.ShapeOnly.Contains))
            .Select(InputIndependentLayersPass.Weight).OfType<Value>().ToLookup(v => v.Initializer!.RawData.Length);
        bool AppliedToData(Value weight) => weight.Initializer is { } t
            && dataWeights[t.RawData.Length].Any(w => w.Initializer!.DataType == t.DataType && w.Initializer.RawData.Span.SequenceEqual(t.RawData.Span));
        var shared = graph.Nodes.Where(n => InputIndependentLayersPass.IsWeightedLayer(n) && n.Outputs.Any(first.ShapeOnly.Contains)
            && InputIndependentLayersPass.Weight(n) is { } w && AppliedToData(w)).ToHashSet<Node>(ReferenceEqualityComparer.Instance);
        var analysis = shared.Count == 0 ? first : Analyze(graph, shared);
        var frontier = analysis.Frontier.Where(v => ElementTypeInference.Of(v) == DataType.Float).ToList();
        if (frontier.Count == 0)
            return PassResult.Unchanged;

        Dictionary<string, TensorData>[] values;
        try
        {
            values = [.. new[] { 1, 2, 3 }.Select(batch => Evaluate(model, inputs, frontier, batch))];
        }
        catch (OrtException)
        {
            return PassResult.Unchanged;
        }

        var elimination = new DeadNodeEliminationPass();
        elimination.Run(model);
        var layers = graph.Nodes.Where(InputIndependentLayersPass.IsWeightedLayer).ToList();
        Value? batch = null;
        var replaced = 0;
        foreach (var target in frontier)
        {
            if (!values.All(v => v.TryGetValue(target.Name, out var d) && d.DataType == DataType.Float))
                continue;
            var (one, two, three) = (values[0][target.Name], values[1][target.Name], values[2][target.Name]);
            if (one.ElementCount > MaxSliceElements || Replication(one, two, three) is not { } axis)
                continue;
            var slice = graph.AddInitializer(graph.UniqueName(target.Name + "_batch1"), Tensor.FromRaw(target.Name, DataType.Float, one.Shape, one.ToBytes()));
            Value replacement = slice;
            if (axis >= 0)
            {
                batch ??= BatchSize(graph, inputs[0]);
                var before = graph.AddInitializer(graph.UniqueName("ones"), Tensor.FromInt64s("ones", [axis], [.. Enumerable.Repeat(1L, axis)]));
                var after = graph.AddInitializer(graph.UniqueName("ones"), Tensor.FromInt64s("ones", [one.Rank - axis - 1], [.. Enumerable.Repeat(1L, one.Rank - axis - 1)]));
                var multiples = Add(graph, "Concat", [before, batch, after], target.Name + "_multiples", Attribute.FromInt("axis", 0));
                replacement = Add(graph, "Tile", [slice, multiples], target.Name + "_tiled");
                replacement.Type = new TensorType(DataType.Float, null);
            }
            foreach (var use in target.Uses.ToArray())
                use.Node.ReplaceInput(use.InputIndex, replacement);
            replaced++;
        }
        if (replaced == 0)
            return PassResult.Unchanged;
        graph.TopologicalSort();
        elimination.Run(model);
        var kept = graph.Nodes.ToHashSet<Node>(ReferenceEqualityComparer.Instance);
        var removed = layers.Where(n => !kept.Contains(n))
            .Select(n => new RemovedLayer(n.Name.Length > 0 ? n.Name : $"{n.OpType} (unnamed)", n.OpType,
                "computes the same value for every input of a batch (it reads learned constants and the batch size only): folded into its batch-1 value, repeated to the batch"))
            .ToList();
        return PassResult.Changed(replaced) with { RemovedLayers = removed };
    }

    private static bool BatchOnlySymbolic(Value input) =>
        input.Type?.Shape is { } shape && shape.Dims.Count > 0 && shape.Dims[0].Value is not > 0 && shape.Dims.Skip(1).All(d => d.Value is > 0);

    /// <param name="ShapeOnly">Values computed from constants and input shapes, with at least one shape among them.</param>
    /// <param name="Frontier">Those a layer computed that a node reading the input's data takes, in graph order.</param>
    private sealed record Analysis(HashSet<Value> ShapeOnly, List<Value> Frontier);

    private static Analysis Analyze(Graph graph, IReadOnlySet<Node>? barriers)
    {
        var shapeOnly = new HashSet<Value>(ReferenceEqualityComparer.Instance);
        var throughLayer = new HashSet<Value>(ReferenceEqualityComparer.Instance);
        // Values whose size the data decides (after a NonZero, an NMS, a subgraph): their Shape is data, not batch size.
        var dataSized = new HashSet<Value>(ReferenceEqualityComparer.Instance);
        var order = new List<Value>();
        foreach (var node in graph.Nodes)
        {
            if (DataSizedOps.Contains(node.OpType) || node.Subgraphs.Any() || !GraphQueries.IsDefaultDomain(node)
                || node.Inputs.Any(i => i is not null && dataSized.Contains(i)))
                foreach (var output in node.Outputs.Where(o => !o.IsOmitted))
                    dataSized.Add(output);
            if (node.Subgraphs.Any() || Random.Contains(node.OpType) || node.OpType is "QuantizeLinear" or "DequantizeLinear"
                || !GraphQueries.IsDefaultDomain(node) || (barriers?.Contains(node) ?? false))
                continue;
            bool sized;
            if (node.OpType == "Shape")
                sized = node.Inputs[0] is { } shaped && !dataSized.Contains(shaped);
            else
            {
                sized = false;
                var constant = true;
                foreach (var input in node.Inputs)
                {
                    if (input is null || input.IsOmitted)
                        continue;
                    if (shapeOnly.Contains(input))
                        sized = true;
                    else if (input.ConstantValue is null || input.IsGraphInput)
                    {
                        constant = false;
                        break;
                    }
                }
                if (!constant)
                    sized = false;
            }
            if (!sized)
                continue;
            var layer = (LayerOps.Contains(node.OpType) && InputIndependentLayersPass.IsWeightedLayer(node)) || node.Inputs.Any(i => i is not null && throughLayer.Contains(i));
            foreach (var output in node.Outputs.Where(o => !o.IsOmitted))
            {
                shapeOnly.Add(output);
                order.Add(output);
                if (layer)
                    throughLayer.Add(output);
            }
        }
        var frontier = order.Where(v => throughLayer.Contains(v) && !v.IsGraphOutput
            && v.Uses.Any(u => !u.Node.Outputs.Any(shapeOnly.Contains))).ToList();
        return new Analysis(shapeOnly, frontier);
    }

    /// <summary>The axis along which batch b holds b copies of the batch-1 value (-1: the value does not grow with the
    /// batch and equals it); null when neither holds.</summary>
    internal static int? Replication(TensorData one, TensorData two, TensorData three)
    {
        var s1 = one.Shape;
        var s2 = two.Shape;
        var s3 = three.Shape;
        if (s1.Length != s2.Length || s1.Length != s3.Length)
            return null;
        var grown = Enumerable.Range(0, s1.Length).Where(d => s2[d] != s1[d] || s3[d] != s1[d]).ToList();
        var a = one.GetArray<float>();
        var scale = a.Length == 0 ? 0 : a.Max(v => Math.Abs((double)v));
        var tolerance = Tolerance * Math.Max(scale, 1e-30);
        if (grown.Count == 0)
            return Same(a, two.GetArray<float>(), 1, tolerance) && Same(a, three.GetArray<float>(), 1, tolerance) ? -1 : null;
        if (grown.Count != 1)
            return null;
        var axis = grown[0];
        if (s2[axis] != 2 * s1[axis] || s3[axis] != 3 * s1[axis])
            return null;
        // Tile's layout: the outer index runs over the axes before the replicated one, then over the copies.
        var outer = s1.Take(axis).Aggregate(1L, (x, y) => x * y);
        var block = a.Length / Math.Max(1, outer);
        return Tiled(a, two.GetArray<float>(), outer, block, 2, tolerance) && Tiled(a, three.GetArray<float>(), outer, block, 3, tolerance) ? axis : null;
    }

    private static bool Same(float[] a, float[] b, int copies, double tolerance) =>
        a.Length * copies == b.Length && Tiled(a, b, 1, a.Length, copies, tolerance);

    private static bool Tiled(float[] one, float[] many, long outer, long block, int copies, double tolerance)
    {
        if (many.Length != one.Length * copies)
            return false;
        for (long o = 0; o < outer; o++)
            for (var c = 0; c < copies; c++)
                for (long i = 0; i < block; i++)
                    if (!(Math.Abs(many[(o * copies + c) * block + i] - one[o * block + i]) <= tolerance))
                        return false;
        return true;
    }

    /// <summary>The running batch size as a 1-element int64 tensor: the first axis of the input's shape.</summary>
    private static Value BatchSize(Graph graph, Value input)
    {
        var shape = Add(graph, "Shape", [input], "batch_shape");
        var starts = graph.AddInitializer(graph.UniqueName("zero"), Tensor.FromInt64s("zero", [1], [0]));
        var ends = graph.AddInitializer(graph.UniqueName("one"), Tensor.FromInt64s("one", [1], [1]));
        return Add(graph, "Slice", [shape, starts, ends], "batch_size");
    }

    private static Value Add(Graph graph, string op, Value[] inputs, string name, params Attribute[] attributes)
    {
        var node = new Node(op, inputs, [graph.UniqueName(name)], name: graph.UniqueName(op), attributes: attributes);
        graph.AddNode(node);
        return node.Outputs[0];
    }

    /// <summary>The targets at batch <paramref name="batch"/>: zero inputs, since they depend on the shapes alone.</summary>
    private static Dictionary<string, TensorData> Evaluate(Model model, IReadOnlyList<Value> inputs, IReadOnlyList<Value> targets, int batch) =>
        ConstantExpressionPass.Evaluate(model, targets, SessionOptions.Calibration, inputs.Select(i =>
        {
            long[] shape = [batch, .. i.Type!.Shape!.Dims.Skip(1).Select(d => d.Value!.Value)];
            var type = i.Type.ElementType;
            return new NamedTensor(i.Name, TensorData.FromBytes(type, new byte[DataTypes.ByteCount(type, shape.Aggregate(1L, (x, y) => x * y))], shape));
        }).ToList());
}
