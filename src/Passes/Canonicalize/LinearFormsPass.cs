using OnnxQuant.Frontend;
using OnnxQuant.Passes.Pipeline;

namespace OnnxQuant.Passes.Canonicalize;

/// <summary>
/// Writes linear layers that other exporters express in other forms as a MatMul with a 2-D weight, the form unit
/// discovery quantizes:
/// <list type="bullet">
/// <item>a MatMul whose constant weight has leading axes of size 1 (<c>[1, K, N]</c>: TensorFlow converters, parameters
/// declared with a broadcast axis) reads the <c>[K, N]</c> weight. MatMul broadcasts the leading axes, so the product
/// only changes where the activation has fewer axes than the weight: then the output would lose leading 1s. Where the
/// activation's rank is not known to be at least the weight's, the rank is kept by the bias Add that follows (its
/// constant gets the leading 1s) or, without one, by an Add of a zero of the weight's rank (x + 0 is x).</item>
/// <item>an Einsum of an activation and a constant weight that contracts the activation's trailing axes with weight
/// axes and appends the weight's other axes to the activation's kept ones (<c>bnd,de->bne</c>, <c>...d,ed->...e</c>,
/// the projections of an attention layer written per head, <c>btc,chd->bthd</c> and <c>bthd,hde->bte</c>; either
/// operand first) is a MatMul with the weight's axes arranged as a matrix, between Reshapes where several axes are
/// contracted or produced.</item>
/// </list>
/// </summary>
public sealed class LinearFormsPass : IPass
{
    public string Name => "linear-forms";

    public PassResult Run(Model model)
    {
        var graph = model.Graph;
        var ranks = new RankInference();
        var changed = 0;
        foreach (var node in graph.Nodes.ToList())
        {
            if (!GraphQueries.IsDefaultDomain(node) || node.Outputs.Count != 1 || node.Inputs.Count != 2)
                continue;
            if (node.OpType == "MatMul" && SqueezeWeight(graph, node, ranks))
                changed++;
            else if (node.OpType == "Einsum" && EinsumToMatMul(graph, node))
                changed++;
        }
        return PassResult.Changed(changed);
    }

    private static bool IsFloatWeight(Value? value) =>
        value is { IsInitializer: true, IsGraphInput: false, Initializer: { DataType: DataType.Float } };

    private static bool SqueezeWeight(Graph graph, Node node, RankInference ranks)
    {
        if (node.Inputs[0] is not { ConstantValue: null } x || !IsFloatWeight(node.Inputs[1]))
            return false;
        var weight = node.Inputs[1]!;
        var tensor = weight.Initializer!;
        var rank = tensor.Rank;
        if (rank <= 2 || tensor.Dims.Take(rank - 2).Any(d => d != 1))
            return false;
        var xRank = ranks.Of(x);
        // A 1-D activation against a [1, K, N] weight gives [1, N]; against [K, N] it gives [N], which an Add cannot
        // undo. No exporter writes it; the layer stays as it is and discovery names the reason.
        if (xRank == 1)
            return false;
        var n = tensor.Dims[^1];
        var squeezed = graph.AddInitializer(graph.UniqueName(weight.Name + "_2d"),
            Tensor.FromRaw(weight.Name + "_2d", tensor.DataType, [tensor.Dims[^2], n], tensor.RawData));
        node.ReplaceInput(1, squeezed);
        if (weight.Uses.Count == 0 && !weight.IsGraphOutput)
            graph.RemoveInitializer(weight);
        if (xRank is int known && known >= rank)
            return true;

        var output = node.Outputs[0];
        var leadingOnes = Enumerable.Repeat(1L, rank - 1);
        if (GraphQueries.SoleUser(output) is { OpType: "Add" } add && GraphQueries.IsDefaultDomain(add) && add.Inputs.Count == 2
            && add.Inputs[1 - output.Uses[0].InputIndex] is { IsInitializer: true, IsGraphInput: false, Uses.Count: 1 } bias
            && bias.Initializer is { DataType: DataType.Float, ElementCount: var count } b && count == n && b.Dims[^1] == n)
        {
            if (b.Rank < rank)
                graph.SetInitializer(bias, Tensor.FromRaw(b.Name, b.DataType, [.. leadingOnes, n], b.RawData));
            return true;
        }
        var zero = GraphQueries.AddFloatInitializer(graph, node.Name + "_rank", Enumerable.Repeat(1L, rank).ToArray(), [0f]);
        var restored = new Node("Add", [output, zero], [graph.UniqueName(output.Name + "_rank")], name: graph.UniqueName(node.Name + "_rank"));
        graph.InsertAfter(node, restored);
        var final = restored.Outputs[0];
        var name = output.Name;
        var isOutput = output.IsGraphOutput;
        graph.ReplaceAllUsesWith(output, final, replaceGraphOutputs: true);
        restored.ReplaceInput(0, output);
        if (isOutput)
        {
            // The graph output keeps its name: the Add writes it, the MatMul a new value.
            output.Name = graph.UniqueName(name + "_product");
            final.Name = name;
        }
        return true;
    }

