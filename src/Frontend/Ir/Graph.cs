namespace OnnxQuant.Frontend;

/// <summary>
/// A graph: nodes in order, inputs, outputs, initializers and typed intermediate values. Every edit checks first and
/// changes nothing when it refuses, and keeps producer/use links right. Subgraphs (If/Loop/Scan bodies) are Graphs held
/// by node attributes; their nodes may read values of the enclosing graphs.
/// </summary>
public sealed class Graph
{
    private readonly List<Node> _nodes = [];
    private readonly List<Value> _inputs = [];
    private readonly List<Value> _outputs = [];
    private readonly List<Value> _initializers = [];
    private readonly List<Value> _valueInfo = [];
    private HashSet<string>? _names;

    public Graph(string name = "") => Name = name;

    public string Name { get; set; }
    public string DocString { get; set; } = "";
    public List<MetadataEntry> MetadataProps { get; } = [];

    /// <summary>Nodes in order (file order after loading; see <see cref="TopologicalSort"/>).</summary>
    public IReadOnlyList<Node> Nodes => _nodes;
    public IReadOnlyList<Value> Inputs => _inputs;
    public IReadOnlyList<Value> Outputs => _outputs;
    /// <summary>Initializer values in order; each has <see cref="Value.Initializer"/> set.</summary>
    public IReadOnlyList<Value> Initializers => _initializers;
    /// <summary>Intermediate (or outer-scope) values whose types the model listed in value_info, in file order.</summary>
    public IReadOnlyList<Value> ValueInfo => _valueInfo;

    /// <summary>The node whose attribute holds this graph, or null for a model's main graph or a function body.</summary>
    public Node? ParentNode { get; internal set; }

    /// <summary>The graph enclosing this subgraph.</summary>
    public Graph? OuterGraph => ParentNode?.Graph;

    /// <summary>Serialized GraphProto fields this IR does not model (sparse initializers, quantization annotations).</summary>
    internal byte[]? Preserved { get; set; }

    /// <summary>Values defined by sparse initializers (their data is kept in serialized form).</summary>
    internal List<Value> SparseInitializers { get; } = [];

    // ---- lookups ------------------------------------------------------------------------------------------------

    /// <summary>The initializer with this name, or null.</summary>
    public Value? FindInitializer(string name) => _initializers.Find(v => v.Name == name);

    /// <summary>The value with this name defined in this graph (input, initializer, node output), or null.</summary>
    public Value? FindValue(string name)
    {
        if (name.Length == 0) return null;
        foreach (var v in _inputs) if (v.Name == name) return v;
        foreach (var v in _initializers) if (v.Name == name) return v;
        foreach (var n in _nodes)
            foreach (var o in n.Outputs)
                if (o.Name == name) return o;
        return null;
    }

    /// <summary>Like <see cref="FindValue"/>, then in the enclosing graphs.</summary>
    public Value? FindValueInScope(string name) => FindValue(name) ?? OuterGraph?.FindValueInScope(name);

    /// <summary>All nodes of this graph and, depth first after each node, of its subgraphs.</summary>
    public IEnumerable<Node> AllNodes()
    {
        foreach (var n in _nodes)
        {
            yield return n;
            foreach (var g in n.Subgraphs)
                foreach (var inner in g.AllNodes())
                    yield return inner;
        }
    }

    /// <summary>This graph and every subgraph below it, depth first.</summary>
    public IEnumerable<Graph> AllGraphs()
    {
        yield return this;
        foreach (var n in _nodes)
            foreach (var g in n.Subgraphs)
                foreach (var inner in g.AllGraphs())
                    yield return inner;
    }

    // ---- name authority -----------------------------------------------------------------------------------------

    /// <summary>
    /// A name no value or node in the whole graph tree (this graph, the graphs around it and all subgraphs) uses:
    /// <paramref name="prefix"/> itself if free, else prefix_1, prefix_2, ... The name is reserved, so two calls never
    /// return the same name.
    /// </summary>
    public string UniqueName(string prefix)
    {
        var root = this;
        while (root.OuterGraph is { } outer) root = outer;
        var names = root._names ??= root.CollectNames();
        if (names.Add(prefix)) return prefix;
        for (long i = 1; ; i++)
        {
            var candidate = $"{prefix}_{i}";
            if (names.Add(candidate)) return candidate;
        }
    }

    internal void NamesChanged()
    {
        var root = this;
        while (root.OuterGraph is { } outer) root = outer;
        root._names = null;
    }

    private void Reserve(IEnumerable<string> names)
    {
        var root = this;
        while (root.OuterGraph is { } outer) root = outer;
        if (root._names is { } set)
            foreach (var n in names) set.Add(n);
    }

