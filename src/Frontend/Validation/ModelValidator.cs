namespace OnnxQuant.Frontend;

public enum IssueSeverity
{
    /// <summary>The model is not usable as it is (loading refuses it).</summary>
    Error,
    /// <summary>Suspicious but loadable (e.g. nodes not in topological order).</summary>
    Warning,
}

/// <summary>One problem: what is wrong and where (graph, node, tensor).</summary>
public sealed record ValidationIssue(IssueSeverity Severity, string Where, string Message)
{
    public override string ToString() => $"{Where}: {Message}";
}

/// <summary>The outcome of <see cref="ModelValidator.Validate"/>.</summary>
public sealed record ValidationResult(IReadOnlyList<ValidationIssue> Issues)
{
    public IEnumerable<ValidationIssue> Errors => Issues.Where(i => i.Severity == IssueSeverity.Error);
    public IEnumerable<ValidationIssue> Warnings => Issues.Where(i => i.Severity == IssueSeverity.Warning);
    public bool IsValid => !Errors.Any();

    /// <summary>Throws a <see cref="FrontendException"/> naming the first error (and how many more there are).</summary>
    public void ThrowIfInvalid(string source)
    {
        var errors = Errors.ToList();
        if (errors.Count == 0) return;
        var more = errors.Count > 1 ? $" (and {errors.Count - 1} more problem{(errors.Count > 2 ? "s" : "")})" : "";
        throw new FrontendException($"'{source}': {errors[0]}{more}");
    }
}

/// <summary>
/// Checks a model for the problems that make it unusable: IR version below 1, missing opset imports, cycles,
/// inputs nobody defines, names defined twice, tensor data whose size does not match its dims, and external data
/// outside the model's folder. Rules of the ONNX specification that ONNX Runtime does not enforce are warnings, so
/// every model the runtime runs loads: an IR version newer than this tool knows, initializers that an IR version
/// below 4 should also list as graph inputs, nodes out of topological order.
/// </summary>
public static class ModelValidator
{
    public static ValidationResult Validate(Model model)
    {
        var issues = new List<ValidationIssue>();
        void Error(string where, string message) => issues.Add(new(IssueSeverity.Error, where, message));

        if (model.IrVersion < 1)
            Error("model", $"IR version {model.IrVersion} is not supported (this tool reads 1 to {ModelIO.NewestIrVersion})");
        else if (model.IrVersion > ModelIO.NewestIrVersion)
            issues.Add(new(IssueSeverity.Warning, "model",
                $"IR version {model.IrVersion} is newer than this tool knows ({ModelIO.NewestIrVersion}); fields it does not know are kept as they are"));
        if (model.IrVersion >= 3 && model.OpsetImports.Count == 0)
            Error("model", "the model imports no operator set (opset_import is empty)");

        var functionKeys = new HashSet<(string, string, string)>();
        foreach (var f in model.Functions)
            if (!functionKeys.Add((f.Domain, f.Name, f.Overload)))
                Error($"function '{f.Domain}.{f.Name}'", "is defined twice");

        CheckGraph(model, model.Graph, $"graph '{model.Graph.Name}'", model.OpsetImports, functionKeys, issues);
        foreach (var f in model.Functions)
            CheckGraph(model, f.Body, $"function '{f.Domain}.{f.Name}'", f.OpsetImports.Count > 0 ? f.OpsetImports : model.OpsetImports,
                functionKeys, issues, isFunction: true);
        return new ValidationResult(issues);
    }

