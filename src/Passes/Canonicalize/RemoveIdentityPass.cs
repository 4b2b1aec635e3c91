using OnnxQuant.Frontend;
using OnnxQuant.Passes.Pipeline;

namespace OnnxQuant.Passes.Canonicalize;

/// <summary>
/// Removes Identity nodes by making their users read the input directly. An Identity whose output is a graph output
/// is kept when its input is a graph input or initializer (the output name must survive and cannot be moved onto
/// them); otherwise the producer's output takes over the graph output.
/// </summary>
public sealed class RemoveIdentityPass : IPass
{
    public string Name => "remove-identity";

    public PassResult Run(Model model)
    {
        var removed = 0;
        foreach (var graph in model.Graph.AllGraphs().ToList())
        {
            foreach (var node in graph.Nodes.ToList())
            {
                if (node.OpType != "Identity" || !GraphQueries.IsDefaultDomain(node) || node.Inputs.Count != 1 ||
                    node.Inputs[0] is not { } input || node.Outputs.Count != 1)
                    continue;
                if (GraphQueries.TryBypass(graph, node, input))
                    removed++;
            }
        }
        return PassResult.Changed(removed);
    }
}
