using OnnxQuant.Frontend;
using OnnxQuant.Passes.Pipeline;
using Attribute = OnnxQuant.Frontend.Attribute;

namespace OnnxQuant.Passes.Canonicalize;

/// <summary>
/// Puts BatchNormalization nodes left in training mode into inference mode: a model exported in training mode (its
/// optional running-mean and variance outputs present before opset 14, <c>training_mode = 1</c> from opset 14) is
/// normalized by ONNX Runtime with each batch's own statistics, which a deployed detector never wants and which folds
/// into no convolution. Only nodes whose training outputs nothing reads are changed; the new node has the same inputs
/// and computes Y with the running statistics. This changes what the model computes, so <see cref="Intake"/> says so.
/// </summary>
public sealed class InferenceBatchNormPass : IPass
{
    public string Name => "inference-batchnorm";

    /// <summary>Whether <paramref name="node"/> is a BatchNormalization in training mode whose training outputs are unused.</summary>
    public static bool IsConvertible(Node node, long opset) =>
        node.OpType == "BatchNormalization" && GraphQueries.IsDefaultDomain(node) && IsTraining(node, opset)
        && node.Outputs.Skip(1).All(o => o.IsOmitted || GraphQueries.IsUnused(o));

    private static bool IsTraining(Node node, long opset) =>
        opset >= 14 ? node.GetInt("training_mode", 0) != 0 : node.Outputs.Skip(1).Any(o => !o.IsOmitted);

    public PassResult Run(Model model)
    {
        var opset = model.OpsetImports.Default ?? 0;
        var converted = 0;
        foreach (var graph in model.Graph.AllGraphs().ToList())
            foreach (var node in graph.Nodes.ToList())
            {
                if (!IsConvertible(node, opset))
                    continue;
                var y = node.Outputs[0];
                var name = y.Name;
                y.Name = graph.UniqueName(name + "_training");
                var inference = new Node("BatchNormalization", node.Inputs, [name], name: node.Name,
                    attributes: node.Attributes.Where(a => a.Name is not ("training_mode" or "is_test")));
                // Before opset 7 the mode is also an attribute, whose default is training.
                if (opset < 7)
                    inference.SetAttribute(Attribute.FromInt("is_test", 1));
                graph.InsertBefore(node, inference);
                inference.Outputs[0].Type = y.Type;
                graph.ReplaceAllUsesWith(y, inference.Outputs[0], replaceGraphOutputs: true);
                graph.RemoveNode(node, force: true);
                converted++;
            }
        return PassResult.Changed(converted);
    }

    /// <summary>How many nodes of <paramref name="model"/> this pass converts.</summary>
    public static int Count(Model model)
    {
        var opset = model.OpsetImports.Default ?? 0;
        return model.Graph.AllGraphs().Sum(g => g.Nodes.Count(n => IsConvertible(n, opset)));
    }
}
