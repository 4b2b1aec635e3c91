namespace OnnxQuant.Frontend;

/// <summary>A graph input or output as the summary shows it.</summary>
public sealed record IoSummary(string Name, string ElementType, IReadOnlyList<Dim>? Shape);

/// <summary>Initializer totals for one element type.</summary>
public sealed record ParameterSummary(DataType DataType, int Tensors, long Elements, long Bytes);

/// <summary>What `onnxquant inspect` reports about a model; built by <see cref="Of"/>.</summary>
public sealed record ModelSummary(
    long IrVersion,
    IReadOnlyList<OpsetImport> Opsets,
    string Producer,
    IReadOnlyList<IoSummary> Inputs,
    IReadOnlyList<IoSummary> Outputs,
    int TopLevelNodes,
    int AllNodes,
    int Subgraphs,
    int Functions,
    IReadOnlyList<KeyValuePair<string, int>> OpTypes,
    IReadOnlyList<ParameterSummary> Parameters)
{
    public long ParameterCount => Parameters.Sum(p => p.Elements);
    public long ParameterBytes => Parameters.Sum(p => p.Bytes);

    /// <summary>
    /// Summarizes a model. Op type counts include subgraphs and function bodies; parameters count the elements of
    /// every initializer (subgraphs included, sparse initializers excluded).
    /// </summary>
    public static ModelSummary Of(Model model)
    {
        var ops = new Dictionary<string, int>(StringComparer.Ordinal);
        var allGraphs = model.AllGraphs().ToList();
        var nodes = 0;
        foreach (var g in allGraphs)
            foreach (var n in g.Nodes)
            {
                nodes++;
                var key = n.Domain is "" or "ai.onnx" ? n.OpType : $"{n.Domain}.{n.OpType}";
                ops[key] = ops.GetValueOrDefault(key) + 1;
            }
        var parameters = allGraphs.SelectMany(g => g.Initializers)
            .Select(v => v.Initializer!)
            .GroupBy(t => t.DataType)
            .OrderBy(g => g.Key)
            .Select(g => new ParameterSummary(g.Key, g.Count(), g.Sum(t => t.ElementCount), g.Sum(t => t.ByteSize)))
            .ToList();
        return new ModelSummary(
            model.IrVersion,
            model.OpsetImports.ToList(),
            string.Join(" ", new[] { model.ProducerName, model.ProducerVersion }.Where(s => s.Length > 0)),
            model.Graph.Inputs.Where(v => !v.IsInitializer).Select(Io).ToList(),
            model.Graph.Outputs.Select(Io).ToList(),
            model.Graph.Nodes.Count,
            nodes,
            allGraphs.Count - 1 - model.Functions.Count,
            model.Functions.Count,
            ops.OrderByDescending(kv => kv.Value).ThenBy(kv => kv.Key, StringComparer.Ordinal).ToList(),
            parameters);
    }

    private static IoSummary Io(Value v) => v.FullType switch
    {
        TensorType t => new IoSummary(v.Name, TypeName(t.ElementType), t.Shape?.Dims),
        null => new IoSummary(v.Name, "unknown", null),
        var other => new IoSummary(v.Name, Describe(other), null),
    };

    /// <summary>ONNX's name of an element type: FLOAT, FLOAT16, INT4, FLOAT8E4M3FN, ...</summary>
    public static string TypeName(DataType t) => t.ToString().ToUpperInvariant();

    /// <summary>A short description of any type: FLOAT, seq(FLOAT), map(INT64,FLOAT), optional(...).</summary>
    public static string Describe(OnnxType? type) => type switch
    {
        null => "?",
        TensorType t => TypeName(t.ElementType),
        SparseTensorType s => $"sparse({TypeName(s.ElementType)})",
        SequenceType s => $"seq({Describe(s.ElementType)})",
        MapType m => $"map({TypeName(m.KeyType)},{Describe(m.ValueType)})",
        OptionalType o => $"optional({Describe(o.ElementType)})",
        _ => "opaque",
    };
}
