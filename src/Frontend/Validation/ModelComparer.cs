namespace OnnxQuant.Frontend;

/// <summary>
/// Structural comparison of two models: metadata, opsets, every graph (nodes with their attributes in order, inputs,
/// outputs, value types, initializers bit for bit) and functions. Used to check that a round trip changed nothing.
/// </summary>
public static class ModelComparer
{
    /// <summary>A description of the first difference, or null when the models are structurally equal.</summary>
    public static string? FindDifference(Model a, Model b)
    {
        if (a.IrVersion != b.IrVersion) return $"IR version {a.IrVersion} vs {b.IrVersion}";
        if (!a.OpsetImports.SequenceEqual(b.OpsetImports)) return $"opsets [{a.OpsetImports}] vs [{b.OpsetImports}]";
        if ((a.ProducerName, a.ProducerVersion, a.Domain, a.ModelVersion, a.DocString) !=
            (b.ProducerName, b.ProducerVersion, b.Domain, b.ModelVersion, b.DocString))
            return "model metadata differs";
        if (!a.MetadataProps.SequenceEqual(b.MetadataProps)) return "model metadata_props differ";
        if (!Same(a.Preserved, b.Preserved)) return "preserved model fields differ";
        if (Graph(a.Graph, b.Graph, "graph") is { } d) return d;
        if (a.Functions.Count != b.Functions.Count) return $"{a.Functions.Count} vs {b.Functions.Count} functions";
        for (int i = 0; i < a.Functions.Count; i++)
        {
            var (fa, fb) = (a.Functions[i], b.Functions[i]);
            var w = $"function '{fa.Name}'";
            if ((fa.Domain, fa.Name, fa.Overload, fa.DocString) != (fb.Domain, fb.Name, fb.Overload, fb.DocString))
                return $"{w}: header differs";
            if (!fa.OpsetImports.SequenceEqual(fb.OpsetImports) || !fa.AttributeNames.SequenceEqual(fb.AttributeNames))
                return $"{w}: opsets or attribute names differ";
            if (Attributes(fa.AttributeDefaults, fb.AttributeDefaults, w) is { } ad) return ad;
            if (Graph(fa.Body, fb.Body, w) is { } fd) return fd;
        }
        return null;
    }

    private static bool Same(byte[]? x, byte[]? y) => (x ?? []).AsSpan().SequenceEqual(y ?? []);

    private static string? Values(IReadOnlyList<Value> x, IReadOnlyList<Value> y, string what)
    {
        if (x.Count != y.Count) return $"{what}: {x.Count} vs {y.Count}";
        for (int i = 0; i < x.Count; i++)
        {
            if (x[i].Name != y[i].Name) return $"{what} {i}: '{x[i].Name}' vs '{y[i].Name}'";
            if (!Equals(x[i].FullType, y[i].FullType)) return $"{what} '{x[i].Name}': type {x[i].FullType} vs {y[i].FullType}";
        }
        return null;
    }

    private static string? Graph(Graph a, Graph b, string where)
    {
        where = $"{where} '{a.Name}'";
        if (a.Name != b.Name || a.DocString != b.DocString) return $"{where}: name or doc_string differ";
        if (!Same(a.Preserved, b.Preserved)) return $"{where}: preserved fields differ";
        if (!a.MetadataProps.SequenceEqual(b.MetadataProps)) return $"{where}: metadata_props differ";
        if (Values(a.Inputs, b.Inputs, $"{where} input") is { } d1) return d1;
        if (Values(a.Outputs, b.Outputs, $"{where} output") is { } d2) return d2;
        if (Values(a.Initializers, b.Initializers, $"{where} initializer") is { } d3) return d3;
        for (int i = 0; i < a.Initializers.Count; i++)
            if (Tensor(a.Initializers[i].Initializer!, b.Initializers[i].Initializer!, where) is { } dt) return dt;
        var typesA = a.ValueInfo.Select(v => (v.Name, v.FullType)).ToList();
        var typesB = b.ValueInfo.Select(v => (v.Name, v.FullType)).ToList();
        if (!typesA.SequenceEqual(typesB)) return $"{where}: value_info differs";
        if (a.Nodes.Count != b.Nodes.Count) return $"{where}: {a.Nodes.Count} vs {b.Nodes.Count} nodes";
        for (int i = 0; i < a.Nodes.Count; i++)
        {
            var (na, nb) = (a.Nodes[i], b.Nodes[i]);
            var w = $"{where} node {i} {na.Describe()}";
            if ((na.OpType, na.Domain, na.Name, na.Overload, na.DocString) != (nb.OpType, nb.Domain, nb.Name, nb.Overload, nb.DocString))
                return $"{w}: header differs from {nb.Describe()}";
            if (!na.Inputs.Select(v => v?.Name).SequenceEqual(nb.Inputs.Select(v => v?.Name))) return $"{w}: inputs differ";
            if (!na.Outputs.Select(v => v.Name).SequenceEqual(nb.Outputs.Select(v => v.Name))) return $"{w}: outputs differ";
            if (!na.MetadataProps.SequenceEqual(nb.MetadataProps) || !Same(na.Preserved, nb.Preserved)) return $"{w}: metadata differs";
            if (Attributes(na.Attributes, nb.Attributes, w) is { } da) return da;
        }
        return null;
    }