    private HashSet<string> CollectNames()
    {
        var set = new HashSet<string>(StringComparer.Ordinal);
        foreach (var g in AllGraphs())
        {
            foreach (var v in g._inputs) set.Add(v.Name);
            foreach (var v in g._initializers) set.Add(v.Name);
            foreach (var v in g._valueInfo) set.Add(v.Name);
            foreach (var n in g._nodes)
            {
                if (n.Name.Length > 0) set.Add(n.Name);
                foreach (var o in n.Outputs) set.Add(o.Name);
            }
        }
        set.Remove("");
        return set;
    }

    // ---- node edits ---------------------------------------------------------------------------------------------

    /// <summary>Appends a node.</summary>
    public void AddNode(Node node) => InsertNode(_nodes.Count, node);

    /// <summary>Inserts a node at position <paramref name="index"/> of <see cref="Nodes"/>.</summary>
    public void InsertNode(int index, Node node)
    {
        if ((uint)index > (uint)_nodes.Count)
            throw new ArgumentOutOfRangeException(nameof(index), $"graph '{Name}' has {_nodes.Count} nodes");
        if (node.Graph is not null)
            throw new InvalidOperationException($"node {node.Describe()} is already in graph '{node.Graph.Name}'");
        foreach (var o in node.Outputs)
            if (o.Graph is not null)
                throw new InvalidOperationException($"output '{o.Name}' of node {node.Describe()} already belongs to a graph");
        _nodes.Insert(index, node);
        node.Graph = this;
        foreach (var o in node.Outputs) o.Graph = this;
        node.RegisterUses();
        Reserve(node.Outputs.Select(o => o.Name).Append(node.Name).Where(n => n.Length > 0));
    }

    /// <summary>Inserts <paramref name="node"/> just before <paramref name="anchor"/>.</summary>
    public void InsertBefore(Node anchor, Node node) => InsertNode(IndexOf(anchor), node);

    /// <summary>Inserts <paramref name="node"/> just after <paramref name="anchor"/>.</summary>
    public void InsertAfter(Node anchor, Node node) => InsertNode(IndexOf(anchor) + 1, node);

    public int IndexOf(Node node)
    {
        var i = node.Graph == this ? _nodes.IndexOf(node) : -1;
        if (i < 0) throw new InvalidOperationException($"node {node.Describe()} is not in graph '{Name}'");
        return i;
    }

    /// <summary>
    /// Removes a node. Refuses (changing nothing) while any output is used or is a graph output, unless
    /// <paramref name="force"/> is set, in which case the users are left reading a value nobody produces.
    /// </summary>
    public void RemoveNode(Node node, bool force = false)
    {
        var index = IndexOf(node);
        if (!force)
        {
            foreach (var o in node.Outputs)
            {
                if (o.Uses.Count > 0)
                    throw new InvalidOperationException(
                        $"cannot remove node {node.Describe()}: its output '{o.Name}' is used by {o.Uses[0].Node.Describe()}");
                if (o.IsGraphOutput)
                    throw new InvalidOperationException(
                        $"cannot remove node {node.Describe()}: its output '{o.Name}' is a graph output");
            }
        }
        node.UnregisterUses();
        _nodes.RemoveAt(index);
        node.Graph = null;
        foreach (var o in node.Outputs) o.Graph = null;
    }

    /// <summary>
    /// Makes every user of <paramref name="old"/> read <paramref name="new"/> instead (subgraph users included). If
    /// <paramref name="old"/> is a graph output it refuses unless <paramref name="replaceGraphOutputs"/>, which also
    /// puts <paramref name="new"/> in its place among the outputs.
    /// </summary>
    public void ReplaceAllUsesWith(Value old, Value @new, bool replaceGraphOutputs = false)
    {
        if (ReferenceEquals(old, @new)) return;
        if (old.IsGraphOutput && !replaceGraphOutputs)
            throw new InvalidOperationException(
                $"value '{old.Name}' is a graph output; pass replaceGraphOutputs to replace it there too");
        foreach (var use in old.Uses.ToArray())
            use.Node.ReplaceInput(use.InputIndex, @new);
        if (replaceGraphOutputs)
            foreach (var g in AllGraphs())
                for (int i = 0; i < g._outputs.Count; i++)
                    if (ReferenceEquals(g._outputs[i], old))
                        g.ReplaceOutput(i, @new);
    }

    // ---- inputs, outputs, initializers ----------------------------------------------------------------------------

