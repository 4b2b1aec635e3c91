using System.Runtime.InteropServices;
using Google.Protobuf;
using Google.Protobuf.Collections;
using OnnxQuant.Frontend.Proto;

namespace OnnxQuant.Frontend;

/// <summary>
/// Converts the generated protobuf messages into the IR. Every field is checked as it is read, so a bad model fails
/// here with a <see cref="FrontendException"/> that names the place, never with an index or cast error later.
/// Embedded raw data is not copied: tensors keep the parsed buffer. External data is only located and opened.
/// </summary>
internal sealed class ProtoReader
{
    private readonly string? _baseDirectory;
    private readonly Dictionary<string, ExternalDataFile> _files = new(StringComparer.Ordinal);

    /// <param name="baseDirectory">The model's folder; null when the model came from memory (external data refused).</param>
    public ProtoReader(string? baseDirectory) =>
        _baseDirectory = baseDirectory is null ? null : PathSafety.RealPath(Path.GetFullPath(baseDirectory));

    /// <summary>A name scope: this graph's values, then the enclosing graph's.</summary>
    private sealed class Scope(Scope? outer)
    {
        public readonly Dictionary<string, Value> Values = new(StringComparer.Ordinal);
        public readonly Dictionary<string, Value> Undefined = new(StringComparer.Ordinal);
        public Scope? Outer { get; } = outer;

        public Value? Find(string name)
        {
            for (var s = this; s is not null; s = s.Outer)
                if (s.Values.TryGetValue(name, out var v)) return v;
            return null;
        }

        /// <summary>The value with this name, or one detached placeholder per undefined name (the validator reports it).</summary>
        public Value Resolve(string name)
        {
            if (Find(name) is { } v) return v;
            if (!Undefined.TryGetValue(name, out var u)) Undefined[name] = u = new Value(name);
            return u;
        }

        public void Define(Value v) => Values.TryAdd(v.Name, v);
    }

    public Model ReadModel(ModelProto p)
    {
        if (p.Graph is null)
            throw new FrontendException("the model has no graph (ModelProto.graph is missing)");
        var model = new Model(ReadGraph(p.Graph, null, "graph"))
        {
            IrVersion = p.IrVersion,
            ProducerName = p.ProducerName,
            ProducerVersion = p.ProducerVersion,
            Domain = p.Domain,
            ModelVersion = p.ModelVersion,
            DocString = p.DocString,
        };
        ReadOpsets(p.OpsetImport, model.OpsetImports, "the model");
        ReadMetadata(p.MetadataProps, model.MetadataProps);
        for (int i = 0; i < p.Functions.Count; i++)
            model.Functions.Add(ReadFunction(p.Functions[i], i));
        var extra = new ModelProto { Unknown = p.Unknown };
        extra.TrainingInfo.Add(p.TrainingInfo);
        extra.Configuration.Add(p.Configuration);
        model.Preserved = Serialize(extra);
        return model;
    }

    private static void ReadOpsets(RepeatedField<OperatorSetIdProto> protos, OpsetImports target, string where)
    {
        foreach (var o in protos)
            if (!target.TryAdd(o.Domain, o.Version))
                throw new FrontendException($"{where} imports domain '{o.Domain}' more than once");
    }

    private static void ReadMetadata(RepeatedField<StringStringEntryProto> protos, List<MetadataEntry> target)
    {
        foreach (var e in protos) target.Add(new MetadataEntry(e.Key, e.Value));
    }

    private Function ReadFunction(FunctionProto p, int index)
    {
        var where = $"function '{p.Domain}.{p.Name}' (#{index})";
        var scope = new Scope(null);
        var body = new Graph(p.Name);
        foreach (var name in p.Input)
        {
            var v = new Value(name);
            body.AddInput(v);
            scope.Define(v);
        }
        ReadNodes(p.Node, body, scope, where);
        foreach (var name in p.Output)
            body.AddOutput(scope.Resolve(name));
        foreach (var vi in p.ValueInfo)
        {
            var v = scope.Resolve(vi.Name);
            ApplyValueInfo(v, vi, where);
            body.AddValueInfo(v);
        }
        var f = new Function(p.Domain, p.Name, body) { Overload = p.Overload, DocString = p.DocString };
        ReadOpsets(p.OpsetImport, f.OpsetImports, where);
        f.AttributeNames.AddRange(p.Attribute);
        foreach (var a in p.AttributeProto)
            f.AttributeDefaults.Add(ReadAttribute(a, scope, where));
        ReadMetadata(p.MetadataProps, f.MetadataProps);
        f.Preserved = Serialize(new FunctionProto { Unknown = p.Unknown });
        return f;
    }

