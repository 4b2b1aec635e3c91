namespace OnnxQuant.Frontend;

/// <summary>
/// One operator application. Inputs are read-only from outside and change only through <see cref="ReplaceInput"/>
/// and friends, which keep the uses of the values right; a node creates and owns its output values. An input may be
/// null (an omitted optional input); an output with an empty name is an omitted optional output.
/// </summary>
public sealed class Node
{
    private readonly List<Value?> _inputs;
    private readonly Value[] _outputs;
    private readonly List<Attribute> _attributes;

    /// <param name="opType">Operator name, e.g. "Conv".</param>
    /// <param name="inputs">Input values in order; null for an omitted optional input.</param>
    /// <param name="outputNames">Names of the outputs this node creates (use <see cref="Graph.UniqueName"/>).</param>
    /// <param name="domain">Operator set domain; "" is the default ONNX domain.</param>
    /// <param name="name">Node name (optional in ONNX).</param>
    /// <param name="attributes">Attributes in order.</param>
    public Node(string opType, IEnumerable<Value?> inputs, IEnumerable<string> outputNames, string domain = "",
        string name = "", IEnumerable<Attribute>? attributes = null)
    {
        OpType = opType;
        Domain = domain;
        Name = name;
        _inputs = inputs.ToList();
        _outputs = outputNames.Select((n, i) => new Value(n) { Producer = this, ProducerOutputIndex = i }).ToArray();
        _attributes = attributes?.ToList() ?? [];
        var duplicate = _attributes.GroupBy(a => a.Name).FirstOrDefault(g => g.Count() > 1);
        if (duplicate is not null)
            throw new ArgumentException($"node '{name}' ({opType}): attribute '{duplicate.Key}' given twice");
        foreach (var a in _attributes)
            AttachSubgraphs(a);
    }

    public string OpType { get; set; }
    public string Domain { get; set; }
    public string Name { get; set; }
    /// <summary>Selects one of several functions with the same (domain, op type); empty when unused.</summary>
    public string Overload { get; set; } = "";
    public string DocString { get; set; } = "";
    public List<MetadataEntry> MetadataProps { get; } = [];

    /// <summary>The graph this node is in; null while detached.</summary>
    public Graph? Graph { get; internal set; }

    public IReadOnlyList<Value?> Inputs => _inputs;
    public IReadOnlyList<Value> Outputs => _outputs;
    public IReadOnlyList<Attribute> Attributes => _attributes;

    /// <summary>Serialized NodeProto fields this IR does not model, kept for the round trip.</summary>
    internal byte[]? Preserved { get; set; }

    /// <summary>"name (OpType)" or "OpType" for unnamed nodes, for messages.</summary>
    public string Describe() => Name.Length > 0 ? $"'{Name}' ({OpType})" : $"{OpType} with outputs [{string.Join(", ", _outputs.Select(o => o.Name))}]";

    /// <summary>Sets input <paramref name="index"/> to <paramref name="value"/> (null omits it), keeping uses right.</summary>
    public void ReplaceInput(int index, Value? value)
    {
        if ((uint)index >= (uint)_inputs.Count)
            throw new ArgumentOutOfRangeException(nameof(index), $"node {Describe()} has {_inputs.Count} inputs");
        if (Graph is not null)
        {
            _inputs[index]?.RemoveUse(this, index);
            value?.AddUse(this, index);
        }
        _inputs[index] = value;
    }

    /// <summary>Adds an input at the end (variadic operators, or an optional input that was left off).</summary>
    public void AppendInput(Value? value)
    {
        _inputs.Add(value);
        if (Graph is not null)
            value?.AddUse(this, _inputs.Count - 1);
    }

    /// <summary>Removes trailing inputs so that <paramref name="count"/> remain.</summary>
    public void TruncateInputs(int count)
    {
        if (count < 0 || count > _inputs.Count)
            throw new ArgumentOutOfRangeException(nameof(count));
        for (int i = _inputs.Count - 1; i >= count; i--)
        {
            if (Graph is not null) _inputs[i]?.RemoveUse(this, i);
            _inputs.RemoveAt(i);
        }
    }

    public Attribute? GetAttribute(string name) => _attributes.Find(a => a.Name == name);

    public long GetInt(string name, long defaultValue) => GetAttribute(name)?.AsInt() ?? defaultValue;
    public float GetFloat(string name, float defaultValue) => GetAttribute(name)?.AsFloat() ?? defaultValue;
    public string GetString(string name, string defaultValue) => GetAttribute(name)?.AsString() ?? defaultValue;
    public IReadOnlyList<long>? GetInts(string name) => GetAttribute(name)?.AsInts();
    public IReadOnlyList<float>? GetFloats(string name) => GetAttribute(name)?.AsFloats();

    /// <summary>Adds the attribute, or replaces the one with the same name in place.</summary>
    public void SetAttribute(Attribute attribute)
    {
        var i = _attributes.FindIndex(a => a.Name == attribute.Name);
        if (i >= 0)
        {
            foreach (var g in _attributes[i].Subgraphs) g.ParentNode = null;
            _attributes[i] = attribute;
        }
        else
            _attributes.Add(attribute);
        AttachSubgraphs(attribute);
    }

    public bool RemoveAttribute(string name)
    {
        var i = _attributes.FindIndex(a => a.Name == name);
        if (i < 0) return false;
        foreach (var g in _attributes[i].Subgraphs) g.ParentNode = null;
        _attributes.RemoveAt(i);
        return true;
    }

    /// <summary>The graphs held by this node's attributes (If branches, Loop and Scan bodies).</summary>
    public IEnumerable<Graph> Subgraphs => _attributes.SelectMany(a => a.Subgraphs);

    internal void RegisterUses()
    {
        for (int i = 0; i < _inputs.Count; i++)
            _inputs[i]?.AddUse(this, i);
    }

    internal void UnregisterUses()
    {
        for (int i = 0; i < _inputs.Count; i++)
            _inputs[i]?.RemoveUse(this, i);
    }

    private void AttachSubgraphs(Attribute attribute)
    {
        foreach (var g in attribute.Subgraphs)
        {
            if (g.ParentNode is not null && g.ParentNode != this)
                throw new ArgumentException($"graph '{g.Name}' already belongs to node {g.ParentNode.Describe()}");
            g.ParentNode = this;
        }
    }

    public override string ToString() =>
        $"{Describe()}({string.Join(", ", _inputs.Select(v => v?.Name ?? ""))}) -> {string.Join(", ", _outputs.Select(v => v.Name))}";
}