    private static void CheckGraph(Model model, Graph graph, string where, OpsetImports opsets,
        HashSet<(string, string, string)> functions, List<ValidationIssue> issues, bool isFunction = false)
    {
        void Error(string w, string message) => issues.Add(new(IssueSeverity.Error, w, message));

        // Names defined twice in this graph (an initializer listed as input is one value, not two).
        var defined = new Dictionary<string, Value>(StringComparer.Ordinal);
        void Define(Value v, string what)
        {
            if (v.IsOmitted) return;
            if (defined.TryGetValue(v.Name, out var other) && !ReferenceEquals(other, v))
                Error(where, $"name '{v.Name}' is defined twice ({what})");
            else
                defined[v.Name] = v;
        }
        foreach (var v in graph.Inputs)
        {
            if (v.Name.Length == 0) Error(where, "a graph input has no name");
            Define(v, "graph input");
        }
        foreach (var v in graph.Initializers) Define(v, "initializer");
        foreach (var v in graph.SparseInitializers) Define(v, "sparse initializer");
        foreach (var n in graph.Nodes)
            foreach (var o in n.Outputs)
                Define(o, $"output of node {n.Describe()}");

        if (model.IrVersion is > 0 and < 4 && !isFunction && graph.ParentNode is null)
            foreach (var v in graph.Initializers)
                if (!v.IsGraphInput)
                {
                    // ONNX Runtime runs such files; counted once rather than listed per initializer.
                    var missing = graph.Initializers.Count(i => !i.IsGraphInput);
                    issues.Add(new(IssueSeverity.Warning, where,
                        $"{missing} initializer(s) (first '{v.Name}') are not listed among the graph inputs, which IR version {model.IrVersion} requires; ONNX Runtime runs the model all the same, and the output is written at a current IR version"));
                    break;
                }

        foreach (var v in graph.Initializers)
            CheckTensor(v.Initializer!, $"{where} > initializer '{v.Name}'", issues);

        foreach (var n in graph.Nodes)
        {
            var nodeWhere = $"{where} > node {n.Describe()}";
            if (n.OpType.Length == 0) Error(nodeWhere, "has no op_type");
            if (model.IrVersion >= 3 && !opsets.Contains(n.Domain) && !functions.Any(f => f.Item1 == n.Domain && f.Item2 == n.OpType))
                Error(nodeWhere, $"uses domain '{(n.Domain.Length == 0 ? "ai.onnx" : n.Domain)}', which the model does not import");
            for (int i = 0; i < n.Inputs.Count; i++)
                if (n.Inputs[i] is { } v && !IsVisible(v, graph))
                    Error(nodeWhere, $"input {i} reads '{v.Name}', which no node, graph input or initializer in scope defines");
            foreach (var a in n.Attributes)
            {
                foreach (var t in a.TensorValues)
                    CheckTensor(t, $"{nodeWhere} > attribute '{a.Name}'", issues);
                foreach (var g in a.Subgraphs)
                    CheckGraph(model, g, $"{nodeWhere} > attribute '{a.Name}' > graph '{g.Name}'", opsets, functions, issues, isFunction);
            }
        }
        foreach (var v in graph.Outputs)
            if (!IsVisible(v, graph))
                Error(where, $"graph output '{v.Name}' is not defined by any node, graph input or initializer");

        var order = graph.TopologicalOrder(out var stuck);
        if (stuck is not null)
            Error(where, $"the graph has a cycle through node {stuck.Describe()}");
        else
        {
            var position = new Dictionary<Node, int>(ReferenceEqualityComparer.Instance);
            for (int i = 0; i < graph.Nodes.Count; i++) position[graph.Nodes[i]] = i;
            foreach (var n in graph.Nodes)
                foreach (var v in Graph.Dependencies(n))
                    if (v.Producer is { } p && p.Graph == graph && position[p] > position[n])
                    {
                        issues.Add(new(IssueSeverity.Warning, $"{where} > node {n.Describe()}",
                            $"reads '{v.Name}' before node {p.Describe()} computes it (nodes are not in topological order)"));
                        return;
                    }
        }
        _ = order;
    }

    /// <summary>True when <paramref name="v"/> is defined in <paramref name="graph"/> or a graph around it.</summary>
    private static bool IsVisible(Value v, Graph graph)
    {
        var definedBy = v.Producer is { } p ? p.Graph : (v.IsGraphInput || v.IsInitializer || v.IsSparseInitializer ? v.Graph : null);
        if (definedBy is null) return false;
        for (var g = graph; g is not null; g = g.OuterGraph)
            if (g == definedBy) return true;
        return false;
    }

    private static void CheckTensor(Tensor t, string where, List<ValidationIssue> issues)
    {
        if (t.DataType == DataType.String)
        {
            if (t.Strings.Count != t.ElementCount)
                issues.Add(new(IssueSeverity.Error, where, $"has {t.Strings.Count} strings but dims {Tensor.Format(t.Dims)} need {t.ElementCount}"));
            return;
        }
        var expected = DataTypes.ByteCount(t.DataType, t.ElementCount);
        if (!t.IsLoaded && t.External is { } ext)
        {
            if (ext.Length != expected)
                issues.Add(new(IssueSeverity.Error, where, $"has {ext.Length} bytes of external data but {t.DataType} {Tensor.Format(t.Dims)} needs {expected}"));
            if (ext.Offset + ext.Length > ext.File.Length)
                issues.Add(new(IssueSeverity.Error, where, $"external data '{ext.Location}' ends before offset {ext.Offset} + length {ext.Length}"));
            if (!PathSafety.IsInside(ext.File.BaseDirectory, ext.File.FullPath))
                issues.Add(new(IssueSeverity.Error, where, $"external data '{ext.Location}' lies outside the model's folder"));
        }
        else if (t.RawData.Length != expected)
            issues.Add(new(IssueSeverity.Error, where, $"has {t.RawData.Length} bytes of data but {t.DataType} {Tensor.Format(t.Dims)} needs {expected}"));
    }
}