    /// <summary>Adds a graph input (a new value, or an initializer that callers may override).</summary>
    public void AddInput(Value value)
    {
        if (value.Graph is not null && value.Graph != this)
            throw new InvalidOperationException($"value '{value.Name}' belongs to graph '{value.Graph.Name}'");
        if (value.Producer is not null)
            throw new InvalidOperationException($"value '{value.Name}' is computed by node {value.Producer.Describe()}");
        _inputs.Add(value);
        value.Graph = this;
        value.GraphInputCount++;
        Reserve([value.Name]);
    }

    /// <summary>Removes a graph input; refuses while it is used (unless it is also an initializer).</summary>
    public void RemoveInput(Value value)
    {
        var i = _inputs.IndexOf(value);
        if (i < 0) throw new InvalidOperationException($"value '{value.Name}' is not an input of graph '{Name}'");
        if (value.Uses.Count > 0 && !value.IsInitializer)
            throw new InvalidOperationException($"input '{value.Name}' is used by {value.Uses[0].Node.Describe()}");
        _inputs.RemoveAt(i);
        value.GraphInputCount--;
        if (!value.IsInitializer && !value.IsGraphInput) value.Graph = null;
    }

    /// <summary>Exposes any value (e.g. an intermediate tensor) as a graph output.</summary>
    public void AddOutput(Value value)
    {
        if (value.IsOmitted)
            throw new InvalidOperationException("an omitted optional output cannot be a graph output");
        _outputs.Add(value);
        value.GraphOutputCount++;
    }

    /// <summary>Puts <paramref name="value"/> at position <paramref name="index"/> of the outputs.</summary>
    public void ReplaceOutput(int index, Value value)
    {
        if ((uint)index >= (uint)_outputs.Count) throw new ArgumentOutOfRangeException(nameof(index));
        _outputs[index].GraphOutputCount--;
        _outputs[index] = value;
        value.GraphOutputCount++;
    }

    public void RemoveOutput(int index)
    {
        if ((uint)index >= (uint)_outputs.Count) throw new ArgumentOutOfRangeException(nameof(index));
        _outputs[index].GraphOutputCount--;
        _outputs.RemoveAt(index);
    }

    /// <summary>Adds a constant named <paramref name="name"/>; refuses a name already defined in scope.</summary>
    public Value AddInitializer(string name, Tensor tensor)
    {
        if (name.Length == 0) throw new ArgumentException("an initializer needs a name");
        if (FindValueInScope(name) is not null)
            throw new InvalidOperationException($"graph '{Name}' already defines a value named '{name}'");
        var value = new Value(name, new TensorType(tensor.DataType, new Shape(tensor.Dims.Select(Dim.Of))));
        tensor.Name = name;
        AttachInitializer(value, tensor);
        Reserve([name]);
        return value;
    }

    /// <summary>Replaces the constant data of an initializer (e.g. with its quantized form).</summary>
    public void SetInitializer(Value value, Tensor tensor)
    {
        if (!value.IsInitializer || !_initializers.Contains(value))
            throw new InvalidOperationException($"value '{value.Name}' is not an initializer of graph '{Name}'");
        tensor.Name = value.Name;
        value.Initializer = tensor;
        if (value.FullType is null or TensorType)
            value.FullType = new TensorType(tensor.DataType, new Shape(tensor.Dims.Select(Dim.Of)));
    }

    /// <summary>Removes an initializer; refuses while it is used or is a graph output unless <paramref name="force"/>.</summary>
    public void RemoveInitializer(Value value, bool force = false)
    {
        var i = _initializers.IndexOf(value);
        if (i < 0) throw new InvalidOperationException($"value '{value.Name}' is not an initializer of graph '{Name}'");
        if (!force && (value.Uses.Count > 0 || value.IsGraphOutput))
            throw new InvalidOperationException(
                $"initializer '{value.Name}' is still used{(value.Uses.Count > 0 ? " by " + value.Uses[0].Node.Describe() : " as a graph output")}");
        _initializers.RemoveAt(i);
        value.Initializer = null;
        if (value.IsGraphInput) RemoveInput(value);
        value.Graph = null;
    }

    /// <summary>Records that the model listed a type for <paramref name="value"/> in value_info.</summary>
    public void AddValueInfo(Value value)
    {
        if (!_valueInfo.Contains(value)) _valueInfo.Add(value);
    }

    public bool RemoveValueInfo(Value value) => _valueInfo.Remove(value);

    internal void AttachInitializer(Value value, Tensor tensor)
    {
        value.Initializer = tensor;
        value.Graph = this;
        _initializers.Add(value);
    }

    internal void AttachSparseInitializer(Value value)
    {
        value.IsSparseInitializer = true;
        value.Graph = this;
        SparseInitializers.Add(value);
    }

    // ---- ordering -----------------------------------------------------------------------------------------------

