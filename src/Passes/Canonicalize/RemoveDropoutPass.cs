using OnnxQuant.Frontend;
using OnnxQuant.Passes.Pipeline;

namespace OnnxQuant.Passes.Canonicalize;

/// <summary>
/// Removes Dropout nodes: a compiled model is for inference, where Dropout is the identity. Exporters sometimes
/// leave them in training mode (e.g. with ratio 0), which would make ONNX Runtime draw random masks. A Dropout whose
/// mask output is used is kept.
/// </summary>
public sealed class RemoveDropoutPass : IPass
{
    public string Name => "remove-dropout";

    public PassResult Run(Model model)
    {
        var removed = 0;
        foreach (var graph in model.Graph.AllGraphs().ToList())
        {
            foreach (var node in graph.Nodes.ToList())
            {
                if (node.OpType != "Dropout" || !GraphQueries.IsDefaultDomain(node) || node.Inputs.Count == 0 ||
                    node.Inputs[0] is not { } input)
                    continue;
                if (node.Outputs.Skip(1).Any(o => !o.IsOmitted && !GraphQueries.IsUnused(o)))
                    continue;
                if (GraphQueries.TryBypass(graph, node, input))
                    removed++;
            }
        }
        return PassResult.Changed(removed);
    }
}
