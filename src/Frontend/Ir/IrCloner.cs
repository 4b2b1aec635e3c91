namespace OnnxQuant.Frontend;

/// <summary>Deep copy of a model: every graph, node and value is new, links are rebuilt the same way.</summary>
internal sealed class IrCloner
{
    private readonly Dictionary<Value, Value> _map = new(ReferenceEqualityComparer.Instance);

    public static Model Clone(Model m)
    {
        var c = new IrCloner();
        var copy = new Model(c.CloneGraph(m.Graph))
        {
            IrVersion = m.IrVersion,
            ProducerName = m.ProducerName,
            ProducerVersion = m.ProducerVersion,
            Domain = m.Domain,
            ModelVersion = m.ModelVersion,
            DocString = m.DocString,
            Preserved = m.Preserved,
        };
        foreach (var o in m.OpsetImports) copy.OpsetImports.TryAdd(o.Domain, o.Version);
        copy.MetadataProps.AddRange(m.MetadataProps);
        foreach (var f in m.Functions)
        {
            var fc = new Function(f.Domain, f.Name, c.CloneGraph(f.Body))
            {
                Overload = f.Overload,
                DocString = f.DocString,
                Preserved = f.Preserved,
            };
            foreach (var o in f.OpsetImports) fc.OpsetImports.TryAdd(o.Domain, o.Version);
            fc.AttributeNames.AddRange(f.AttributeNames);
            fc.AttributeDefaults.AddRange(f.AttributeDefaults.Select(c.CloneAttribute));
            fc.MetadataProps.AddRange(f.MetadataProps);
            copy.Functions.Add(fc);
        }
        return copy;
    }

    private Value CopyValue(Value v)
    {
        var c = new Value(v.Name, v.FullType) { DocString = v.DocString };
        c.MetadataProps.AddRange(v.MetadataProps);
        return c;
    }

    private Value Map(Value v)
    {
        if (!_map.TryGetValue(v, out var c))
            _map[v] = c = CopyValue(v);
        return c;
    }

    private Graph CloneGraph(Graph g)
    {
        var c = new Graph(g.Name) { DocString = g.DocString, Preserved = g.Preserved };
        c.MetadataProps.AddRange(g.MetadataProps);
        foreach (var v in g.Initializers)
            c.AttachInitializer(Map(v), v.Initializer!.Clone());
        foreach (var v in g.SparseInitializers)
            c.AttachSparseInitializer(Map(v));
        foreach (var v in g.Inputs)
            c.AddInput(Map(v));
        foreach (var n in g.Nodes)
        {
            var nc = new Node(n.OpType, [], n.Outputs.Select(o => o.Name), n.Domain, n.Name)
            {
                Overload = n.Overload,
                DocString = n.DocString,
                Preserved = n.Preserved,
            };
            nc.MetadataProps.AddRange(n.MetadataProps);
            for (int i = 0; i < n.Outputs.Count; i++)
            {
                nc.Outputs[i].FullType = n.Outputs[i].FullType;
                nc.Outputs[i].DocString = n.Outputs[i].DocString;
                nc.Outputs[i].MetadataProps.AddRange(n.Outputs[i].MetadataProps);
                _map[n.Outputs[i]] = nc.Outputs[i];
            }
            c.AddNode(nc);
        }
        for (int k = 0; k < g.Nodes.Count; k++)
        {
            var n = g.Nodes[k];
            var nc = c.Nodes[k];
            foreach (var input in n.Inputs)
                nc.AppendInput(input is null ? null : Map(input));
            foreach (var a in n.Attributes)
                nc.SetAttribute(CloneAttribute(a));
        }
        foreach (var v in g.Outputs) c.AddOutput(Map(v));
        foreach (var v in g.ValueInfo) c.AddValueInfo(Map(v));
        return c;
    }

    private Attribute CloneAttribute(Attribute a)
    {
        Attribute c = a.RefAttrName is not null || a.RawValue is null
            ? Attribute.Opaque(a.Name, a.Kind, a.RefAttrName)
            : a.RawValue switch
            {
                float f => Attribute.FromFloat(a.Name, f),
                long i => Attribute.FromInt(a.Name, i),
                byte[] s => Attribute.FromBytes(a.Name, s),
                Tensor t => Attribute.FromTensor(a.Name, t.Clone()),
                Graph g => Attribute.FromGraph(a.Name, CloneGraph(g)),
                float[] fs => Attribute.FromFloats(a.Name, fs),
                long[] ints => Attribute.FromInts(a.Name, ints),
                byte[][] ss => Attribute.FromByteStrings(a.Name, ss),
                Tensor[] ts => Attribute.FromTensors(a.Name, ts.Select(t => t.Clone())),
                Graph[] gs => Attribute.FromGraphs(a.Name, gs.Select(CloneGraph).ToArray()),
                _ => throw new InvalidOperationException($"attribute '{a.Name}' holds an unexpected value"),
            };
        c.DocString = a.DocString;
        c.Preserved = a.Preserved;
        return c;
    }
}