    private Graph ReadGraph(GraphProto p, Scope? outer, string where)
    {
        var graph = new Graph(p.Name) { DocString = p.DocString };
        where = $"{where} '{p.Name}'";
        var scope = new Scope(outer);
        foreach (var tp in p.Initializer)
        {
            var tensor = ReadTensor(tp, where);
            var v = new Value(tensor.Name, new TensorType(tensor.DataType, new Shape(tensor.Dims.Select(Dim.Of))));
            graph.AttachInitializer(v, tensor);
            scope.Define(v);
        }
        foreach (var sp in p.SparseInitializer)
        {
            var name = sp.Values?.Name ?? "";
            var v = new Value(name);
            graph.AttachSparseInitializer(v);
            scope.Define(v);
        }
        foreach (var vi in p.Input)
        {
            // An input may name an initializer (a default the caller can override): both are the same value.
            var v = scope.Values.TryGetValue(vi.Name, out var init) && init.IsInitializer ? init : new Value(vi.Name);
            ApplyValueInfo(v, vi, where);
            graph.AddInput(v);
            scope.Define(v);
        }
        ReadNodes(p.Node, graph, scope, where);
        foreach (var vi in p.Output)
        {
            var v = scope.Resolve(vi.Name);
            ApplyValueInfo(v, vi, where);
            graph.AddOutput(v);
        }
        foreach (var vi in p.ValueInfo)
        {
            var v = scope.Resolve(vi.Name);
            ApplyValueInfo(v, vi, where);
            graph.AddValueInfo(v);
        }
        ReadMetadata(p.MetadataProps, graph.MetadataProps);
        var extra = new GraphProto { Unknown = p.Unknown };
        extra.SparseInitializer.Add(p.SparseInitializer);
        extra.QuantizationAnnotation.Add(p.QuantizationAnnotation);
        graph.Preserved = Serialize(extra);
        return graph;
    }

    private void ReadNodes(RepeatedField<NodeProto> protos, Graph graph, Scope scope, string where)
    {
        // Outputs first, so inputs (and subgraphs) resolve whatever the order of the nodes in the file.
        var nodes = new List<Node>(protos.Count);
        foreach (var np in protos)
        {
            var node = new Node(np.OpType, [], np.Output, np.Domain, np.Name)
            {
                Overload = np.Overload,
                DocString = np.DocString,
            };
            ReadMetadata(np.MetadataProps, node.MetadataProps);
            var extra = new NodeProto { Unknown = np.Unknown };
            extra.DeviceConfigurations.Add(np.DeviceConfigurations);
            node.Preserved = Serialize(extra);
            graph.AddNode(node);
            foreach (var o in node.Outputs)
                if (!o.IsOmitted) scope.Define(o);
            nodes.Add(node);
        }
        for (int i = 0; i < nodes.Count; i++)
        {
            var node = nodes[i];
            foreach (var name in protos[i].Input)
                node.AppendInput(name.Length == 0 ? null : scope.Resolve(name));
            var nodeWhere = $"{where} > node {node.Describe()}";
            foreach (var ap in protos[i].Attribute)
            {
                var attribute = ReadAttribute(ap, scope, nodeWhere);
                if (node.GetAttribute(attribute.Name) is not null)
                    throw new FrontendException($"{nodeWhere} has attribute '{attribute.Name}' twice");
                node.SetAttribute(attribute);
            }
        }
    }

    private static void ApplyValueInfo(Value v, ValueInfoProto vi, string where)
    {
        if (vi.Type is { } t && v.FullType is null)
            v.FullType = ReadType(t, $"{where} > value '{vi.Name}'");
        if (vi.DocString.Length > 0 && v.DocString.Length == 0) v.DocString = vi.DocString;
        if (v.MetadataProps.Count == 0) ReadMetadata(vi.MetadataProps, v.MetadataProps);
    }

