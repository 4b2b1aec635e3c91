using System.Text.RegularExpressions;
using OnnxQuant.Frontend;
using OnnxQuant.Passes.Canonicalize;
using OnnxQuant.Passes.Quantization;

namespace OnnxQuant.Passes.Units;

/// <summary>
/// A layer whose weight can be quantized: a Conv, Gemm or MatMul node reading a constant float weight. Axes are of
/// the weight tensor; <see cref="ActivationChannelAxis"/> is the channel axis of the activation input (-1 = last).
/// </summary>
public sealed record QuantLayer(
    string Name,
    string OpType,
    string WeightName,
    long[] WeightShape,
    int ChannelAxis,
    int InputChannelAxis,
    int Groups,
    string Activation,
    int ActivationChannelAxis,
    bool ReachesFeature)
{
    public long Size => WeightShape.Aggregate(1L, (a, b) => a * b);
    public int Channels => (int)WeightShape[ChannelAxis];

    /// <summary>The weight layout quantization uses: per output channel, or blocked along K for MatMulNBits.</summary>
    public WeightLayout Layout(WeightFormat format, int blockSize) =>
        format == WeightFormat.MatMulNBits && OpType == "MatMul"
            ? new WeightLayout(WeightShape, ChannelAxis, InputChannelAxis, blockSize)
            : new WeightLayout(WeightShape, ChannelAxis);

    /// <summary>For each weight element, the input channel of the activation it multiplies.</summary>
    public int[] InputChannelOfElements()
    {
        var n = (int)Size;
        var map = new int[n];
        var strides = new long[WeightShape.Length];
        long s = 1;
        for (var d = WeightShape.Length - 1; d >= 0; d--) { strides[d] = s; s *= WeightShape[d]; }
        var perGroupOut = Channels / Math.Max(1, Groups);
        var inPerGroup = (int)WeightShape[InputChannelAxis];
        for (var i = 0; i < n; i++)
        {
            var inCh = (int)(i / strides[InputChannelAxis] % WeightShape[InputChannelAxis]);
            if (Groups > 1)
            {
                var outCh = (int)(i / strides[ChannelAxis] % WeightShape[ChannelAxis]);
                inCh += outCh / perGroupOut * inPerGroup;
            }
            map[i] = inCh;
        }
        return map;
    }

    /// <summary>For each weight element, its output channel.</summary>
    public int[] OutputChannelOfElements()
    {
        var n = (int)Size;
        var stride = WeightShape.Skip(ChannelAxis + 1).Aggregate(1L, (a, b) => a * b);
        var map = new int[n];
        for (var i = 0; i < n; i++)
            map[i] = (int)(i / stride % WeightShape[ChannelAxis]);
        return map;
    }
}

/// <summary>One allocation unit: output channels [ChannelStart, ChannelStart + ChannelCount) of a layer.</summary>
public sealed record QuantUnit(string Name, QuantLayer Layer, int ChannelStart, int ChannelCount)
{
    public long Size => Layer.Size / Layer.Channels * ChannelCount;
    public bool IsWholeLayer => ChannelStart == 0 && ChannelCount == Layer.Channels;
}

/// <summary>A Conv/Gemm/MatMul left in float, and why.</summary>
public sealed record SkippedLayer(string Name, string OpType, string Reason);

/// <summary>
/// Layers whose weights hold the same values (one weight applied by several nodes, see
/// <see cref="Canonicalize.UnshareWeightsPass"/>, or an export that repeated it): they get one width per unit, are
/// compensated with their inputs' statistics together, and the artifact stores their quantized weight once.
/// </summary>
public sealed record WeightTie(QuantLayer Representative, IReadOnlyList<QuantLayer> Copies)
{
    public IEnumerable<QuantLayer> Layers => Copies.Prepend(Representative);
}

