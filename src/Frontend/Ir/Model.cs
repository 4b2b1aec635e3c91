using System.Collections;

namespace OnnxQuant.Frontend;

/// <summary>One operator set a model imports.</summary>
public readonly record struct OpsetImport(string Domain, long Version);

/// <summary>
/// The operator sets a model (or function) imports, in file order, at most one version per domain. The default ONNX
/// domain is "" (a file may also spell it "ai.onnx"; both name the same domain here).
/// </summary>
public sealed class OpsetImports : IReadOnlyList<OpsetImport>
{
    private readonly List<OpsetImport> _items = [];

    public int Count => _items.Count;
    public OpsetImport this[int index] => _items[index];

    /// <summary>The version imported for <paramref name="domain"/>; setting adds or updates it in place.</summary>
    public long this[string domain]
    {
        get => TryGet(domain) ?? throw new KeyNotFoundException($"the model imports no opset for domain '{domain}'");
        set
        {
            var i = IndexOf(domain);
            if (i >= 0) _items[i] = _items[i] with { Version = value };
            else _items.Add(new OpsetImport(domain, value));
        }
    }

    /// <summary>The version of the default ONNX domain, or null if none is imported.</summary>
    public long? Default
    {
        get => TryGet("");
        set
        {
            if (value is { } v) this[""] = v;
            else Remove("");
        }
    }

    public long? TryGet(string domain)
    {
        var i = IndexOf(domain);
        return i >= 0 ? _items[i].Version : null;
    }

    public bool Contains(string domain) => IndexOf(domain) >= 0;

    public bool Remove(string domain)
    {
        var i = IndexOf(domain);
        if (i < 0) return false;
        _items.RemoveAt(i);
        return true;
    }

    internal bool TryAdd(string domain, long version)
    {
        if (IndexOf(domain) >= 0) return false;
        _items.Add(new OpsetImport(domain, version));
        return true;
    }

    /// <summary>"" and "ai.onnx" are the same domain.</summary>
    public static bool SameDomain(string a, string b) => Normalize(a) == Normalize(b);

    private static string Normalize(string d) => d == "ai.onnx" ? "" : d;

    private int IndexOf(string domain) => _items.FindIndex(x => SameDomain(x.Domain, domain));

    public IEnumerator<OpsetImport> GetEnumerator() => _items.GetEnumerator();
    IEnumerator IEnumerable.GetEnumerator() => GetEnumerator();

    public override string ToString() => string.Join(", ", _items.Select(x => $"{(x.Domain.Length == 0 ? "ai.onnx" : x.Domain)}:{x.Version}"));
}

/// <summary>
/// A model-local function: nodes of the model call it as operator (<see cref="Domain"/>, <see cref="Name"/>,
/// <see cref="Overload"/>). Its body is a <see cref="Graph"/> whose inputs and outputs are the function's.
/// </summary>
public sealed class Function
{
    public Function(string domain, string name, Graph body)
    {
        Domain = domain;
        Name = name;
        Body = body;
    }

    public string Domain { get; set; }
    public string Name { get; set; }
    public string Overload { get; set; } = "";
    public Graph Body { get; }
    public OpsetImports OpsetImports { get; } = new();
    /// <summary>Names of the attributes a call may set.</summary>
    public List<string> AttributeNames { get; } = [];
    /// <summary>Attributes a call may set, with their default values.</summary>
    public List<Attribute> AttributeDefaults { get; } = [];
    public string DocString { get; set; } = "";
    public List<MetadataEntry> MetadataProps { get; } = [];

    internal byte[]? Preserved { get; set; }

    public override string ToString() => $"function {Domain}.{Name}";
}

/// <summary>A model: IR version, imported operator sets, metadata, the main graph and local functions.</summary>
public sealed class Model
{
    public Model(Graph graph) => Graph = graph;

    public long IrVersion { get; set; } = ModelIO.DefaultIrVersion;
    public OpsetImports OpsetImports { get; } = new();
    public string ProducerName { get; set; } = "";
    public string ProducerVersion { get; set; } = "";
    public string Domain { get; set; } = "";
    public long ModelVersion { get; set; }
    public string DocString { get; set; } = "";
    public List<MetadataEntry> MetadataProps { get; } = [];
    public Graph Graph { get; set; }
    public List<Function> Functions { get; } = [];

    /// <summary>Serialized ModelProto fields this IR does not model (training info, device configurations, unknown).</summary>
    internal byte[]? Preserved { get; set; }

    /// <summary>
    /// A deep copy: new graphs, nodes and values with the same links; tensors are copied as objects but share their
    /// immutable data (external data stays lazy).
    /// </summary>
    public Model Clone() => IrCloner.Clone(this);

    /// <summary>Every tensor the model holds: initializers and tensor attributes, in all graphs and functions.</summary>
    public IEnumerable<Tensor> AllTensors()
    {
        foreach (var g in AllGraphs())
        {
            foreach (var v in g.Initializers) yield return v.Initializer!;
            foreach (var n in g.Nodes)
                foreach (var a in n.Attributes)
                    foreach (var t in a.TensorValues)
                        yield return t;
        }
    }

    /// <summary>The main graph, every function body, and all their subgraphs.</summary>
    public IEnumerable<Graph> AllGraphs() =>
        Graph.AllGraphs().Concat(Functions.SelectMany(f => f.Body.AllGraphs()));
}
