using System.Globalization;
using Google.Protobuf;
using OnnxQuant.Frontend.Proto;

namespace OnnxQuant.Frontend;

/// <summary>Where the writer put a tensor's data in the external data file.</summary>
internal readonly record struct ExternalPlacement(string Location, long Offset, long Length);

/// <summary>
/// Converts the IR into the generated protobuf messages. Numeric data is always written as raw_data, wrapping the
/// tensor's buffer instead of copying it. Fields the reader kept in serialized form are merged back. The output is a
/// function of the IR alone, so identical models give identical bytes.
/// </summary>
internal sealed class ProtoWriter
{
    private readonly Func<Tensor, ExternalPlacement?>? _placeExternal;

    /// <param name="placeExternal">Decides for each initializer whether its data goes to the external file (and
    /// writes it there); null keeps everything embedded.</param>
    public ProtoWriter(Func<Tensor, ExternalPlacement?>? placeExternal = null) => _placeExternal = placeExternal;

    public ModelProto WriteModel(Model m)
    {
        var p = new ModelProto { IrVersion = m.IrVersion };
        if (m.ProducerName.Length > 0) p.ProducerName = m.ProducerName;
        if (m.ProducerVersion.Length > 0) p.ProducerVersion = m.ProducerVersion;
        if (m.Domain.Length > 0) p.Domain = m.Domain;
        if (m.ModelVersion != 0) p.ModelVersion = m.ModelVersion;
        if (m.DocString.Length > 0) p.DocString = m.DocString;
        p.Graph = WriteGraph(m.Graph);
        foreach (var o in m.OpsetImports) p.OpsetImport.Add(new OperatorSetIdProto { Domain = o.Domain, Version = o.Version });
        foreach (var e in m.MetadataProps) p.MetadataProps.Add(Entry(e));
        foreach (var f in m.Functions) p.Functions.Add(WriteFunction(f));
        Merge(p, m.Preserved);
        return p;
    }

    private static StringStringEntryProto Entry(MetadataEntry e) => new() { Key = e.Key, Value = e.Value };

    private FunctionProto WriteFunction(Function f)
    {
        var p = new FunctionProto { Name = f.Name, Domain = f.Domain };
        if (f.Overload.Length > 0) p.Overload = f.Overload;
        if (f.DocString.Length > 0) p.DocString = f.DocString;
        p.Input.Add(f.Body.Inputs.Select(v => v.Name));
        p.Output.Add(f.Body.Outputs.Select(v => v.Name));
        p.Attribute.Add(f.AttributeNames);
        foreach (var a in f.AttributeDefaults) p.AttributeProto.Add(WriteAttribute(a));
        foreach (var n in f.Body.Nodes) p.Node.Add(WriteNode(n));
        foreach (var o in f.OpsetImports) p.OpsetImport.Add(new OperatorSetIdProto { Domain = o.Domain, Version = o.Version });
        foreach (var v in f.Body.ValueInfo) p.ValueInfo.Add(WriteValueInfo(v));
        foreach (var e in f.MetadataProps) p.MetadataProps.Add(Entry(e));
        Merge(p, f.Preserved);
        return p;
    }

    private GraphProto WriteGraph(Graph g)
    {
        var p = new GraphProto();
        if (g.Name.Length > 0) p.Name = g.Name;
        if (g.DocString.Length > 0) p.DocString = g.DocString;
        foreach (var n in g.Nodes) p.Node.Add(WriteNode(n));
        foreach (var v in g.Initializers) p.Initializer.Add(WriteTensor(v.Initializer!, external: true));
        foreach (var v in g.Inputs) p.Input.Add(WriteValueInfo(v));
        foreach (var v in g.Outputs) p.Output.Add(WriteValueInfo(v));
        // The listed value_info entries first, in their order, then types that edits gave to other node outputs.
        var listed = new HashSet<Value>(g.ValueInfo, ReferenceEqualityComparer.Instance);
        foreach (var v in g.ValueInfo) p.ValueInfo.Add(WriteValueInfo(v));
        foreach (var n in g.Nodes)
            foreach (var o in n.Outputs)
                if (o.FullType is not null && !o.IsOmitted && !o.IsGraphOutput && !listed.Contains(o))
                    p.ValueInfo.Add(WriteValueInfo(o));
        foreach (var e in g.MetadataProps) p.MetadataProps.Add(Entry(e));
        Merge(p, g.Preserved);
        return p;
    }

    private NodeProto WriteNode(Node n)
    {
        var p = new NodeProto { OpType = n.OpType };
        p.Input.Add(n.Inputs.Select(v => v?.Name ?? ""));
        p.Output.Add(n.Outputs.Select(v => v.Name));
        if (n.Name.Length > 0) p.Name = n.Name;
        if (n.Domain.Length > 0) p.Domain = n.Domain;
        if (n.Overload.Length > 0) p.Overload = n.Overload;
        if (n.DocString.Length > 0) p.DocString = n.DocString;
        foreach (var a in n.Attributes) p.Attribute.Add(WriteAttribute(a));
        foreach (var e in n.MetadataProps) p.MetadataProps.Add(Entry(e));
        Merge(p, n.Preserved);
        return p;
    }