    /// <summary>
    /// Reorders the nodes so every node comes after the producers of its inputs (including values its subgraphs read
    /// from this graph). Stable: nodes already in order keep their relative order. Throws
    /// <see cref="FrontendException"/> naming a node on the cycle if there is one.
    /// </summary>
    public void TopologicalSort()
    {
        var order = TopologicalOrder(out var stuck);
        if (stuck is not null)
            throw new FrontendException($"graph '{Name}' has a cycle through node {stuck.Describe()}");
        _nodes.Clear();
        _nodes.AddRange(order);
    }

    /// <summary>The stable topological order; <paramref name="stuck"/> is a node on a cycle if there is one.</summary>
    internal List<Node> TopologicalOrder(out Node? stuck)
    {
        var index = new Dictionary<Node, int>(ReferenceEqualityComparer.Instance);
        for (int i = 0; i < _nodes.Count; i++) index[_nodes[i]] = i;
        var pending = new int[_nodes.Count];
        var consumers = new List<int>[_nodes.Count];
        for (int i = 0; i < _nodes.Count; i++)
        {
            foreach (var input in Dependencies(_nodes[i]))
            {
                if (input.Producer is { } p && index.TryGetValue(p, out var pi) && pi != i)
                {
                    pending[i]++;
                    (consumers[pi] ??= []).Add(i);
                }
                else if (input.Producer is { } self && ReferenceEquals(self, _nodes[i]))
                {
                    pending[i]++; // a node reading its own output can never be scheduled
                }
            }
        }
        // Ready nodes are taken in original order (a min-heap on index) so the sort is stable and deterministic.
        var ready = new PriorityQueue<int, int>();
        for (int i = 0; i < _nodes.Count; i++) if (pending[i] == 0) ready.Enqueue(i, i);
        var order = new List<Node>(_nodes.Count);
        while (ready.TryDequeue(out var i, out _))
        {
            order.Add(_nodes[i]);
            if (consumers[i] is { } cs)
                foreach (var c in cs)
                    if (--pending[c] == 0) ready.Enqueue(c, c);
        }
        stuck = order.Count == _nodes.Count ? null : _nodes.Where((n, i) => pending[i] > 0).First();
        return order;
    }

    /// <summary>
    /// Makes <paramref name="outputs"/> the graph's only outputs and removes every node they do not need (backwards from
    /// them; a node needs its inputs and whatever its subgraphs read from outside) and the initializers nothing reads
    /// then: ONNX Runtime runs every node of a graph whatever a run fetches.
    /// </summary>
    public void KeepOnlyOutputs(IReadOnlyList<Value> outputs)
    {
        for (var i = _outputs.Count - 1; i >= 0; i--)
            RemoveOutput(i);
        foreach (var v in outputs)
            AddOutput(v);
        var keep = new HashSet<Node>(ReferenceEqualityComparer.Instance);
        var pending = new Stack<Value>(outputs);
        while (pending.Count > 0)
        {
            if (pending.Pop().Producer is not { } producer || producer.Graph != this || !keep.Add(producer))
                continue;
            foreach (var v in Dependencies(producer))
                pending.Push(v);
        }
        for (var i = _nodes.Count - 1; i >= 0; i--)
            if (!keep.Contains(_nodes[i]))
                RemoveNode(_nodes[i], force: true);
        // Weights only removed nodes read would still be serialized with the graph.
        foreach (var initializer in _initializers.Where(v => v.Uses.Count == 0 && !v.IsGraphInput && !v.IsGraphOutput).ToList())
            RemoveInitializer(initializer);
    }

    /// <summary>The values a node needs before it can run: its inputs and what its subgraphs read from outside.</summary>
    internal static IEnumerable<Value> Dependencies(Node node)
    {
        foreach (var v in node.Inputs)
            if (v is not null) yield return v;
        foreach (var g in node.Subgraphs)
            foreach (var v in g.OuterReferences())
                yield return v;
    }

    /// <summary>Values defined outside this graph that nodes of this graph (or its subgraphs) read.</summary>
    public IEnumerable<Value> OuterReferences()
    {
        var seen = new HashSet<Value>(ReferenceEqualityComparer.Instance);
        foreach (var g in AllGraphs())
            foreach (var n in g._nodes)
                foreach (var v in n.Inputs)
                    if (v is not null && !IsDefinedWithin(v) && seen.Add(v))
                        yield return v;
        foreach (var v in _outputs)
            if (!IsDefinedWithin(v) && seen.Add(v))
                yield return v;
    }

    private bool IsDefinedWithin(Value v)
    {
        for (var g = v.Graph; g is not null; g = g.OuterGraph)
            if (g == this) return true;
        return false;
    }

    public override string ToString() => $"graph '{Name}' ({_nodes.Count} nodes)";
}