/// <summary>The layers found, the units the allocator distributes bits over, the head layers and what was skipped.</summary>
public sealed record UnitDiscoveryResult(
    IReadOnlyList<QuantLayer> Layers,
    IReadOnlyList<QuantUnit> Units,
    IReadOnlyList<QuantLayer> Heads,
    IReadOnlyList<SkippedLayer> Skipped)
{
    public IReadOnlyList<WeightTie> Ties { get; init; } = [];

    /// <summary>The tie a layer belongs to, if any.</summary>
    public WeightTie? TieOf(QuantLayer layer) => Ties.FirstOrDefault(t => t.Layers.Contains(layer));
}

/// <summary>
/// Finds the quantizable layers of a canonicalized model. Conv, ConvTranspose, Gemm and MatMul with a constant float
/// weight are layers (backbone convs, upsampling deconvolutions, transformer projections, MLP heads); everything else (LayerNorm, Softmax, detection
/// post-processing such as NMS, RoiAlign, TopK and box decoding arithmetic) stays float because it is not one of these
/// ops. Layers whose weight is shared with other nodes, tiny (fewer than <see cref="MinimumWeights"/> weights) or
/// excluded by name pattern / op type are skipped with a reason. Layers from which no feature tensor can be reached
/// are heads: they cannot affect the feature, so their curves would be zero; they are kept at the head width
/// outside the budget instead of being given the minimum bits for free.
/// </summary>
public static class UnitDiscovery
{
    public const int MinimumWeights = 64;

    /// <param name="removed">Layers canonicalization took out of the graph (<see cref="Canonicalization.RemovedLayers"/>):
    /// listed first among the skipped layers, with their reasons.</param>
    public static UnitDiscoveryResult Discover(Model model, IReadOnlyList<string> features, UnitOptions options,
        IReadOnlyList<Pipeline.RemovedLayer>? removed = null)
    {
        var graph = model.Graph;
        var featureValues = features.Select(f => graph.FindValue(f)
            ?? throw new CompileException($"--feature '{f}' names no tensor of the model")).ToList();
        var reaches = NodesReaching(featureValues);
        var excludes = options.Exclude.Select(Glob).ToList();
        var layers = new List<QuantLayer>();
        var skipped = (removed ?? []).Select(r => new SkippedLayer(r.Name, r.OpType, r.Reason)).ToList();
        foreach (var node in graph.Nodes)
        {
            if (node.OpType is not ("Conv" or "ConvTranspose" or "Gemm" or "MatMul") || !GraphQueries.IsDefaultDomain(node) || node.Inputs.Count < 2)
                continue;
            var layer = Describe(node, reaches.Contains(node), out var reason);
            if (layer is null)
            {
                if (reason is not null)
                    skipped.Add(new SkippedLayer(node.Name, node.OpType, reason));
                continue;
            }
            if (options.Exclude.Contains(node.OpType, StringComparer.Ordinal) || excludes.Any(g => g.IsMatch(node.Name)))
            {
                skipped.Add(new SkippedLayer(node.Name, node.OpType, "excluded by --exclude"));
                continue;
            }
            if (options.IntegerKernelsOnly && UnitOptions.WithoutIntegerKernel.Contains(layer.OpType))
            {
                skipped.Add(new SkippedLayer(node.Name, node.OpType, $"--deploy speed: ONNX Runtime's CPU execution provider has no integer {layer.OpType} kernel, so it stays float"));
                continue;
            }
            layers.Add(layer);
        }
        var units = new List<QuantUnit>();
        foreach (var layer in layers.Where(l => l.ReachesFeature))
        {
            if (options.Granularity == Granularity.Layer || layer.Channels <= options.GroupSize)
            {
                units.Add(new QuantUnit(layer.Name, layer, 0, layer.Channels));
                continue;
            }
            for (var c = 0; c < layer.Channels; c += options.GroupSize)
            {
                var count = Math.Min(options.GroupSize, layer.Channels - c);
                units.Add(new QuantUnit($"{layer.Name}[{c}:{c + count}]", layer, c, count));
            }
        }
        return new UnitDiscoveryResult(layers, units, layers.Where(l => !l.ReachesFeature).ToList(), skipped) { Ties = Ties(graph, layers) };
    }

