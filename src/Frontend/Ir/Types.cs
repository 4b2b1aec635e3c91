using System.Text;

namespace OnnxQuant.Frontend;

/// <summary>
/// One dimension of a shape: a fixed size (<see cref="Value"/>), a symbolic name shared by dims that must agree
/// (<see cref="Param"/>, e.g. "batch"), or unknown (neither set). <see cref="Denotation"/> is the optional semantic tag
/// ONNX allows on a dimension ("DATA_BATCH", "DATA_CHANNEL", ...).
/// </summary>
public readonly record struct Dim(long? Value, string? Param, string? Denotation = null)
{
    public static Dim Of(long value) => new(value, null);
    public static Dim Symbolic(string param) => new(null, param);
    public static Dim Unknown => new(null, null);

    public bool IsFixed => Value.HasValue;

    public override string ToString() => Value?.ToString() ?? Param ?? "?";

    public static implicit operator Dim(long value) => Of(value);
}

/// <summary>A tensor shape: an ordered list of dimensions. Two shapes are equal when all their dimensions are.</summary>
public sealed class Shape : IEquatable<Shape>
{
    private readonly Dim[] _dims;

    public Shape(IEnumerable<Dim> dims) => _dims = dims.ToArray();

    public static Shape Of(params long[] dims) => new(dims.Select(Dim.Of));

    public IReadOnlyList<Dim> Dims => _dims;
    public int Rank => _dims.Length;
    public Dim this[int axis] => _dims[axis];

    /// <summary>True when every dimension has a fixed size.</summary>
    public bool IsStatic => _dims.All(d => d.IsFixed);

    /// <summary>The fixed sizes, or null if any dimension is symbolic or unknown.</summary>
    public long[]? ToFixedDims() => IsStatic ? _dims.Select(d => d.Value!.Value).ToArray() : null;

    public bool Equals(Shape? other) => other is not null && _dims.AsSpan().SequenceEqual(other._dims);
    public override bool Equals(object? obj) => Equals(obj as Shape);
    public override int GetHashCode()
    {
        var hash = new HashCode();
        foreach (var d in _dims) hash.Add(d);
        return hash.ToHashCode();
    }

    public override string ToString() => "[" + string.Join(", ", _dims) + "]";
}

/// <summary>
/// The type of a value. Most values are tensors (<see cref="TensorType"/>); ONNX also has sequences, maps, optionals
/// and sparse tensors. Types this IR does not model are kept as <see cref="OpaqueType"/> so they survive a round trip.
/// </summary>
public abstract record OnnxType
{
    /// <summary>The optional type denotation ("IMAGE", "AUDIO", ...).</summary>
    public string? Denotation { get; init; }
}

/// <summary>A dense tensor: element type and, when known, its shape.</summary>
public sealed record TensorType(DataType ElementType, Shape? Shape) : OnnxType
{
    public override string ToString() => $"{ElementType}{Shape?.ToString() ?? "[?]"}";
}

/// <summary>A sparse tensor type.</summary>
public sealed record SparseTensorType(DataType ElementType, Shape? Shape) : OnnxType;

/// <summary>A sequence of values of one type.</summary>
public sealed record SequenceType(OnnxType? ElementType) : OnnxType;

/// <summary>A map from a scalar key type to a value type.</summary>
public sealed record MapType(DataType KeyType, OnnxType? ValueType) : OnnxType;

/// <summary>An optional value of the given type.</summary>
public sealed record OptionalType(OnnxType? ElementType) : OnnxType;

/// <summary>A type this IR does not model (e.g. an opaque type of an extension); kept as its serialized form.</summary>
public sealed record OpaqueType : OnnxType
{
    internal OpaqueType(byte[] serialized) => Serialized = serialized;

    internal byte[] Serialized { get; }

    public bool Equals(OpaqueType? other) => other is not null && Serialized.AsSpan().SequenceEqual(other.Serialized);
    public override int GetHashCode() => Serialized.Length;
}

/// <summary>An ordered key/value entry of metadata_props (saved to file, unlike analysis scratch).</summary>
public readonly record struct MetadataEntry(string Key, string Value);

internal static class Text
{
    /// <summary>Decodes ONNX string bytes (UTF-8) for display and for string attributes.</summary>
    public static string Utf8(ReadOnlySpan<byte> bytes) => Encoding.UTF8.GetString(bytes);
}