    internal static OnnxType? ReadType(TypeProto t, string where)
    {
        OnnxType? type = t.ValueCase switch
        {
            TypeProto.ValueOneofCase.TensorType => new TensorType(
                ElementType(t.TensorType.ElemType, where), ReadShape(t.TensorType.Shape)),
            TypeProto.ValueOneofCase.SparseTensorType => new SparseTensorType(
                ElementType(t.SparseTensorType.ElemType, where), ReadShape(t.SparseTensorType.Shape)),
            TypeProto.ValueOneofCase.SequenceType => new SequenceType(
                t.SequenceType.ElemType is { } e ? ReadType(e, where) : null),
            TypeProto.ValueOneofCase.MapType => new MapType(
                ElementType(t.MapType.KeyType, where), t.MapType.ValueType is { } mv ? ReadType(mv, where) : null),
            TypeProto.ValueOneofCase.OptionalType => new OptionalType(
                t.OptionalType.ElemType is { } oe ? ReadType(oe, where) : null),
            // A kind this schema does not know (e.g. an extension's opaque type) is kept as it was.
            _ => t.Unknown is not null ? new OpaqueType(t.ToByteArray()) : null,
        };
        if (type is not null && t.HasDenotation)
            type = type with { Denotation = t.Denotation };
        return type;
    }

    private static Shape? ReadShape(TensorShapeProto? s) =>
        s is null
            ? null
            : new Shape(s.Dim.Select(d => new Dim(
                d.ValueCase == TensorShapeProto.Types.Dimension.ValueOneofCase.DimValue ? d.DimValue : null,
                d.ValueCase == TensorShapeProto.Types.Dimension.ValueOneofCase.DimParam ? d.DimParam : null,
                d.HasDenotation ? d.Denotation : null)));

    private static DataType ElementType(int code, string where) =>
        Enum.IsDefined((DataType)code)
            ? (DataType)code
            : throw new FrontendException($"{where} has unknown element type {code}");

    private Attribute ReadAttribute(AttributeProto ap, Scope scope, string where)
    {
        where = $"{where} > attribute '{ap.Name}'";
        if (ap.Name.Length == 0)
            throw new FrontendException($"{where}: an attribute has no name");
        var kind = ap.HasType ? (AttributeKind)(int)ap.Type : InferKind(ap);
        if (kind == AttributeKind.Undefined && !ap.HasRefAttrName)
            throw new FrontendException($"{where} has no type and no value");
        Attribute attribute;
        if (ap.HasRefAttrName)
            attribute = Attribute.Opaque(ap.Name, kind, ap.RefAttrName);
        else
        {
            attribute = kind switch
            {
                AttributeKind.Float => Attribute.FromFloat(ap.Name, ap.F),
                AttributeKind.Int => Attribute.FromInt(ap.Name, ap.I),
                AttributeKind.String => Attribute.FromBytes(ap.Name, ap.S.ToByteArray()),
                AttributeKind.Tensor => Attribute.FromTensor(ap.Name,
                    ReadTensor(ap.T ?? throw new FrontendException($"{where} is a tensor attribute without a tensor"), where)),
                AttributeKind.Graph => Attribute.FromGraph(ap.Name,
                    ReadGraph(ap.G ?? throw new FrontendException($"{where} is a graph attribute without a graph"),
                        new Scope(scope), $"{where} > graph")),
                AttributeKind.Floats => Attribute.FromFloats(ap.Name, ap.Floats),
                AttributeKind.Ints => Attribute.FromInts(ap.Name, ap.Ints),
                AttributeKind.Strings => Attribute.FromByteStrings(ap.Name, ap.Strings.Select(s => s.ToByteArray())),
                AttributeKind.Tensors => Attribute.FromTensors(ap.Name, ap.Tensors.Select(t => ReadTensor(t, where))),
                AttributeKind.Graphs => Attribute.FromGraphs(ap.Name,
                    ap.Graphs.Select(g => ReadGraph(g, new Scope(scope), $"{where} > graph")).ToArray()),
                AttributeKind.SparseTensor or AttributeKind.SparseTensors or AttributeKind.TypeProto
                    or AttributeKind.TypeProtos => Attribute.Opaque(ap.Name, kind, null),
                _ => throw new FrontendException($"{where} has unknown attribute type {(int)kind}"),
            };
        }
        attribute.DocString = ap.DocString;
        var extra = new AttributeProto { Unknown = ap.Unknown, SparseTensor = ap.SparseTensor, Tp = ap.Tp };
        extra.SparseTensors.Add(ap.SparseTensors);
        extra.TypeProtos.Add(ap.TypeProtos);
        attribute.Preserved = Serialize(extra);
        return attribute;
    }

