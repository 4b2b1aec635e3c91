using OnnxQuant.Frontend;
using OnnxQuant.Passes.Canonicalize;
using OnnxQuant.Passes.Units;

namespace OnnxQuant.Passes.Curves;

/// <summary>
/// The part of the model a perturbation of one layer's weight can change: the layer's node and every node downstream
/// of it that leads to a feature. Everything it reads from the rest of the model (the layer's input, skip connections,
/// positional encodings, shapes computed upstream) is a cut value, fed from float activations cached once.
/// </summary>
public sealed record GraphCut(QuantLayer Layer, IReadOnlyList<string> CutValues, IReadOnlyList<string> Features, int Nodes, int ModelNodes)
{
    /// <summary>Name of the graph input that takes the layer's (perturbed) weight.</summary>
    public string WeightInput => Layer.WeightName;

    /// <summary>Graph input that takes the weight change dW alone (a copy of the layer without bias reads it).</summary>
    public const string DeltaInput = "onnxquant.cut.delta_weight";

    /// <summary>Output of that copy: dW x, the change of the layer output.</summary>
    public const string DeltaOutput = "onnxquant.cut.delta_output";

    /// <summary>Finds the cut of <paramref name="layer"/> in <paramref name="model"/> (not modified).</summary>
    public static GraphCut Find(Model model, QuantLayer layer, IReadOnlyList<string> features)
    {
        var (keep, cut, reached) = Analyse(model.Graph, layer, features);
        return new GraphCut(layer, cut.Select(v => v.Name).ToList(), reached, keep.Count, model.Graph.Nodes.Count);
    }

    /// <summary>
    /// The cut as a model: cut values are graph inputs (typed from <paramref name="typeOf"/>), the layer's weight is
    /// the input <see cref="WeightInput"/>, outputs are the reachable features and, with <paramref name="withDelta"/>,
    /// <see cref="DeltaOutput"/>.
    /// </summary>
    public Model Build(Model model, Func<string, DataType> typeOf, bool withDelta)
    {
        var clone = model.Clone();
        var graph = clone.Graph;
        var (keep, cut, reached) = Analyse(graph, Layer, Features);
        while (graph.Outputs.Count > 0)
            graph.RemoveOutput(graph.Outputs.Count - 1);
        var renames = new List<(Value Input, string Name)>();
        foreach (var value in cut)
        {
            if (value.IsGraphInput)
                continue;
            var input = new Value(graph.UniqueName("onnxquant.cut.input"), new TensorType(typeOf(value.Name), null));
            graph.AddInput(input);
            graph.ReplaceAllUsesWith(value, input);
            renames.Add((input, value.Name));
        }
        for (var i = graph.Nodes.Count - 1; i >= 0; i--)
            if (!keep.Contains(graph.Nodes[i]))
                graph.RemoveNode(graph.Nodes[i], force: true);
        foreach (var (input, name) in renames)
            input.Name = name;
        var cutNames = cut.Select(v => v.Name).ToHashSet(StringComparer.Ordinal);
        foreach (var input in graph.Inputs.ToList())
            if (!input.IsInitializer && !cutNames.Contains(input.Name))
                graph.RemoveInput(input);

        var node = graph.FindInitializer(Layer.WeightName)!.Uses[0].Node;
        var init = graph.FindInitializer(Layer.WeightName)!;
        graph.RemoveInitializer(init, force: true);
        var weight = new Value(Layer.WeightName, new TensorType(DataType.Float, Shape.Of(Layer.WeightShape)));
        graph.AddInput(weight);
        graph.ReplaceAllUsesWith(init, weight);
        foreach (var f in reached)
        {
            var value = graph.FindValue(f)!;
            value.Type ??= new TensorType(DataType.Float, null);
            graph.AddOutput(value);
        }
        if (withDelta)
        {
            var delta = new Value(DeltaInput, new TensorType(DataType.Float, Shape.Of(Layer.WeightShape)));
            graph.AddInput(delta);
            var attributes = node.Attributes.Where(a => a.Name != "beta");
            var copy = new Node(node.OpType, [node.Inputs[0], delta], [DeltaOutput], node.Domain, graph.UniqueName("onnxquant.cut.delta"), attributes);
            graph.AddNode(copy);
            copy.Outputs[0].Type = new TensorType(DataType.Float, null);
            graph.AddOutput(copy.Outputs[0]);
        }
        new DeadNodeEliminationPass().Run(clone);
        return clone;
    }

    private static (HashSet<Node> Keep, List<Value> Cut, List<string> Features) Analyse(Graph graph, QuantLayer layer, IReadOnlyList<string> features)
    {
        var node = graph.FindInitializer(layer.WeightName)?.Uses.Single().Node
            ?? throw new InvalidOperationException($"layer '{layer.Name}': weight '{layer.WeightName}' not found");
        var reaching = Reaching(graph, features);
        // Forward closure of the layer's outputs, restricted to what reaches a feature.
        var keep = new HashSet<Node>(ReferenceEqualityComparer.Instance) { node };
        var stack = new Stack<Node>();
        stack.Push(node);
        while (stack.Count > 0)
        {
            foreach (var output in stack.Pop().Outputs)
                foreach (var use in output.Uses)
                {
                    var user = TopLevel(graph, use.Node);
                    if (user is not null && reaching.Contains(user) && keep.Add(user))
                        stack.Push(user);
                }
        }
        var cut = new List<Value>();
        var seen = new HashSet<Value>(ReferenceEqualityComparer.Instance);
        foreach (var n in graph.Nodes)
        {
            if (!keep.Contains(n))
                continue;
            foreach (var v in Dependencies(n))
            {
                if (v.IsOmitted || v.IsInitializer || !seen.Add(v))
                    continue;
                if (v.IsGraphInput || v.Producer is null || !keep.Contains(v.Producer))
                    cut.Add(v);
            }
        }
        var reached = features.Where(f => graph.FindValue(f)?.Producer is { } p && keep.Contains(p)).ToList();
        return (keep, cut, reached);
    }

    private static IEnumerable<Value> Dependencies(Node node)
    {
        foreach (var v in node.Inputs)
            if (v is not null)
                yield return v;
        foreach (var g in node.Subgraphs)
            foreach (var v in g.OuterReferences())
                yield return v;
    }

    private static Node? TopLevel(Graph graph, Node node)
    {
        while (node.Graph is { } g && g != graph)
        {
            if (g.ParentNode is not { } parent)
                return null;
            node = parent;
        }
        return node.Graph == graph ? node : null;
    }

    private static HashSet<Node> Reaching(Graph graph, IReadOnlyList<string> features)
    {
        var set = new HashSet<Node>(ReferenceEqualityComparer.Instance);
        var stack = new Stack<Node>();
        foreach (var f in features)
            if (graph.FindValue(f)?.Producer is { } p && set.Add(p))
                stack.Push(p);
        while (stack.Count > 0)
            foreach (var v in Dependencies(stack.Pop()))
                if (v.Producer is { } p && set.Add(p))
                    stack.Push(p);
        return set;
    }
}
