using OnnxQuant.Frontend;
using OnnxQuant.Passes.Canonicalize;
using Attribute = OnnxQuant.Frontend.Attribute;

namespace OnnxQuant.Passes.Rewrite;

/// <summary>
/// Raises a model's default-domain opset, rewriting the operators whose signature changed on the way:
/// at 13, Squeeze/Unsqueeze/ReduceSum axes and Split's split move from attributes to inputs, and Softmax, LogSoftmax
/// and Hardmax stop flattening to 2-D (rewritten as Flatten, the op on the last axis, Reshape back); at 18, the axes
/// of the other Reduce* operators become an input and Split needs num_outputs when no split input is given. Ops
/// removed from ONNX (Upsample, Scatter) and models older than opset 11 are refused with a message.
/// </summary>
public static class OpsetConverter
{
    private static readonly string[] ReduceOps18 =
        ["ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"];

    public static void Raise(Model model, long target)
    {
        var from = model.OpsetImports.Default ?? 1;
        if (from >= target)
            return;
        if (from < 11)
            throw new CompileException($"the model uses opset {from}; the quantized weights need opset {target} and models older than opset 11 cannot be converted: re-export at opset 13 or newer");
        foreach (var graph in model.Graph.AllGraphs().ToList())
        {
            foreach (var node in graph.Nodes.ToList())
            {
                if (!GraphQueries.IsDefaultDomain(node))
                    continue;
                if (node.OpType is "Upsample" or "Scatter")
                    throw new CompileException($"node {node.Describe()} uses {node.OpType}, which opset {target} no longer has; re-export the model at opset 13 or newer");
                if (from < 13 && target >= 13)
                    To13(graph, node);
                if (from < 18 && target >= 18)
                    To18(graph, node);
            }
        }
        model.OpsetImports.Default = target;
    }

    private static void To13(Graph graph, Node node)
    {
        switch (node.OpType)
        {
            case "Squeeze" or "Unsqueeze" or "ReduceSum":
                MoveIntsToInput(graph, node, "axes", 1);
                break;
            case "Split":
                MoveIntsToInput(graph, node, "split", 1);
                break;
            case "Softmax" or "LogSoftmax" or "Hardmax":
                FlattenSoftmax(graph, node);
                break;
        }
    }

    private static void To18(Graph graph, Node node)
    {
        if (ReduceOps18.Contains(node.OpType))
            MoveIntsToInput(graph, node, "axes", 1);
        else if (node.OpType == "Split" && (node.Inputs.Count < 2 || node.Inputs[1] is null) && node.GetAttribute("num_outputs") is null)
            node.SetAttribute(Attribute.FromInt("num_outputs", node.Outputs.Count));
    }

    private static void MoveIntsToInput(Graph graph, Node node, string attribute, int inputIndex)
    {
        if (node.GetInts(attribute) is not { } values)
            return;
        var tensor = Tensor.FromInt64s(attribute, [values.Count], values.ToArray());
        var value = graph.AddInitializer(graph.UniqueName($"{node.Name}_{attribute}"), tensor);
        node.RemoveAttribute(attribute);
        while (node.Inputs.Count < inputIndex)
            node.AppendInput(null);
        if (node.Inputs.Count == inputIndex)
            node.AppendInput(value);
        else
            node.ReplaceInput(inputIndex, value);
    }

    /// <summary>Opset &lt; 13 softmax semantics: flatten to [prod(dims[:axis]), prod(dims[axis:])], normalize rows.</summary>
    private static void FlattenSoftmax(Graph graph, Node node)
    {
        var axis = node.GetInt("axis", 1);
        var input = node.Inputs[0]!;
        var rank = input.Type?.Shape?.Rank;
        if (rank is { } r && (axis == r - 1 || axis == -1))
        {
            node.SetAttribute(Attribute.FromInt("axis", -1));
            return;
        }
        var flat = new Node("Flatten", [input], [graph.UniqueName(input.Name + "_flat")], name: graph.UniqueName(node.Name + "_flatten"),
            attributes: [Attribute.FromInt("axis", axis)]);
        var shape = new Node("Shape", [input], [graph.UniqueName(input.Name + "_shape")], name: graph.UniqueName(node.Name + "_shape"));
        graph.InsertBefore(node, flat);
        graph.InsertBefore(node, shape);
        var output = node.Outputs[0];
        var inner = new Node(node.OpType, [flat.Outputs[0]], [graph.UniqueName(output.Name + "_2d")], name: graph.UniqueName(node.Name + "_2d"),
            attributes: [Attribute.FromInt("axis", -1)]);
        graph.InsertBefore(node, inner);
        var reshape = new Node("Reshape", [inner.Outputs[0], shape.Outputs[0]], [graph.UniqueName(output.Name + "_restored")], name: graph.UniqueName(node.Name + "_reshape"));
        graph.InsertBefore(node, reshape);
        reshape.Outputs[0].Type = output.Type;
        var name = output.Name;
        var wasOutput = output.IsGraphOutput;
        graph.RemoveNode(node, force: true);
        graph.ReplaceAllUsesWith(output, reshape.Outputs[0], replaceGraphOutputs: true);
        if (wasOutput)
            reshape.Outputs[0].Name = name;
    }
}