    private static bool EinsumToMatMul(Graph graph, Node node)
    {
        var equation = node.GetString("equation", "").Replace(" ", "", StringComparison.Ordinal);
        var arrow = equation.IndexOf("->", StringComparison.Ordinal);
        if (arrow < 0)
            return false;
        var operands = equation[..arrow].Split(',');
        var result = equation[(arrow + 2)..];
        if (operands.Length != 2)
            return false;
        var w = IsFloatWeight(node.Inputs[1]) && node.Inputs[0] is { ConstantValue: null } ? 1
            : IsFloatWeight(node.Inputs[0]) && node.Inputs[1] is { ConstantValue: null } ? 0 : -1;
        if (w < 0)
            return false;
        var xs = operands[1 - w];
        var ws = operands[w];
        var tensor = node.Inputs[w]!.Initializer!;
        var ellipsis = xs.StartsWith("...", StringComparison.Ordinal);
        var letters = ellipsis ? xs[3..] : xs;
        if (tensor.Rank != ws.Length || ws.Length < 2 || !ws.All(char.IsLetter) || ws.Distinct().Count() != ws.Length
            || letters.Length == 0 || !letters.All(char.IsLetter) || letters.Distinct().Count() != letters.Length)
            return false;
        // The activation's trailing axes are contracted with weight axes; the weight's other axes follow the
        // activation's kept axes in the result. A weight axis the activation keeps too (a batch of weights) is no
        // linear layer.
        var contracted = letters.Where(c => ws.Contains(c)).ToArray();
        var k = contracted.Length;
        var free = ws.Where(c => !letters.Contains(c)).ToArray();
        if (k == 0 || free.Length == 0 || !letters.EndsWith(new string(contracted), StringComparison.Ordinal)
            || contracted.Any(result.Contains))
            return false;
        var kept = (ellipsis ? "..." : "") + letters[..^k];
        if (!result.StartsWith(kept, StringComparison.Ordinal) || result.Length != kept.Length + free.Length
            || result[kept.Length..].OrderBy(c => c).SequenceEqual(free.OrderBy(c => c)) is false)
            return false;
        var outputFree = result[kept.Length..].ToArray();
        // Reshapes around the product need the activation's rank, which an ellipsis hides.
        if ((k > 1 || outputFree.Length > 1) && ellipsis)
            return false;
        var dims = tensor.GetDims();
        var perm = contracted.Concat(outputFree).Select(c => (long)ws.IndexOf(c)).ToArray();
        var oriented = perm.Select((a, i) => a == i).All(b => b) ? tensor : FoldWeightTransformsPass.Transpose(tensor, perm);
        if (oriented is null)
            return false;
        var inner = contracted.Aggregate(1L, (a, c) => a * dims[ws.IndexOf(c)]);
        var outer = outputFree.Aggregate(1L, (a, c) => a * dims[ws.IndexOf(c)]);
        var matrix = Tensor.FromRaw(node.Inputs[w]!.Name, oriented.DataType, [inner, outer], oriented.RawData);
        var weight = node.Inputs[w]!;
        var value = ReferenceEquals(oriented, tensor) && tensor.Rank == 2 && weight.Uses.Count == 1 ? weight
            : graph.AddInitializer(graph.UniqueName(weight.Name + "_matrix"), matrix);
        var name = node.Name.Length > 0 ? node.Name : graph.UniqueName("MatMul");
        var x = node.Inputs[1 - w]!;
        var keptAxes = letters.Length - k;
        if (k > 1)
        {
            // [..., c1, c2] -> [..., c1 c2]: zeros copy the kept axes.
            var rows = new Node("Reshape", [x, graph.AddInitializer(graph.UniqueName(name + "_rows_shape"),
                Tensor.FromInt64s("s", [keptAxes + 1], [.. new long[keptAxes], inner]))], [graph.UniqueName(name + "_rows")], name: graph.UniqueName(name + "_rows"));
            graph.InsertBefore(node, rows);
            x = rows.Outputs[0];
        }
        var matmul = new Node("MatMul", [x, value], [graph.UniqueName(node.Outputs[0].Name + "_matmul")], name: name);
        graph.InsertBefore(node, matmul);
        var last = matmul.Outputs[0];
        if (outputFree.Length > 1)
        {
            var split = new Node("Reshape", [last, graph.AddInitializer(graph.UniqueName(name + "_output_shape"),
                Tensor.FromInt64s("s", [keptAxes + outputFree.Length], [.. new long[keptAxes], .. outputFree.Select(c => dims[ws.IndexOf(c)])]))],
                [graph.UniqueName(name + "_output")], name: graph.UniqueName(name + "_output"));
            graph.InsertAfter(matmul, split);
            last = split.Outputs[0];
        }
        var output = node.Outputs[0];
        var outputName = output.Name;
        var type = output.FullType;
        graph.RemoveNode(node, force: true);
        graph.ReplaceAllUsesWith(output, last, replaceGraphOutputs: true);
        last.Name = outputName;
        last.FullType = type;
        if (!ReferenceEquals(value, weight) && weight.Uses.Count == 0 && !weight.IsGraphOutput)
            graph.RemoveInitializer(weight);
        return true;
    }
}

