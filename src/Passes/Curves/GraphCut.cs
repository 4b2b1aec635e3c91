using OnnxQuant.Frontend;
using OnnxQuant.Passes.Canonicalize;
using OnnxQuant.Passes.Units;

namespace OnnxQuant.Passes.Curves;

/// <summary>
/// The part of the model a perturbation of some layers' weights can change: the layers' nodes and every node
/// downstream of them that leads to a feature. Everything it reads from the rest of the model (the layers' inputs,
/// skip connections, positional encodings, shapes computed upstream) is a cut value, fed from float activations cached
/// once. One cut serves a segment of consecutive layers (one ONNX Runtime session for all of them): measuring a later
/// layer of the segment re-runs the few nodes between the segment's start and that layer with float weights.
/// </summary>
public sealed record GraphCut(IReadOnlyList<QuantLayer> Layers, IReadOnlyList<string> CutValues, IReadOnlyList<string> Features,
    IReadOnlyDictionary<QuantLayer, IReadOnlyList<string>> FeaturesOf, IReadOnlyDictionary<QuantLayer, string> OutputOf, int Nodes)
{
    /// <summary>For a relay cut (no layers): the value it starts from, one of its cut values, fed perturbed.</summary>
    public string? Relay { get; init; }

    /// <summary>Finds the cut of <paramref name="layers"/> in <paramref name="model"/> (not modified).</summary>
    public static GraphCut Find(Model model, IReadOnlyList<QuantLayer> layers, IReadOnlyList<string> features)
    {
        var a = Analyse(model.Graph, layers, null, features);
        return new GraphCut(layers, a.Cut.Select(v => v.Name).ToList(), a.Features, a.FeaturesOf, a.OutputOf, a.Keep.Count);
    }

    /// <summary>The part of <paramref name="model"/> downstream of the value <paramref name="relay"/> that leads to a
    /// feature: what a change of that value alone can change.</summary>
    public static GraphCut FindFrom(Model model, string relay, IReadOnlyList<string> features)
    {
        var a = Analyse(model.Graph, [], relay, features);
        return new GraphCut([], a.Cut.Select(v => v.Name).ToList(), a.Features, a.FeaturesOf, a.OutputOf, a.Keep.Count) { Relay = relay };
    }

    /// <summary>
    /// The first value (in graph order) that every path from any of <paramref name="layers"/> to a feature passes
    /// through, itself not a feature, nor the output of a node that also computes a feature: then the features depend
    /// on those layers' weights only through it. Null when there is none (a feature pyramid's levels each read the
    /// backbone stage they follow), or when a layer reaches no feature.
    /// </summary>
    public static string? CommonRelay(Model model, IReadOnlyList<QuantLayer> layers, IReadOnlyList<string> features)
    {
        var graph = model.Graph;
        var reaching = Reaching(graph, features);
        var featureSet = features.ToHashSet(StringComparer.Ordinal);
        var starts = new List<Node>();
        foreach (var layer in layers)
        {
            if (graph.FindInitializer(layer.WeightName)?.Uses.Single().Node is not { } node || !reaching.Contains(node))
                return null;
            starts.Add(node);
        }
        if (starts.Count == 0)
            return null;
        var order = new Dictionary<Node, int>(ReferenceEqualityComparer.Instance);
        for (var i = 0; i < graph.Nodes.Count; i++)
            order[graph.Nodes[i]] = i;
        var region = Downstream(graph, starts, reaching);
        // Every node of the region lies before such a value's producer (it leads to the value) or after it (it reads
        // through the value), so in graph order the value is, right after its producer, the one value still to be read
        // by the region or to reach a feature: one sweep finds the first.
        var nodes = graph.Nodes.Where(region.Contains).ToList();
        var lastUse = new Dictionary<Value, int>(ReferenceEqualityComparer.Instance);
        foreach (var node in nodes)
            foreach (var value in node.Outputs)
            {
                if (value.IsOmitted)
                    continue;
                var uses = value.Uses.Select(u => TopLevel(graph, u.Node)).OfType<Node>().Where(region.Contains).Select(n => order[n]).ToList();
                if (featureSet.Contains(value.Name))
                    lastUse[value] = int.MaxValue;
                else if (uses.Count > 0)
                    lastUse[value] = uses.Max();
            }
        var live = new HashSet<Value>(ReferenceEqualityComparer.Instance);
        var last = starts.Max(n => order[n]);
        foreach (var node in nodes)
        {
            var index = order[node];
            live.RemoveWhere(v => lastUse[v] <= index);
            foreach (var value in node.Outputs)
                if (lastUse.ContainsKey(value))
                    live.Add(value);
            if (index < last || live.Count != 1)
                continue;
            var only = live.First();
            if (lastUse[only] == int.MaxValue || only.Producer is not { } producer || producer.Subgraphs.Any())
                continue;
            return only.Name;
        }
        return null;
    }

    /// <summary>Nodes reachable from <paramref name="starts"/> (included) that lead to a feature.</summary>
    private static HashSet<Node> Downstream(Graph graph, IEnumerable<Node> starts, HashSet<Node> reaching)
    {
        var own = new HashSet<Node>(ReferenceEqualityComparer.Instance);
        var stack = new Stack<Node>();
        foreach (var s in starts)
            if (own.Add(s))
                stack.Push(s);
        while (stack.Count > 0)
        {
            foreach (var output in stack.Pop().Outputs)
                foreach (var use in output.Uses)
                {
                    var user = TopLevel(graph, use.Node);
                    if (user is not null && reaching.Contains(user) && own.Add(user))
                        stack.Push(user);
                }
        }
        return own;
    }

    /// <summary>
    /// The cut as a model: cut values are graph inputs (typed from <paramref name="typeOf"/>, with the shape it gives:
    /// ONNX Runtime's layout and fusion passes need known shapes downstream), the layers' weights are
    /// graph inputs of the same names, outputs are the reachable features and, with <paramref name="withLayerOutputs"/>,
    /// each layer's output (so the change a perturbation makes there can be measured).
    /// </summary>
    public Model Build(Model model, Func<string, (DataType Type, long[]? Shape)> typeOf, bool withLayerOutputs)
    {
        var clone = model.Clone();
        var graph = clone.Graph;
        var (keep, cut, reached, _, _) = Analyse(graph, Layers, Relay, Features);
        while (graph.Outputs.Count > 0)
            graph.RemoveOutput(graph.Outputs.Count - 1);
        var renames = new List<(Value Input, string Name)>();
        foreach (var value in cut)
        {
            if (value.IsGraphInput)
                continue;
            var (type, shape) = typeOf(value.Name);
            var input = new Value(graph.UniqueName("onnxquant.cut.input"), new TensorType(type, shape is null ? null : Shape.Of(shape)));
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

        var outputs = new List<string>(reached);
        foreach (var layer in Layers)
        {
            var init = graph.FindInitializer(layer.WeightName)!;
            if (withLayerOutputs)
                outputs.Add(init.Uses[0].Node.Outputs[0].Name);
            graph.RemoveInitializer(init, force: true);
            var weight = new Value(layer.WeightName, new TensorType(DataType.Float, Shape.Of(layer.WeightShape)));
            graph.AddInput(weight);
            graph.ReplaceAllUsesWith(init, weight);
        }
        foreach (var name in outputs.Distinct())
        {
            var value = graph.FindValue(name)!;
            ElementTypeInference.EnsureTyped(value);
            graph.AddOutput(value);
        }
        new DeadNodeEliminationPass().Run(clone);
        return clone;
    }

    private static (HashSet<Node> Keep, List<Value> Cut, List<string> Features, Dictionary<QuantLayer, IReadOnlyList<string>> FeaturesOf,
        Dictionary<QuantLayer, string> OutputOf) Analyse(Graph graph, IReadOnlyList<QuantLayer> layers, string? relay, IReadOnlyList<string> features)
    {
        var reaching = Reaching(graph, features);
        var keep = new HashSet<Node>(ReferenceEqualityComparer.Instance);
        var featuresOf = new Dictionary<QuantLayer, IReadOnlyList<string>>();
        var outputOf = new Dictionary<QuantLayer, string>();
        if (relay is not null)
        {
            var value = graph.FindValue(relay) ?? throw new InvalidOperationException($"relay value '{relay}' not found");
            var users = value.Uses.Select(u => TopLevel(graph, u.Node)).OfType<Node>().Where(reaching.Contains).ToList();
            keep.UnionWith(Downstream(graph, users, reaching));
        }
        foreach (var layer in layers)
        {
            var node = graph.FindInitializer(layer.WeightName)?.Uses.Single().Node
                ?? throw new InvalidOperationException($"layer '{layer.Name}': weight '{layer.WeightName}' not found");
            // Forward closure of the layer's outputs, restricted to what reaches a feature.
            var own = Downstream(graph, [node], reaching);
            keep.UnionWith(own);
            featuresOf[layer] = features.Where(f => graph.FindValue(f)?.Producer is { } p && own.Contains(p)).ToList();
            outputOf[layer] = node.Outputs[0].Name;
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
        return (keep, cut, reached, featuresOf, outputOf);
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
