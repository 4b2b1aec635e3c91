using System.Text;

namespace OnnxQuant.Frontend;

/// <summary>The kind of an attribute's value, numbered as AttributeProto.AttributeType.</summary>
public enum AttributeKind
{
    Undefined = 0,
    Float = 1,
    Int = 2,
    String = 3,
    Tensor = 4,
    Graph = 5,
    Floats = 6,
    Ints = 7,
    Strings = 8,
    Tensors = 9,
    Graphs = 10,
    SparseTensor = 11,
    SparseTensors = 12,
    TypeProto = 13,
    TypeProtos = 14,
}

/// <summary>
/// A typed node (or function) attribute. Exactly one value is meaningful, the one <see cref="Kind"/> names; the typed
/// accessors throw <see cref="FrontendException"/> on a kind mismatch so a bad model reports where it is wrong. Sparse
/// tensor and type attributes are not modeled and are kept in serialized form. Inside a function body an attribute
/// may instead refer to an attribute of the calling node (<see cref="RefAttrName"/>).
/// </summary>
public sealed class Attribute
{
    private object? _value;

    private Attribute(string name, AttributeKind kind, object? value)
    {
        Name = name;
        Kind = kind;
        _value = value;
    }

    public string Name { get; }
    public AttributeKind Kind { get; }
    public string? RefAttrName { get; init; }
    public string DocString { get; set; } = "";

    /// <summary>Serialized AttributeProto fields this IR does not model (sparse tensors, types, unknown fields).</summary>
    internal byte[]? Preserved { get; set; }

    public static Attribute FromFloat(string name, float value) => new(name, AttributeKind.Float, value);
    public static Attribute FromInt(string name, long value) => new(name, AttributeKind.Int, value);
    public static Attribute FromString(string name, string value) => new(name, AttributeKind.String, Encoding.UTF8.GetBytes(value));
    public static Attribute FromBytes(string name, byte[] value) => new(name, AttributeKind.String, value);
    public static Attribute FromTensor(string name, Tensor value) => new(name, AttributeKind.Tensor, value);
    public static Attribute FromGraph(string name, Graph value) => new(name, AttributeKind.Graph, value);
    public static Attribute FromFloats(string name, IEnumerable<float> value) => new(name, AttributeKind.Floats, value.ToArray());
    public static Attribute FromInts(string name, IEnumerable<long> value) => new(name, AttributeKind.Ints, value.ToArray());
    public static Attribute FromStrings(string name, IEnumerable<string> value) =>
        new(name, AttributeKind.Strings, value.Select(Encoding.UTF8.GetBytes).ToArray());
    public static Attribute FromByteStrings(string name, IEnumerable<byte[]> value) => new(name, AttributeKind.Strings, value.ToArray());
    public static Attribute FromTensors(string name, IEnumerable<Tensor> value) => new(name, AttributeKind.Tensors, value.ToArray());
    public static Attribute FromGraphs(string name, IEnumerable<Graph> value) => new(name, AttributeKind.Graphs, value.ToArray());

    /// <summary>An attribute of a kind this IR keeps only in serialized form, or a reference to a caller's attribute.</summary>
    internal static Attribute Opaque(string name, AttributeKind kind, string? refAttrName) =>
        new(name, kind, null) { RefAttrName = refAttrName };

    public float AsFloat() => Get<float>(AttributeKind.Float);
    public long AsInt() => Get<long>(AttributeKind.Int);
    public string AsString() => Text.Utf8(Get<byte[]>(AttributeKind.String));
    public byte[] AsBytes() => Get<byte[]>(AttributeKind.String);
    public Tensor AsTensor() => Get<Tensor>(AttributeKind.Tensor);
    public Graph AsGraph() => Get<Graph>(AttributeKind.Graph);
    public IReadOnlyList<float> AsFloats() => Get<float[]>(AttributeKind.Floats);
    public IReadOnlyList<long> AsInts() => Get<long[]>(AttributeKind.Ints);
    public IReadOnlyList<string> AsStrings() => Get<byte[][]>(AttributeKind.Strings).Select(b => Text.Utf8(b)).ToArray();
    public IReadOnlyList<byte[]> AsByteStrings() => Get<byte[][]>(AttributeKind.Strings);
    public IReadOnlyList<Tensor> AsTensors() => Get<Tensor[]>(AttributeKind.Tensors);
    public IReadOnlyList<Graph> AsGraphs() => Get<Graph[]>(AttributeKind.Graphs);

    /// <summary>The subgraphs held by this attribute (one for a graph attribute, several for a list of graphs).</summary>
    public IEnumerable<Graph> Subgraphs => _value switch
    {
        Graph g => [g],
        Graph[] gs => gs,
        _ => [],
    };

    /// <summary>The tensors held by this attribute.</summary>
    public IEnumerable<Tensor> TensorValues => _value switch
    {
        Tensor t => [t],
        Tensor[] ts => ts,
        _ => [],
    };

    internal object? RawValue => _value;

    private T Get<T>(AttributeKind expected)
    {
        if (Kind != expected || _value is not T value)
            throw new FrontendException(
                RefAttrName is null
                    ? $"attribute '{Name}' is {Kind}, expected {expected}"
                    : $"attribute '{Name}' refers to the caller's attribute '{RefAttrName}' and has no value of its own");
        return value;
    }

    public override string ToString() => _value switch
    {
        _ when RefAttrName is not null => $"{Name}=@{RefAttrName}",
        float f => $"{Name}={f}",
        long i => $"{Name}={i}",
        byte[] s => $"{Name}=\"{Text.Utf8(s)}\"",
        long[] ints => $"{Name}=[{string.Join(",", ints)}]",
        float[] floats => $"{Name}=[{string.Join(",", floats)}]",
        _ => $"{Name}:{Kind}",
    };
}
