using OnnxQuant.Frontend;
using OnnxQuant.Passes.Pipeline;

namespace OnnxQuant.Passes.Canonicalize;

/// <summary>
/// Removes nodes none of whose outputs reaches a graph output (walking from the last node back, so chains of dead
/// nodes go in one run) and initializers nothing reads. Subgraph bodies are left as they are; a node holding
/// subgraphs is removed like any other when its outputs are dead.
/// </summary>
public sealed class DeadNodeEliminationPass : IPass
{
    public string Name => "dead-node-elimination";

    public PassResult Run(Model model)
    {
        var graph = model.Graph;
        var removed = 0;
        for (var i = graph.Nodes.Count - 1; i >= 0; i--)
        {
            var node = graph.Nodes[i];
            if (node.Outputs.Count > 0 && node.Outputs.All(o => o.IsOmitted || GraphQueries.IsUnused(o)))
            {
                graph.RemoveNode(node);
                removed++;
            }
        }
        foreach (var value in graph.Initializers.ToList())
        {
            if (GraphQueries.IsUnused(value) && !value.IsGraphInput && !UsedByFunctionsOrSubgraphs(graph, value))
            {
                graph.RemoveInitializer(value);
                removed++;
            }
        }
        return PassResult.Changed(removed);
    }

    // Subgraphs may read an outer initializer by name; their uses are recorded on the value, but be safe anyway.
    private static bool UsedByFunctionsOrSubgraphs(Graph graph, Value value) =>
        graph.AllGraphs().Skip(1).Any(g => g.Nodes.Any(n => n.Inputs.Any(v => ReferenceEquals(v, value))));
}