    private static string? Attributes(IReadOnlyList<Attribute> x, IReadOnlyList<Attribute> y, string where)
    {
        if (x.Count != y.Count) return $"{where}: {x.Count} vs {y.Count} attributes";
        for (int k = 0; k < x.Count; k++)
        {
            var (a, b) = (x[k], y[k]);
            var w = $"{where} attribute '{a.Name}'";
            if (a.Name != b.Name || a.Kind != b.Kind || a.RefAttrName != b.RefAttrName || a.DocString != b.DocString)
                return $"{w}: name, kind or reference differ";
            if (!Same(a.Preserved, b.Preserved)) return $"{w}: preserved fields differ";
            var same = (a.RawValue, b.RawValue) switch
            {
                (float f, float g) => BitConverter.SingleToInt32Bits(f) == BitConverter.SingleToInt32Bits(g),
                (long i, long j) => i == j,
                (byte[] s, byte[] t) => s.AsSpan().SequenceEqual(t),
                (float[] fs, float[] gs) => fs.Select(BitConverter.SingleToInt32Bits).SequenceEqual(gs.Select(BitConverter.SingleToInt32Bits)),
                (long[] i, long[] j) => i.SequenceEqual(j),
                (byte[][] s, byte[][] t) => s.Length == t.Length && s.Zip(t).All(p => p.First.AsSpan().SequenceEqual(p.Second)),
                (Tensor s, Tensor t) => Tensor(s, t, w) is null,
                (Tensor[] s, Tensor[] t) => s.Length == t.Length && s.Zip(t).All(p => Tensor(p.First, p.Second, w) is null),
                (Graph g, Graph h) => Graph(g, h, w) is null,
                (Graph[] g, Graph[] h) => g.Length == h.Length && g.Zip(h).All(p => Graph(p.First, p.Second, w) is null),
                (null, null) => true,
                _ => false,
            };
            if (!same)
            {
                var inner = (a.RawValue, b.RawValue) switch
                {
                    (Graph g, Graph h) => Graph(g, h, w),
                    (Tensor s, Tensor t) => Tensor(s, t, w),
                    _ => null,
                };
                return inner ?? $"{w}: values differ";
            }
        }
        return null;
    }

    private static string? Tensor(Tensor a, Tensor b, string where)
    {
        var w = $"{where} tensor '{a.Name}'";
        if (a.Name != b.Name || a.DataType != b.DataType || !a.Dims.SequenceEqual(b.Dims)) return $"{w}: name, type or dims differ";
        if (a.DocString != b.DocString || !a.MetadataProps.SequenceEqual(b.MetadataProps) || !Same(a.Preserved, b.Preserved))
            return $"{w}: metadata differs";
        if (a.DataType == DataType.String)
            return a.Strings.Count == b.Strings.Count && a.Strings.Zip(b.Strings).All(p => p.First.AsSpan().SequenceEqual(p.Second))
                ? null : $"{w}: strings differ";
        return StreamsEqual(a, b) ? null : $"{w}: data differs";
    }

    private static bool StreamsEqual(Tensor a, Tensor b)
    {
        if (a.ByteSize != b.ByteSize) return false;
        if (a.IsLoaded && b.IsLoaded) return a.RawData.Span.SequenceEqual(b.RawData.Span);
        // Compare unloaded external data chunk by chunk so large tensors are never held whole.
        return ChunkCompare.Equal(new ChunkCompare(a), new ChunkCompare(b));
    }

    private sealed class ChunkCompare
    {
        private readonly Tensor _t;
        public ChunkCompare(Tensor t) => _t = t;

        public static bool Equal(ChunkCompare x, ChunkCompare y)
        {
            if (x._t.IsLoaded) return y.Matches(x._t.RawData);
            if (y._t.IsLoaded) return x.Matches(y._t.RawData);
            var (ex, ey) = (x._t.External!, y._t.External!);
            const int chunk = 1 << 20;
            var ba = new byte[chunk];
            var bb = new byte[chunk];
            for (long done = 0; done < ex.Length; done += chunk)
            {
                var n = (int)Math.Min(chunk, ex.Length - done);
                RandomAccess.Read(ex.File.Handle, ba.AsSpan(0, n), ex.Offset + done);
                RandomAccess.Read(ey.File.Handle, bb.AsSpan(0, n), ey.Offset + done);
                if (!ba.AsSpan(0, n).SequenceEqual(bb.AsSpan(0, n))) return false;
            }
            return true;
        }

        private bool Matches(ReadOnlyMemory<byte> other)
        {
            var ext = _t.External!;
            var buffer = new byte[1 << 20];
            for (long done = 0; done < ext.Length; done += buffer.Length)
            {
                var n = (int)Math.Min(buffer.Length, ext.Length - done);
                RandomAccess.Read(ext.File.Handle, buffer.AsSpan(0, n), ext.Offset + done);
                if (!buffer.AsSpan(0, n).SequenceEqual(other.Span.Slice((int)done, n))) return false;
            }
            return true;
        }
    }
}
