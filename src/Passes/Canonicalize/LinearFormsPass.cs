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
/// <item>an Einsum of an activation and a constant 2-D weight that contracts the activation's last axis and keeps the
/// rest in order (<c>bnd,de->bne</c>, <c>...d,ed->...e</c>, either operand first) is a MatMul with the weight, or
/// with its transpose.</item>
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
        if (tensor.Rank != 2 || ws.Length != 2 || ws[0] == ws[1] || !char.IsLetter(ws[0]) || !char.IsLetter(ws[1]) || xs.Length == 0)
            return false;
        var letters = xs.StartsWith("...", StringComparison.Ordinal) ? xs[3..] : xs;
        if (letters.Length == 0 || letters.Any(c => !char.IsLetter(c)) || letters.Distinct().Count() != letters.Length)
            return false;
        var contracted = letters[^1];
        var kept = ws[0] == contracted ? ws[1] : ws[1] == contracted ? ws[0] : '\0';
        if (kept == '\0' || letters.Contains(kept) || result != xs[..^1] + kept)
            return false;
        var weight = node.Inputs[w]!;
        var oriented = ws[0] == contracted ? tensor : FoldWeightTransformsPass.Transpose(tensor, null);
        if (oriented is null)
            return false;
        var value = ReferenceEquals(oriented, tensor) && weight.Uses.Count == 1 ? weight
            : graph.AddInitializer(graph.UniqueName(weight.Name + (ReferenceEquals(oriented, tensor) ? "_weight" : "_transposed")), oriented);
        var matmul = new Node("MatMul", [node.Inputs[1 - w], value], [graph.UniqueName(node.Outputs[0].Name + "_matmul")],
            name: node.Name.Length > 0 ? node.Name : graph.UniqueName("MatMul"));
        graph.InsertBefore(node, matmul);
        var output = node.Outputs[0];
        var name = output.Name;
        var type = output.FullType;
        graph.RemoveNode(node, force: true);
        graph.ReplaceAllUsesWith(output, matmul.Outputs[0], replaceGraphOutputs: true);
        matmul.Outputs[0].Name = name;
        matmul.Outputs[0].FullType = type;
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