    /// <summary>Files written before the type field existed say the kind by which value is set.</summary>
    private static AttributeKind InferKind(AttributeProto ap) =>
        ap.HasF ? AttributeKind.Float
        : ap.HasI ? AttributeKind.Int
        : ap.HasS ? AttributeKind.String
        : ap.T is not null ? AttributeKind.Tensor
        : ap.G is not null ? AttributeKind.Graph
        : ap.Floats.Count > 0 ? AttributeKind.Floats
        : ap.Ints.Count > 0 ? AttributeKind.Ints
        : ap.Strings.Count > 0 ? AttributeKind.Strings
        : ap.Tensors.Count > 0 ? AttributeKind.Tensors
        : ap.Graphs.Count > 0 ? AttributeKind.Graphs
        : ap.SparseTensor is not null ? AttributeKind.SparseTensor
        : ap.Tp is not null ? AttributeKind.TypeProto
        : AttributeKind.Undefined;

    internal Tensor ReadTensor(TensorProto tp, string where)
    {
        var name = tp.Name;
        var label = $"tensor '{name}' ({where})";
        if (!Enum.IsDefined((DataType)tp.DataType) || tp.DataType == 0)
            throw new FrontendException($"{label} has unknown data type {tp.DataType}");
        var type = (DataType)tp.DataType;
        var dims = tp.Dims.ToArray();
        Tensor tensor;
        try
        {
            tensor = tp.DataLocation == TensorProto.Types.DataLocation.External
                ? ReadExternal(tp, type, dims, label)
                : type == DataType.String
                    ? ReadStrings(tp, dims, label)
                    : new Tensor(name, type, dims, EmbeddedData(tp, type, dims, label));
        }
        catch (FrontendException ex) when (!ex.Message.Contains(where, StringComparison.Ordinal))
        {
            throw new FrontendException($"{ex.Message} ({where})", ex);
        }
        tensor.DocString = tp.DocString;
        ReadMetadata(tp.MetadataProps, tensor.MetadataProps);
        var extra = new TensorProto { Unknown = tp.Unknown, Segment = tp.Segment };
        tensor.Preserved = Serialize(extra);
        return tensor;
    }

    private static Tensor ReadStrings(TensorProto tp, long[] dims, string label)
    {
        var count = Checked(dims, label);
        if (tp.StringData.Count != count)
            throw new FrontendException(
                $"{label} has {tp.StringData.Count} strings but dims {Tensor.Format(dims)} need {count}");
        return new Tensor(tp.Name, dims, tp.StringData.Select(s => s.ToByteArray()).ToArray());
    }

    private static long Checked(long[] dims, string label)
    {
        long count = 1;
        foreach (var d in dims)
        {
            if (d < 0) throw new FrontendException($"{label} has negative dimension {d} in {Tensor.Format(dims)}");
            if (d != 0 && count > long.MaxValue / 16 / d)
                throw new FrontendException($"{label} dims {Tensor.Format(dims)} are too large");
            count *= d;
        }
        return count;
    }