    /// <summary>
    /// Groups of layers (in graph order, the first represents the group) of the same kind and shape whose weights hold
    /// byte-identical values. Copies made by canonicalization share their data, so most comparisons are one reference
    /// check.
    /// </summary>
    private static IReadOnlyList<WeightTie> Ties(Graph graph, IReadOnlyList<QuantLayer> layers)
    {
        var ties = new List<WeightTie>();
        var candidates = layers.GroupBy(l => (l.OpType, Shape: string.Join('x', l.WeightShape), l.ChannelAxis, l.InputChannelAxis, l.Groups))
            .Where(g => g.Count() > 1);
        foreach (var group in candidates)
        {
            var open = group.ToList();
            while (open.Count > 1)
            {
                var first = open[0];
                var data = graph.FindInitializer(first.WeightName)!.Initializer!.RawData;
                var same = open.Skip(1).Where(l => graph.FindInitializer(l.WeightName)!.Initializer!.RawData is var other &&
                    (other.Equals(data) || other.Span.SequenceEqual(data.Span))).ToList();
                if (same.Count > 0)
                    ties.Add(new WeightTie(first, same));
                open.RemoveAll(l => l == first || same.Contains(l));
            }
        }
        return ties.OrderBy(t => layers.ToList().IndexOf(t.Representative)).ToList();
    }

    /// <summary>
    /// What compile would find in <paramref name="model"/> with default options (what `inspect` shows): a copy is
    /// canonicalized exactly as compile does, and layers are found against the model's float outputs.
    /// </summary>
    public static UnitDiscoveryResult Preview(Model model) => Preview(model, out _);

    /// <inheritdoc cref="Preview(Model)"/>
    /// <param name="canonicalization">What canonicalization changed (<see cref="Canonicalization.Describe"/>), as the
    /// compile's report says it; null when nothing.</param>
    public static UnitDiscoveryResult Preview(Model model, out string? canonicalization)
    {
        var canonical = model.Clone();
        var records = new Pipeline.PassManager(Canonicalization.Passes()).Run(canonical);
        canonicalization = Canonicalization.Describe(records);
        return Discover(canonical, Features.DefaultFeatures(canonical), new UnitOptions(), Canonicalization.RemovedLayers(records));
    }

    /// <summary>
    /// <see cref="Discover"/>, refusing a model in which nothing can be allocated: no quantizable layer at all, or
    /// none that reaches the features.
    /// </summary>
    public static UnitDiscoveryResult DiscoverAllocatable(Model model, IReadOnlyList<string> features, UnitOptions options, string modelPath,
        IReadOnlyList<Pipeline.RemovedLayer>? removed = null)
    {
        var discovery = Discover(model, features, options, removed);
        if (discovery.Units.Count > 0)
            return discovery;
        if (discovery.Layers.Count > 0)
            throw new CompileException($"{modelPath}: none of the {discovery.Layers.Count} quantizable layers reaches the features {string.Join(", ", features)}");
        var skipped = discovery.Skipped.Count > 0 ? $"; skipped: {string.Join("; ", discovery.Skipped.Select(s => $"{s.Name}: {s.Reason}"))}" : "";
        // A quantized model (this tool's output, or another quantizer's) reads its weights through DequantizeLinear.
        var dequantized = model.Graph.AllNodes().Count(n => n.OpType is "Conv" or "Gemm" or "MatMul" && n.Inputs.Count > 1
            && n.Inputs[1]?.Producer is { OpType: "DequantizeLinear" } dq && dq.Inputs[0]?.ConstantValue is not null);
        var integer = model.Graph.AllNodes().Count(n => n.OpType is "QLinearConv" or "QLinearMatMul" or "QGemm" or "MatMulNBits" or "ConvInteger" or "MatMulInteger");
        if (dequantized + integer > 0)
            throw new CompileException($"{modelPath}: the model is already quantized ({dequantized + integer} layer(s) read integer weights through "
                + "DequantizeLinear or run integer kernels) and has no float layer left; compile the float model it was made from");
        throw new CompileException($"{modelPath}: no quantizable layer (Conv, ConvTranspose, Gemm or MatMul with a constant float weight) was found{skipped}");
    }