    private AttributeProto WriteAttribute(Attribute a)
    {
        var p = new AttributeProto { Name = a.Name, Type = (AttributeProto.Types.AttributeType)(int)a.Kind };
        if (a.DocString.Length > 0) p.DocString = a.DocString;
        if (a.RefAttrName is { } r)
            p.RefAttrName = r;
        else
        {
            switch (a.RawValue)
            {
                case float f: p.F = f; break;
                case long i: p.I = i; break;
                case byte[] s: p.S = ByteString.CopyFrom(s); break;
                case Tensor t: p.T = WriteTensor(t, external: false); break;
                case Graph g: p.G = WriteGraph(g); break;
                case float[] fs: p.Floats.Add(fs); break;
                case long[] ints: p.Ints.Add(ints); break;
                case byte[][] ss: p.Strings.Add(ss.Select(ByteString.CopyFrom)); break;
                case Tensor[] ts: p.Tensors.Add(ts.Select(t => WriteTensor(t, external: false))); break;
                case Graph[] gs: p.Graphs.Add(gs.Select(WriteGraph)); break;
            }
        }
        Merge(p, a.Preserved);
        return p;
    }

    private TensorProto WriteTensor(Tensor t, bool external)
    {
        var p = new TensorProto { DataType = (int)t.DataType };
        p.Dims.Add(t.Dims);
        if (t.Name.Length > 0) p.Name = t.Name;
        if (t.DocString.Length > 0) p.DocString = t.DocString;
        if (t.DataType == DataType.String)
            p.StringData.Add(t.Strings.Select(ByteString.CopyFrom));
        else if (external && _placeExternal?.Invoke(t) is { } place)
        {
            p.DataLocation = TensorProto.Types.DataLocation.External;
            p.ExternalData.Add(new StringStringEntryProto { Key = "location", Value = place.Location });
            p.ExternalData.Add(new StringStringEntryProto { Key = "offset", Value = place.Offset.ToString(CultureInfo.InvariantCulture) });
            p.ExternalData.Add(new StringStringEntryProto { Key = "length", Value = place.Length.ToString(CultureInfo.InvariantCulture) });
        }
        else
            p.RawData = UnsafeByteOperations.UnsafeWrap(t.RawData);
        foreach (var e in t.MetadataProps) p.MetadataProps.Add(Entry(e));
        Merge(p, t.Preserved);
        return p;
    }

    private static ValueInfoProto WriteValueInfo(Value v)
    {
        var p = new ValueInfoProto { Name = v.Name };
        if (v.FullType is { } t) p.Type = WriteType(t);
        if (v.DocString.Length > 0) p.DocString = v.DocString;
        foreach (var e in v.MetadataProps) p.MetadataProps.Add(Entry(e));
        return p;
    }

    internal static TypeProto WriteType(OnnxType type)
    {
        if (type is OpaqueType opaque)
            return TypeProto.Parser.ParseFrom(opaque.Serialized);
        var p = new TypeProto();
        switch (type)
        {
            case TensorType t:
                p.TensorType = new TypeProto.Types.Tensor { ElemType = (int)t.ElementType };
                if (t.Shape is { } s) p.TensorType.Shape = WriteShape(s);
                break;
            case SparseTensorType st:
                p.SparseTensorType = new TypeProto.Types.SparseTensor { ElemType = (int)st.ElementType };
                if (st.Shape is { } ss) p.SparseTensorType.Shape = WriteShape(ss);
                break;
            case SequenceType q:
                p.SequenceType = new TypeProto.Types.Sequence();
                if (q.ElementType is { } qe) p.SequenceType.ElemType = WriteType(qe);
                break;
            case MapType m:
                p.MapType = new TypeProto.Types.Map { KeyType = (int)m.KeyType };
                if (m.ValueType is { } mv) p.MapType.ValueType = WriteType(mv);
                break;
            case OptionalType o:
                p.OptionalType = new TypeProto.Types.Optional();
                if (o.ElementType is { } oe) p.OptionalType.ElemType = WriteType(oe);
                break;
        }
        if (type.Denotation is { } d) p.Denotation = d;
        return p;
    }

    private static TensorShapeProto WriteShape(Shape s)
    {
        var p = new TensorShapeProto();
        foreach (var d in s.Dims)
        {
            var dp = new TensorShapeProto.Types.Dimension();
            if (d.Value is { } v) dp.DimValue = v;
            else if (d.Param is { } name) dp.DimParam = name;
            if (d.Denotation is { } den) dp.Denotation = den;
            p.Dim.Add(dp);
        }
        return p;
    }

    private static void Merge(IMessage message, byte[]? preserved)
    {
        if (preserved is not null) message.MergeFrom(preserved);
    }
}