    /// <summary>The raw little-endian bytes of embedded data, converted from whichever typed field holds it.</summary>
    private static ReadOnlyMemory<byte> EmbeddedData(TensorProto tp, DataType type, long[] dims, string label)
    {
        var count = Checked(dims, label);
        var bytes = DataTypes.ByteCount(type, count);
        if (tp.HasRawData)
        {
            if (tp.RawData.Length != bytes)
                throw new FrontendException(
                    $"{label} has {tp.RawData.Length} bytes of raw data but {type} {Tensor.Format(dims)} needs {bytes}");
            return tp.RawData.Memory;
        }
        var complex = type is DataType.Complex64 or DataType.Complex128 ? 2 : 1;
        var bits = DataTypes.BitWidth(type);
        // Packed sub-byte types store one packed byte per int32 entry.
        var entries = DataTypes.IsSubByte(type) ? bytes : count * complex;
        (int have, string field) = type switch
        {
            DataType.Float or DataType.Complex64 => (tp.FloatData.Count, "float_data"),
            DataType.Double or DataType.Complex128 => (tp.DoubleData.Count, "double_data"),
            DataType.Int64 => (tp.Int64Data.Count, "int64_data"),
            DataType.UInt32 or DataType.UInt64 => (tp.Uint64Data.Count, "uint64_data"),
            _ => (tp.Int32Data.Count, "int32_data"),
        };
        if (have != entries)
        {
            if (have == 0 && count > 0)
                throw new FrontendException($"{label} has no data but {type} {Tensor.Format(dims)} needs {count} elements");
            throw new FrontendException($"{label} has {have} entries in {field} but {type} {Tensor.Format(dims)} needs {entries}");
        }
        var raw = new byte[bytes];
        var span = raw.AsSpan();
        switch (type)
        {
            case DataType.Float or DataType.Complex64:
                for (int i = 0; i < have; i++) MemoryMarshal.Write(span[(i * 4)..], tp.FloatData[i]);
                break;
            case DataType.Double or DataType.Complex128:
                for (int i = 0; i < have; i++) MemoryMarshal.Write(span[(i * 8)..], tp.DoubleData[i]);
                break;
            case DataType.Int64:
                for (int i = 0; i < have; i++) MemoryMarshal.Write(span[(i * 8)..], tp.Int64Data[i]);
                break;
            case DataType.UInt64:
                for (int i = 0; i < have; i++) MemoryMarshal.Write(span[(i * 8)..], tp.Uint64Data[i]);
                break;
            case DataType.UInt32:
                for (int i = 0; i < have; i++) MemoryMarshal.Write(span[(i * 4)..], (uint)tp.Uint64Data[i]);
                break;
            default:
                var width = DataTypes.IsSubByte(type) ? 1 : bits / 8;
                for (int i = 0; i < have; i++)
                {
                    var v = tp.Int32Data[i];
                    switch (width)
                    {
                        case 1: span[i] = (byte)v; break;
                        case 2: MemoryMarshal.Write(span[(i * 2)..], (ushort)v); break;
                        default: MemoryMarshal.Write(span[(i * 4)..], v); break;
                    }
                }
                break;
        }
        return raw;
    }

    private Tensor ReadExternal(TensorProto tp, DataType type, long[] dims, string label)
    {
        string? location = null;
        long offset = 0;
        long? length = null;
        foreach (var e in tp.ExternalData)
        {
            switch (e.Key)
            {
                case "location": location = e.Value; break;
                case "offset": offset = ParseLong(e.Value, "offset", label); break;
                case "length": length = ParseLong(e.Value, "length", label); break;
            }
        }
        if (string.IsNullOrEmpty(location))
            throw new FrontendException($"{label} is marked external but names no location");
        if (_baseDirectory is null)
            throw new FrontendException(
                $"{label} keeps its data in external file '{location}', but the model was loaded from memory: load it from its file");
        var expected = type == DataType.String
            ? throw new FrontendException($"{label}: string tensors cannot use external data")
            : DataTypes.ByteCount(type, Checked(dims, label));
        var len = length ?? expected;
        if (len != expected)
            throw new FrontendException($"{label} has external length {len} but {type} {Tensor.Format(dims)} needs {expected} bytes");
        var fullPath = PathSafety.ResolveInside(_baseDirectory, location, label);
        if (!_files.TryGetValue(fullPath, out var file))
            _files[fullPath] = file = ExternalDataFile.Open(_baseDirectory, fullPath, tp.Name);
        if (offset > file.Length || len > file.Length - offset)
            throw new FrontendException(
                $"{label} reads bytes {offset}..{offset + len} of '{location}', which has only {file.Length} bytes");
        return new Tensor(tp.Name, type, dims, new ExternalDataRef(file, location, offset, len));
    }

    private static long ParseLong(string text, string key, string label) =>
        long.TryParse(text, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var v)
            ? v
            : throw new FrontendException($"{label} has external data {key} '{text}', which is not a non-negative integer");

    private static byte[]? Serialize(IMessage extra) => extra.CalculateSize() == 0 ? null : extra.ToByteArray();
}
