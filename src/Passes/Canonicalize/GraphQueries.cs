using OnnxQuant.Frontend;

namespace OnnxQuant.Passes.Canonicalize;

/// <summary>Small questions passes ask about values and nodes.</summary>
internal static class GraphQueries
{
    /// <summary>True when nothing reads the value and it is not a graph output.</summary>
    public static bool IsUnused(Value value) => value.Uses.Count == 0 && !value.IsGraphOutput;

    /// <summary>The value's only user, or null when it has none, several, or is a graph output.</summary>
    public static Node? SoleUser(Value value) =>
        value.Uses.Count == 1 && !value.IsGraphOutput ? value.Uses[0].Node : null;

    public static bool IsDefaultDomain(Node node) => node.Domain is "" or "ai.onnx";

    /// <summary>Adds a float initializer with a name derived from <paramref name="prefix"/>.</summary>
    public static Value AddFloatInitializer(Graph graph, string prefix, long[] dims, float[] data) =>
        graph.AddInitializer(graph.UniqueName(prefix), Tensor.FromFloats(prefix, dims, data));

    /// <summary>
    /// Removes a pass-through node (its first output equals <paramref name="input"/>) and rewires its readers to the
    /// input. When the output is a graph output its name is kept by renaming the producer's output instead, which is
    /// impossible (and refused, returning false) for a graph input, another graph output or an outer-scope value.
    /// </summary>
    public static bool TryBypass(Graph graph, Node node, Value input)
    {
        var output = node.Outputs[0];
        if (output.IsGraphOutput)
        {
            if (input.Producer is null || input.IsGraphOutput || input.Graph != graph)
                return false;
            graph.RemoveNode(node, force: true);
            graph.ReplaceAllUsesWith(output, input, replaceGraphOutputs: true);
            input.Name = output.Name;
        }
        else
        {
            graph.ReplaceAllUsesWith(output, input);
            graph.RemoveNode(node);
        }
        return true;
    }
}
