namespace OnnxQuant.Frontend;

/// <summary>One use of a value: input <see cref="InputIndex"/> of <see cref="Node"/>.</summary>
public readonly record struct Usage(Node Node, int InputIndex);

/// <summary>
/// A named value of a graph (SSA: defined once). It knows its producer (a node output, a graph input or an
/// initializer) and its uses in the order they were made, so walks over the graph are deterministic. Uses change only
/// through <see cref="Node"/> and <see cref="Graph"/> methods, which keep them right.
/// </summary>
public sealed class Value
{
    private readonly List<Usage> _uses = [];
    private string _name;
    private Tensor? _initializer;

    public Value(string name, OnnxType? type = null)
    {
        _name = name;
        FullType = type;
    }

    /// <summary>The value's name; empty for an omitted optional node output.</summary>
    public string Name
    {
        get => _name;
        set
        {
            _name = value;
            Graph?.NamesChanged();
        }
    }

    /// <summary>The type of any kind (tensor, sequence, map, optional, ...), or null if unknown.</summary>
    public OnnxType? FullType { get; set; }

    /// <summary>The tensor type (element type and shape with symbolic dims), or null if unknown or not a tensor.</summary>
    public TensorType? Type
    {
        get => FullType as TensorType;
        set => FullType = value;
    }

    public string DocString { get; set; } = "";
    public List<MetadataEntry> MetadataProps { get; } = [];

    /// <summary>The node that computes this value, or null for graph inputs, initializers and undefined names.</summary>
    public Node? Producer { get; internal set; }

    /// <summary>Which output of <see cref="Producer"/> this is; -1 if it has no producer.</summary>
    public int ProducerOutputIndex { get; internal set; } = -1;

    /// <summary>Every (node, input index) that reads this value, in the order the uses were made.</summary>
    public IReadOnlyList<Usage> Uses => _uses;

    /// <summary>The graph that defines this value (as input, initializer or node output); null while detached.</summary>
    public Graph? Graph { get; internal set; }

    public bool IsGraphInput => GraphInputCount > 0;
    public bool IsGraphOutput => GraphOutputCount > 0;
    public bool IsInitializer => _initializer is not null;

    /// <summary>True when a sparse initializer of the graph defines this value.</summary>
    public bool IsSparseInitializer { get; internal set; }

    /// <summary>An omitted optional output (empty name): nothing may use it.</summary>
    public bool IsOmitted => _name.Length == 0;

    /// <summary>The constant data when this value is an initializer; replace it with <see cref="Graph.SetInitializer"/>.</summary>
    public Tensor? Initializer
    {
        get => _initializer;
        internal set => _initializer = value;
    }

    /// <summary>
    /// The one definition of "constant" every pass and summary uses: an initializer that no graph input can override
    /// (an initializer also listed as a graph input is a default the caller may replace), or the `value` tensor of the
    /// Constant node that produces this value; null otherwise.
    /// </summary>
    public Tensor? ConstantValue => this switch
    {
        { Initializer: { } t, IsGraphInput: false } => t,
        { Initializer: null, Producer: { OpType: "Constant", Domain: "" or "ai.onnx" } p }
            when p.GetAttribute("value") is { Kind: AttributeKind.Tensor, RefAttrName: null } a => a.AsTensor(),
        _ => null,
    };

    internal int GraphInputCount { get; set; }
    internal int GraphOutputCount { get; set; }

    internal void AddUse(Node node, int index) => _uses.Add(new Usage(node, index));

    internal void RemoveUse(Node node, int index)
    {
        var i = _uses.IndexOf(new Usage(node, index));
        if (i >= 0) _uses.RemoveAt(i);
    }

    public override string ToString() => FullType is null ? Name : $"{Name}: {FullType}";
}