    private static QuantLayer? Describe(Node node, bool reaches, out string? reason)
    {
        reason = null;
        // A weight another quantizer wrote (integers through DequantizeLinear) stays as it is, and says so.
        if (node.Inputs[1] is { Producer: { OpType: "DequantizeLinear" } dq } && dq.Inputs[0]?.ConstantValue is not null)
        {
            reason = "already quantized: its weight is dequantized from integers in the graph (compile the float model to quantize it again)";
            return null;
        }
        if (node.Inputs[1] is not { ConstantValue: { } tensor } weight || node.Inputs[0] is not { } activation)
            return null; // activation x activation (e.g. attention scores): nothing to quantize
        if (tensor.DataType != DataType.Float)
        {
            reason = $"weight is {tensor.DataType}, not float";
            return null;
        }
        if (activation.ConstantValue is not null)
        {
            reason = "both inputs are constant";
            return null;
        }
        if (weight.Uses.Count != 1)
        {
            reason = $"weight '{weight.Name}' is shared by {weight.Uses.Count} nodes";
            return null;
        }
        if (tensor.ElementCount < MinimumWeights)
        {
            reason = $"weight has {tensor.ElementCount} elements (fewer than {MinimumWeights})";
            return null;
        }
        var shape = tensor.GetDims();
        switch (node.OpType)
        {
            case "Conv":
                if (shape.Length < 3)
                {
                    reason = $"Conv weight of rank {shape.Length}";
                    return null;
                }
                return new QuantLayer(node.Name, "Conv", weight.Name, shape, 0, 1, (int)node.GetInt("group", 1), activation.Name, 1, reaches);
            case "ConvTranspose":
                // The weight is [C_in, C_out / group, k...]: output channels on axis 1.
                if (shape.Length < 3)
                {
                    reason = $"ConvTranspose weight of rank {shape.Length}";
                    return null;
                }
                if (node.GetInt("group", 1) != 1)
                {
                    reason = "grouped ConvTranspose (each group's output channels sit in another slice of the weight)";
                    return null;
                }
                return new QuantLayer(node.Name, "ConvTranspose", weight.Name, shape, 1, 0, 1, activation.Name, 1, reaches);
            case "Gemm":
                if (shape.Length != 2)
                    return null;
                var transB = node.GetInt("transB", 0) != 0;
                var transA = node.GetInt("transA", 0) != 0;
                return new QuantLayer(node.Name, "Gemm", weight.Name, shape, transB ? 0 : 1, transB ? 1 : 0, 1, activation.Name, transA ? 0 : 1, reaches);
            default:
                if (shape.Length != 2)
                {
                    reason = $"MatMul weight of shape [{string.Join(", ", shape)}] (a batch of weights, one per leading index: only 2-D weights, or ones with leading 1s, are quantized)";
                    return null;
                }
                return new QuantLayer(node.Name, "MatMul", weight.Name, shape, 1, 0, 1, activation.Name, -1, reaches);
        }
    }

    /// <summary>Every node from which some feature value can be reached.</summary>
    private static HashSet<Node> NodesReaching(IReadOnlyList<Value> features)
    {
        var set = new HashSet<Node>(ReferenceEqualityComparer.Instance);
        var stack = new Stack<Node>();
        foreach (var f in features)
            if (f.Producer is { } p && set.Add(p))
                stack.Push(p);
        while (stack.Count > 0)
        {
            var node = stack.Pop();
            foreach (var input in node.Inputs)
                if (input?.Producer is { } p && set.Add(p))
                    stack.Push(p);
            foreach (var g in node.Subgraphs)
                foreach (var outer in g.OuterReferences())
                    if (outer.Producer is { } p && set.Add(p))
                        stack.Push(p);
        }
        return set;
    }

    private static Regex Glob(string pattern) =>
        new("^" + Regex.Escape(pattern).Replace("\\*", ".*").Replace("\\?", ".") + "$", RegexOptions.CultureInvariant);
}