/// <summary>
/// The rank of a value where the graph says it: a declared shape, a constant, or what a node of a known kind makes of
/// its inputs' ranks. Null when nothing says it.
/// </summary>
internal sealed class RankInference
{
    private readonly Dictionary<Value, int?> _known = new(ReferenceEqualityComparer.Instance);

    private static readonly HashSet<string> SameRank =
    [
        "Relu", "Sigmoid", "Tanh", "Erf", "Gelu", "Clip", "Sqrt", "Neg", "Abs", "Exp", "Log", "Softmax", "LogSoftmax",
        "LeakyRelu", "HardSwish", "HardSigmoid", "Softplus", "Elu", "Selu", "Celu", "Mish", "Cast", "Identity", "Dropout",
        "LayerNormalization", "BatchNormalization", "InstanceNormalization", "GroupNormalization", "Conv", "ConvTranspose",
        "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Concat", "Slice", "Pad", "Resize", "Split",
        "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Not", "QuantizeLinear", "DequantizeLinear",
    ];

    public int? Of(Value value) => Of(value, 32);

    private int? Of(Value value, int depth)
    {
        if (value.Type?.Shape is { } shape)
            return shape.Rank;
        if (value.ConstantValue is { } constant)
            return constant.Rank;
        if (_known.TryGetValue(value, out var rank))
            return rank;
        rank = depth == 0 || value.Producer is not { } node || !GraphQueries.IsDefaultDomain(node) ? null : Infer(node, depth - 1);
        _known[value] = rank;
        return rank;
    }

    private int? Infer(Node node, int depth)
    {
        int? Input(int i) => node.Inputs.Count > i && node.Inputs[i] is { } v ? Of(v, depth) : null;
        switch (node.OpType)
        {
            case "Transpose":
                return node.GetInts("perm")?.Count ?? Input(0);
            case "Reshape":
                return node.Inputs.Count > 1 && node.Inputs[1]?.ConstantValue is { Rank: 1 } target ? (int)target.ElementCount : null;
            case "Flatten" or "Gemm":
                return 2;
            case "Unsqueeze":
            {
                var axes = node.GetInts("axes")?.Count ?? (node.Inputs.Count > 1 ? (int?)node.Inputs[1]?.ConstantValue?.ElementCount : null);
                return Input(0) + axes;
            }
            case "Add" or "Sub" or "Mul" or "Div" or "Pow" or "Max" or "Min" or "Where" or "PRelu":
            {
                var ranks = Enumerable.Range(0, node.Inputs.Count).Select(Input).ToList();
                return ranks.All(r => r is not null) ? ranks.Max() : null;
            }
            case "MatMul":
                return Input(0) is int a && Input(1) is int b && a >= 2 && b >= 2 ? Math.Max(a, b) : null;
            default:
                return SameRank.Contains(node.OpType) ? Input(0) : null;
        }
    }
}
