using System.Numerics.Tensors;
using OnnxQuant.Frontend;
using OnnxQuant.Passes.Calibration;
using OnnxQuant.Passes.Canonicalize;
using OnnxQuant.Passes.Quantization;
using OnnxQuant.Passes.Units;
using OnnxQuant.Runtime;

namespace OnnxQuant.Passes.Smoothing;

/// <summary>
/// One tensor the scaling looked at: the output of a normalization (LayerNormalization, or its decomposed Mul/Add
/// form) and the linear layers that read it. <see cref="Rule"/> is the scaling chosen (null: left as it was, with
/// <see cref="Reason"/>), its power-of-two exponents spanning [<see cref="MinExponent"/>, <see cref="MaxExponent"/>]; <see cref="Relative"/> is the closed-form error of the chosen scales over that of
/// the unscaled layers at each evaluated width (weights at that width, activations at the compile's width).
/// </summary>
public sealed record SmoothingSite(string Tensor, string Root, string RootOp, IReadOnlyList<string> Layers, int Channels,
    ScaleRule? Rule, int MinExponent, int MaxExponent, IReadOnlyList<SmoothingWidth> Relative, string? Reason);

/// <summary>
/// One way of deriving per-channel scales: SmoothQuant's <c>s_j = max|x_j|^alpha / max|W_j|^(1 - alpha)</c>
/// (<see cref="WeightAware"/>) or AWQ's <c>s_j = mean|x_j|^alpha</c>.
/// </summary>
public sealed record ScaleRule(string Method, double Alpha, bool WeightAware);

/// <summary>The closed-form error of the chosen scales over the unscaled one's at one weight width.</summary>
public sealed record SmoothingWidth(int Bits, double Relative);

/// <summary>What the scaling stage did: every site it looked at, and how many it scaled.</summary>
public sealed record SmoothingResult(string Mode, int Samples, IReadOnlyList<SmoothingSite> Sites)
{
    public static SmoothingResult None(string mode) => new(mode, 0, []);

    public int Scaled => Sites.Count(s => s.Rule is not null);
}

/// <summary>
/// Activation-aware scaling (SmoothQuant / AWQ): a linear layer computes <c>x W = (x / s)(s W)</c> for any positive
/// per-input-channel s, so a normalization's output channels can be divided by s (folded into its scale and bias)
/// and the weights of the layers that read it multiplied by s. Large s on channels with large activations flattens
/// the activation (a per-tensor 8-bit grid resolves the small channels better) and gives the weights those channels
/// multiply a larger share of each output channel's quantization range. Candidates (<see cref="Rules"/>) are
/// SmoothQuant's <c>s_j = max|x_j|^alpha / max|W_j|^(1 - alpha)</c> and AWQ's <c>s_j = mean|x_j|^alpha</c>, each
/// priced in closed form on rows of the real activations: per target width b (weights at b with the compiler's
/// quantizer, activations at the compile's width), <c>E_b(s) = sum_layers mean_rows ||(x / s)(Q_b(s W) - s W)||^2
/// + Delta(s)^2 / 12 ||s W||_F^2</c> (Delta the activation grid's step over the scaled tensor's range). A candidate is
/// admissible when no width's E_b rises (one scaling serves every target of the compile); the admissible one with the
/// lowest <c>sum_b E_b(s) / E_b(1)</c> is applied if that is at least <see cref="MinimumGain"/> below unscaled.
/// <para>
/// Every s is a power of two, so dividing the normalization's constants and multiplying the weights is exact in
/// floating point: the scaled model computes the same float outputs bit for bit, whatever machine chose the scales.
/// A site is scaled only where the graph allows: the tensor reaches nothing but quantizable MatMul/Gemm layers (as
/// their activation), through ops that keep its channels on the last axis (Reshape, Transpose, Slice, Pad with
/// zeros, Concat, Split, ...); a post-norm residual stream, which also feeds an Add, is left alone.
/// </para>
/// </summary>
public static class ActivationSmoothing
{
    /// <summary>
    /// The scalings priced: SmoothQuant's (activation range against weight range, for 8-bit weights whose error is
    /// mostly the activations') and AWQ's (mean activation magnitude alone, milder, for low-bit weights).
    /// </summary>
    public static readonly IReadOnlyList<ScaleRule> Rules =
    [
        .. new[] { 0.15, 0.3, 0.45, 0.6, 0.75 }.Select(a => new ScaleRule("smoothquant", a, true)),
        .. new[] { 0.1, 0.2, 0.35, 0.5 }.Select(a => new ScaleRule("awq", a, false)),
    ];

    /// <summary>A candidate must lower the summed relative error by this much, so near-ties never flip the choice.</summary>
    public const double MinimumGain = 0.05;

    /// <summary>Rows of the activations the closed-form error is computed on, over the samples.</summary>
    internal const int Rows = 256;

    private const int MaxExponent = 10;

    private static readonly HashSet<string> ReshapeLike = new(["Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"], StringComparer.Ordinal);

    /// <summary>
    /// Finds the sites, measures their activations on the first samples, chooses and applies the scales to
    /// <paramref name="model"/> (the canonical model, changed in place; layer and weight names are kept).
    /// </summary>
    /// <param name="widths">Weight widths the error is evaluated at (the targets' nearest candidates).</param>
    public static SmoothingResult Run(Model model, IReadOnlyList<QuantLayer> layers, CalibrationSet data, int samples,
        SmoothingOptions options, IReadOnlyList<int> widths, int actBits, Rewrite.RewriteOptions storage, SessionOptions session, int runBatch)
    {
        if (options.Mode == SmoothingMode.Off)
            return SmoothingResult.None("off");
        var candidates = FindCandidates(model, layers, out var rejected);
        if (candidates.Count == 0)
            return new SmoothingResult("auto", 0, rejected);
        var used = Math.Min(samples, options.Samples);
        var statistics = Collect(model, candidates, data, used, session, runBatch, out var invalid);
        var sites = new List<SmoothingSite>(rejected);
        foreach (var candidate in candidates)
        {
            if (invalid.TryGetValue(candidate, out var reason))
            {
                sites.Add(candidate.Report(null, [], [], reason));
                continue;
            }
            sites.Add(Choose(model, candidate, statistics[candidate], widths, actBits, storage));
        }
        return new SmoothingResult("auto", used, sites.OrderBy(s => s.Tensor, StringComparer.Ordinal).ToList());
    }

    /// <summary>A normalization output, its constants, what reads it and the tensors between.</summary>
    internal sealed class Candidate(Value tensor, Node root, Value scale, Value? bias, int channels, IReadOnlyList<(QuantLayer Layer, Node Node)> consumers,
        IReadOnlyList<Value> closure, IReadOnlyList<Node> passThrough)
    {
        public Value Tensor { get; } = tensor;
        public Node Root { get; } = root;
        public Value Scale { get; } = scale;
        public Value? Bias { get; } = bias;
        public int Channels { get; } = channels;
        public IReadOnlyList<(QuantLayer Layer, Node Node)> Consumers { get; } = consumers;
        public IReadOnlyList<Value> Closure { get; } = closure;
        public IReadOnlyList<Node> PassThrough { get; } = passThrough;

        public SmoothingSite Report(ScaleRule? rule, int[] exponents, IReadOnlyList<SmoothingWidth> relative, string? reason) =>
            new(Tensor.Name, Root.Name, Root.OpType, Consumers.Select(c => c.Layer.Name).ToList(), Channels, rule,
                exponents.Length == 0 ? 0 : exponents.Min(), exponents.Length == 0 ? 0 : exponents.Max(), relative, reason);
    }

    /// <summary>Per-channel range and rows of a site's tensor on the measured samples.</summary>
    internal sealed record SiteStatistics(float[] Min, float[] Max, float[] Rows, int RowCount);

    /// <summary>Structural search: every normalization output whose readers allow scaling; the others with a reason.</summary>
    internal static List<Candidate> FindCandidates(Model model, IReadOnlyList<QuantLayer> layers, out List<SmoothingSite> rejected)
    {
        var graph = model.Graph;
        var byNode = graph.Nodes.Where(n => n.Name.Length > 0).GroupBy(n => n.Name, StringComparer.Ordinal)
            .ToDictionary(g => g.Key, g => g.First(), StringComparer.Ordinal);
        var layerOf = new Dictionary<Node, QuantLayer>(ReferenceEqualityComparer.Instance);
        foreach (var layer in layers)
            if (byNode.TryGetValue(layer.Name, out var node))
                layerOf[node] = layer;
        var found = new List<Candidate>();
        rejected = [];
        foreach (var node in graph.Nodes)
        {
            if (Root(node) is not var (tensor, scale, bias, channels))
                continue;
            var closure = new List<Value> { tensor };
            var seen = new HashSet<Value>(ReferenceEqualityComparer.Instance) { tensor };
            var passThrough = new List<Node>();
            var consumers = new List<(QuantLayer, Node)>();
            string? reason = null;
            for (var i = 0; i < closure.Count && reason is null; i++)
            {
                var value = closure[i];
                if (value.IsGraphOutput)
                {
                    reason = $"'{value.Name}' is a graph output";
                    break;
                }
                foreach (var use in value.Uses)
                {
                    var user = use.Node;
                    if (user.OpType == "Shape" && GraphQueries.IsDefaultDomain(user))
                        continue;
                    if (layerOf.TryGetValue(user, out var layer) && use.InputIndex == 0 && layer.Activation == value.Name
                        && (layer.OpType == "MatMul" || (layer.OpType == "Gemm" && user.GetInt("transA", 0) == 0)))
                    {
                        if (!consumers.Any(c => ReferenceEquals(c.Item2, user)))
                            consumers.Add((layer, user));
                        continue;
                    }
                    if (!GraphQueries.IsDefaultDomain(user) || !(ReshapeLike.Contains(user.OpType) && use.InputIndex == 0
                        || user.OpType is "Transpose" or "Concat" || (user.OpType is "Slice" or "Pad" or "Split" && use.InputIndex == 0)))
                    {
                        reason = $"'{value.Name}' is also read by {user.Describe()}, which per-channel scaling would change";
                        break;
                    }
                    if (!passThrough.Contains(user))
                        passThrough.Add(user);
                    foreach (var output in user.Outputs.Where(o => !o.IsOmitted))
                        if (seen.Add(output))
                            closure.Add(output);
                }
            }
            // Concat joins channels-last tensors only when each of its inputs carries the same scaling.
            if (reason is null && passThrough.FirstOrDefault(n => n.OpType == "Concat" && n.Inputs.Any(x => x is null || !seen.Contains(x))) is { } mixed)
                reason = $"{mixed.Describe()} joins '{tensor.Name}' with other tensors";
            if (reason is null && consumers.Count == 0)
                continue; // nothing quantizable reads it: not a site
            var report = new Candidate(tensor, node, scale, bias, channels, consumers, closure, passThrough);
            if (reason is not null)
                rejected.Add(report.Report(null, [], [], reason));
            else
                found.Add(report);
        }
        return found;
    }

    /// <summary>
    /// A node whose output channels (last axis) can be divided exactly: LayerNormalization over the last axis with
    /// constant scale and bias, or Mul by a constant per-channel vector, optionally followed by Add of one.
    /// </summary>
    private static (Value Tensor, Value Scale, Value? Bias, int Channels)? Root(Node node)
    {
        if (!GraphQueries.IsDefaultDomain(node))
            return null;
        if (node.OpType == "LayerNormalization" && node.Inputs.Count >= 2 && node.GetInt("axis", -1) == -1
            && node.Outputs.Skip(1).All(o => o.IsOmitted || GraphQueries.IsUnused(o)))
        {
            var scale = node.Inputs[1];
            var bias = node.Inputs.Count > 2 ? node.Inputs[2] : null;
            if (PerChannel(scale) is not { } c || (bias is not null && PerChannel(bias) != c))
                return null;
            return (node.Outputs[0], scale!, bias, c);
        }
        if (node.OpType == "Add" && node.Inputs.Count == 2)
        {
            for (var k = 0; k < 2; k++)
                if (node.Inputs[k] is { Producer: { OpType: "Mul" } mul } product && GraphQueries.SoleUser(product) == node
                    && MulScale(mul) is { } scale && PerChannel(node.Inputs[1 - k]) is { } c && PerChannel(scale) == c)
                    return (node.Outputs[0], scale, node.Inputs[1 - k], c);
            return null;
        }
        if (node.OpType == "Mul" && MulScale(node) is { } alone && PerChannel(alone) is { } channels
            // A Mul followed by the Add of a constant is found from the Add.
            && !(GraphQueries.SoleUser(node.Outputs[0]) is { OpType: "Add" } add && add.Inputs.Any(x => PerChannel(x) is not null)))
            return (node.Outputs[0], alone, null, channels);
        return null;
    }

    private static Value? MulScale(Node mul)
    {
        if (!GraphQueries.IsDefaultDomain(mul) || mul.Inputs.Count != 2)
            return null;
        var constant = mul.Inputs.Where(x => x?.ConstantValue is not null).ToList();
        return constant.Count == 1 ? constant[0] : null;
    }

    /// <summary>Channel count of a float initializer shaped [C] or [1, ..., 1, C] with C > 1.</summary>
    private static int? PerChannel(Value? value)
    {
        if (value is not { IsInitializer: true, Initializer: { DataType: DataType.Float } t } || value.IsGraphInput)
            return null;
        var dims = t.Dims;
        if (dims.Count == 0 || dims[^1] <= 1 || dims.Take(dims.Count - 1).Any(d => d != 1))
            return null;
        return (int)dims[^1];
    }

    /// <summary>
    /// Runs the first samples through the model with each site's tensor as an output (and the shapes of the tensors
    /// between it and its layers), checks on the real shapes that the channels stay on the last axis, and gathers each
    /// valid site's per-channel range and rows.
    /// </summary>
    private static Dictionary<Candidate, SiteStatistics> Collect(Model model, IReadOnlyList<Candidate> candidates, CalibrationSet data,
        int samples, SessionOptions options, int runBatch, out Dictionary<Candidate, string> invalid)
    {
        var instrumented = model.Clone();
        var graph = instrumented.Graph;
        var shapeOutputs = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var value in candidates.SelectMany(c => c.Closure).Select(v => v.Name).Distinct(StringComparer.Ordinal))
        {
            var copy = graph.FindValue(value)!;
            var shape = new Node("Shape", [copy], [graph.UniqueName(value + "_smoothing_shape")], name: graph.UniqueName(value + "_smoothing_shape"));
            graph.AddNode(shape);
            shape.Outputs[0].Type = new TensorType(DataType.Int64, new Shape([Dim.Unknown]));
            graph.AddOutput(shape.Outputs[0]);
            shapeOutputs[value] = shape.Outputs[0].Name;
        }
        // Pads, starts and axes computed in the graph (from shapes, as exporters write Swin's window padding) are
        // read from the first run.
        var parameters = candidates.SelectMany(c => c.PassThrough).Where(n => n.OpType is "Pad" or "Slice")
            .SelectMany(n => n.Inputs.Skip(1)).OfType<Value>().Where(v => !v.IsOmitted && v.ConstantValue is null)
            .Select(v => v.Name).Distinct(StringComparer.Ordinal).ToList();
        foreach (var name in parameters)
        {
            var copy = graph.FindValue(name)!;
            if (copy.IsGraphOutput)
                continue;
            ElementTypeInference.EnsureTyped(copy);
            graph.AddOutput(copy);
        }
        foreach (var candidate in candidates)
        {
            var copy = graph.FindValue(candidate.Tensor.Name)!;
            if (copy.IsGraphOutput)
                continue;
            ElementTypeInference.EnsureTyped(copy);
            graph.AddOutput(copy);
        }
        using var session = InferenceSession.Create(ModelIO.ToBytes(instrumented), options);
        invalid = new Dictionary<Candidate, string>(ReferenceEqualityComparer.Instance);
        var valid = new List<Candidate>();
        var perSample = Math.Max(1, (Rows + samples - 1) / samples);
        var statistics = new Dictionary<Candidate, SiteStatistics>(ReferenceEqualityComparer.Instance);
        var rows = new Dictionary<Candidate, List<float>>(ReferenceEqualityComparer.Instance);
        var first = true;
        foreach (var (start, count, batch) in data.Runs(0, samples, runBatch))
        {
            var inputs = batch.Select(b => b.ToNamedTensor()).ToList();
            // The first run also returns the shapes, which say which sites keep their channels on the last axis.
            var wanted = (first ? candidates : valid).Select(c => c.Tensor.Name).Distinct(StringComparer.Ordinal).ToList();
            var outputs = session.Run(inputs, first ? wanted.Concat(shapeOutputs.Values).Concat(parameters).ToList() : wanted)
                .ToDictionary(o => o.Name, o => o.Data, StringComparer.Ordinal);
            if (first)
            {
                foreach (var candidate in candidates)
                {
                    if (ShapeProblem(candidate, name => outputs[shapeOutputs[name]].GetArray<long>(),
                        v => v.ConstantValue is { } t ? t : outputs.TryGetValue(v.Name, out var d) ? d : null) is { } problem)
                        invalid[candidate] = problem;
                    else
                        valid.Add(candidate);
                }
                first = false;
                if (valid.Count == 0)
                    return statistics;
            }
            foreach (var candidate in valid)
            {
                var values = outputs[candidate.Tensor.Name].AsFloats();
                var c = candidate.Channels;
                var tokens = values.Length / c;
                if (!statistics.TryGetValue(candidate, out var s))
                {
                    s = new SiteStatistics(Enumerable.Repeat(float.PositiveInfinity, c).ToArray(), Enumerable.Repeat(float.NegativeInfinity, c).ToArray(), [], 0);
                    statistics[candidate] = s;
                    rows[candidate] = [];
                }
                for (var t = 0; t < tokens; t++)
                {
                    var row = values.AsSpan(t * c, c);
                    TensorPrimitives.Min(row, s.Min, s.Min);
                    TensorPrimitives.Max(row, s.Max, s.Max);
                }
                // Rows at fixed, evenly spaced token positions of every run.
                var taken = Math.Min(tokens, perSample * count);
                for (var r = 0; r < taken; r++)
                    rows[candidate].AddRange(values.AsSpan((int)((r + 0.5) * tokens / taken) * c, c).ToArray());
            }
        }
        foreach (var candidate in valid)
        {
            var s = statistics[candidate];
            // Six significant digits, so machines whose kernels differ in the last bits choose the same scales.
            var min = s.Min.Select(v => StableRounding.Round(v)).ToArray();
            var max = s.Max.Select(v => StableRounding.Round(v)).ToArray();
            var all = rows[candidate].ToArray();
            statistics[candidate] = new SiteStatistics(min, max, all, all.Length / candidate.Channels);
        }
        return statistics;
    }

    /// <summary>Why the real shapes do not keep the site's channels on the last axis, or null when they do.</summary>
    private static string? ShapeProblem(Candidate candidate, Func<string, long[]> shapeOf, Func<Value, object?> valueOf)
    {
        foreach (var value in candidate.Closure)
        {
            var shape = shapeOf(value.Name);
            if (shape.Length == 0 || shape[^1] != candidate.Channels)
                return $"'{value.Name}' has shape [{string.Join(", ", shape)}]: its last axis is not the {candidate.Channels} channels";
        }
        foreach (var node in candidate.PassThrough)
        {
            var rank = shapeOf(node.Inputs[0]!.Name).Length;
            bool IsLast(long axis) => (axis < 0 ? axis + rank : axis) == rank - 1;
            long[]? Ints(int input) => node.Inputs.Count > input && node.Inputs[input] is { IsOmitted: false } v ? AsInt64s(valueOf(v)) : null;
            var problem = node.OpType switch
            {
                "Transpose" => node.GetInts("perm") is { } perm && perm.Count == rank && perm[^1] == rank - 1 ? null : "moves the channel axis",
                "Concat" or "Split" => IsLast(node.GetInt("axis", 0)) ? "works on the channel axis" : null,
                "Slice" => SliceProblem(node, Ints, IsLast),
                "Pad" => PadProblem(node, rank, Ints, node.Inputs.Count > 2 && node.Inputs[2] is { IsOmitted: false } fill ? AsFloats(valueOf(fill)) ?? [float.NaN] : null),
                _ => null, // reshape-like: the last axis keeps its size (checked above), so every element keeps its channel
            };
            if (problem is not null)
                return $"{node.Describe()} {problem}";
        }
        return null;
    }

    private static long[]? AsInt64s(object? value) => value switch
    {
        Frontend.Tensor t => t.ToInt64Array(),
        TensorData d => d.DataType == DataType.Int64 ? d.GetArray<long>() : null,
        _ => null,
    };

    private static float[]? AsFloats(object? value) => value switch
    {
        Frontend.Tensor t => t.ToFloatArray(),
        TensorData d => d.ToFloats(),
        _ => null,
    };

    private static string? SliceProblem(Node node, Func<int, long[]?> ints, Func<long, bool> isLast)
    {
        // Opset 1-9 Slice has its starts and axes as attributes.
        var starts = node.Inputs.Count > 1 ? ints(1) : node.GetInts("starts")?.ToArray();
        if (starts is null)
            return "has starts that could not be read";
        var hasAxes = node.Inputs.Count > 3 && node.Inputs[3] is { IsOmitted: false } || node.GetInts("axes") is not null;
        var axes = !hasAxes ? Enumerable.Range(0, starts.Length).Select(i => (long)i).ToArray()
            : node.Inputs.Count > 1 ? ints(3) : node.GetInts("axes")!.ToArray();
        if (axes is null)
            return "has axes that could not be read";
        return axes.Any(isLast) ? "slices the channel axis" : null;
    }

    /// <param name="fill">The constant_value input's values (null: absent).</param>
    private static string? PadProblem(Node node, int rank, Func<int, long[]?> ints, float[]? fill)
    {
        if (node.GetString("mode", "constant") != "constant")
            return "pads by reflection or edge values";
        if (fill is not null && fill.Any(x => x != 0))
            return "pads with a value other than 0";
        var pads = node.Inputs.Count > 1 ? ints(1) : node.GetInts("pads")?.ToArray();
        if (pads is null)
            return "has pads that could not be read";
        var axes = node.Inputs.Count > 3 && node.Inputs[3] is { IsOmitted: false } ? ints(3) : Enumerable.Range(0, rank).Select(i => (long)i).ToArray();
        if (axes is null || pads.Length != 2 * axes.Length)
            return "has axes that could not be read";
        for (var i = 0; i < axes.Length; i++)
            if ((axes[i] < 0 ? axes[i] + rank : axes[i]) == rank - 1 && (pads[i] != 0 || pads[i + axes.Length] != 0))
                return "pads the channel axis";
        return null;
    }

    /// <summary>Prices every candidate scaling in closed form and applies the best one that beats none.</summary>
    private static SmoothingSite Choose(Model model, Candidate site, SiteStatistics stats, IReadOnlyList<int> widths, int actBits,
        Rewrite.RewriteOptions storage)
    {
        var c = site.Channels;
        var weights = site.Consumers.Select(x => model.Graph.FindInitializer(x.Layer.WeightName)!.Initializer!.ToFloatArray()).ToList();
        // max |W_j| over the layers' weights of input channel j.
        var weightMax = new double[c];
        for (var k = 0; k < weights.Count; k++)
        {
            var inputOf = site.Consumers[k].Layer.InputChannelOfElements();
            for (var i = 0; i < weights[k].Length; i++)
                weightMax[inputOf[i]] = Math.Max(weightMax[inputOf[i]], Math.Abs(weights[k][i]));
        }
        var actMax = Enumerable.Range(0, c).Select(j => Math.Max(Math.Abs((double)stats.Min[j]), Math.Abs((double)stats.Max[j]))).ToArray();
        var identity = new int[c];
        var baseline = widths.Select(b => Error(site, stats, weights, identity, b, actBits, storage)).ToArray();
        if (baseline.Any(e => !(e > 0)))
            return site.Report(null, [], [], "the unscaled layers have no error to lower");
        // mean |x_j| on the rows, for the activation-only (AWQ) rule.
        var actMean = new double[c];
        for (var r = 0; r < stats.RowCount; r++)
            for (var j = 0; j < c; j++)
                actMean[j] += Math.Abs(stats.Rows[r * c + j]);
        ScaleRule? bestRule = null;
        var best = identity;
        var bestScore = (double)widths.Count;
        var bestRelative = widths.Select(b => new SmoothingWidth(b, 1)).ToList();
        var tried = new HashSet<string>(StringComparer.Ordinal) { string.Join(",", identity) };
        foreach (var rule in Rules)
        {
            var exponents = rule.WeightAware ? Exponents(actMax, weightMax, rule.Alpha) : Exponents(actMean, null, rule.Alpha);
            if (!tried.Add(string.Join(",", exponents)))
                continue; // the same scales as a rule already priced
            var relative = widths.Select((b, i) => Error(site, stats, weights, exponents, b, actBits, storage) / baseline[i]).ToArray();
            // Admissible only if no target width gets worse: one scaling serves every target of the compile.
            if (relative.Any(x => x > 1))
                continue;
            var score = relative.Sum();
            if (score < bestScore)
            {
                bestScore = score;
                bestRule = rule;
                best = exponents;
                bestRelative = widths.Select((b, i) => new SmoothingWidth(b, StableRounding.Round(relative[i]))).ToList();
            }
        }
        if (bestRule is null || bestScore > widths.Count * (1 - MinimumGain))
            return site.Report(null, [], bestRelative, bestRule is null
                ? "every scaling priced raises the closed-form error at some target width"
                : $"no scaling lowers the closed-form error by {MinimumGain:P0} at every width together (best {bestScore / widths.Count:0.000} of unscaled)");
        Apply(model, site, best);
        return site.Report(bestRule, best, bestRelative, null);
    }

    /// <summary>Power-of-two exponents of SmoothQuant's scales, centred on the channels' geometric mean.</summary>
    internal static int[] Exponents(double[] activation, double[]? weightMax, double alpha)
    {
        var c = activation.Length;
        var log = new double[c];
        var valid = new bool[c];
        for (var j = 0; j < c; j++)
        {
            valid[j] = activation[j] > 0 && (weightMax is null || weightMax[j] > 0);
            if (valid[j])
                log[j] = alpha * Math.Log2(activation[j]) - (weightMax is null ? 0 : (1 - alpha) * Math.Log2(weightMax[j]));
        }
        if (!valid.Any(v => v))
            return new int[c];
        var centre = Enumerable.Range(0, c).Where(j => valid[j]).Average(j => log[j]);
        return Enumerable.Range(0, c).Select(j => valid[j] ? (int)Math.Clamp(Math.Round(log[j] - centre, MidpointRounding.ToEven), -MaxExponent, MaxExponent) : 0).ToArray();
    }

    /// <summary>
    /// Closed-form output error per row of the site's layers with channel j scaled by 2^e_j: the weight error on the
    /// measured rows plus the activation grid's uniform noise (step of the scaled tensor's range) through the scaled
    /// weights.
    /// </summary>
    private static double Error(Candidate site, SiteStatistics stats, IReadOnlyList<float[]> weights, int[] exponents, int bits,
        int actBits, Rewrite.RewriteOptions storage)
    {
        var c = site.Channels;
        var s = exponents.Select(e => MathF.ScaleB(1f, e)).ToArray();
        var rows = new float[stats.Rows.Length];
        for (var r = 0; r < stats.RowCount; r++)
            TensorPrimitives.Divide(stats.Rows.AsSpan(r * c, c), s, rows.AsSpan(r * c, c));
        // The activation grid's noise variance per element: the step over the scaled tensor's range, the same for every layer.
        var lo = 0.0;
        var hi = 0.0;
        for (var j = 0; j < c; j++)
        {
            lo = Math.Min(lo, stats.Min[j] / s[j]);
            hi = Math.Max(hi, stats.Max[j] / s[j]);
        }
        var step = actBits > 0 ? (hi - lo) / ((1 << actBits) - 1) : 0;
        var noise = step * step / 12;
        var total = 0.0;
        for (var k = 0; k < weights.Count; k++)
        {
            var layer = site.Consumers[k].Layer;
            var w = weights[k];
            var inputOf = layer.InputChannelOfElements();
            var scaled = new float[w.Length];
            for (var i = 0; i < w.Length; i++)
                scaled[i] = w[i] * s[inputOf[i]];
            var quantized = QuantMath.FakeQuantizeWeight(scaled, layer.Layout(storage.Format, storage.BlockSize), bits);
            // dW as [C, N]: row j holds the errors of the weights input channel j multiplies.
            var n = w.Length / c;
            var error = new float[w.Length];
            var outputOf = layer.OutputChannelOfElements();
            for (var i = 0; i < w.Length; i++)
                error[inputOf[i] * n + outputOf[i]] = quantized[i] - scaled[i];
            var perRow = new double[stats.RowCount];
            Parallel.For(0, stats.RowCount, r =>
            {
                var y = new float[n];
                var x = rows.AsSpan(r * c, c);
                for (var j = 0; j < c; j++)
                    if (x[j] != 0)
                        TensorPrimitives.MultiplyAdd(error.AsSpan(j * n, n), x[j], y, y);
                perRow[r] = TensorPrimitives.Dot(y, y);
            });
            total += perRow.Sum() / Math.Max(1, stats.RowCount);
            if (actBits > 0)
                total += noise * TensorPrimitives.Dot(scaled, scaled);
        }
        return total;
    }

    /// <summary>Divides the root's constants by 2^e_j and multiplies the layers' weights by it (exact: powers of two).</summary>
    private static void Apply(Model model, Candidate site, int[] exponents)
    {
        var graph = model.Graph;
        void Divide(Value value)
        {
            var t = value.Initializer!;
            var v = t.ToFloatArray();
            for (var j = 0; j < v.Length; j++)
                v[j] = MathF.ScaleB(v[j], -exponents[j]);
            if (value.Uses.Count == 1)
            {
                graph.SetInitializer(value, Frontend.Tensor.FromFloats(value.Name, t.GetDims(), v));
                return;
            }
            // Exporters merge equal constants (every LayerNorm gain of an untrained model is the same ones): the
            // root gets its own scaled copy.
            var use = value.Uses.First(u => ReferenceEquals(u.Node, site.Root) || site.Root.Inputs.Any(i => ReferenceEquals(i?.Producer, u.Node)));
            var name = graph.UniqueName(value.Name + "_smoothed");
            use.Node.ReplaceInput(use.InputIndex, graph.AddInitializer(name, Frontend.Tensor.FromFloats(name, t.GetDims(), v)));
        }
        Divide(site.Scale);
        if (site.Bias is not null)
            Divide(site.Bias);
        foreach (var (layer, _) in site.Consumers)
        {
            var value = graph.FindInitializer(layer.WeightName)!;
            var t = value.Initializer!;
            var w = t.ToFloatArray();
            var inputOf = layer.InputChannelOfElements();
            for (var i = 0; i < w.Length; i++)
                w[i] = MathF.ScaleB(w[i], exponents[inputOf[i]]);
            graph.SetInitializer(value, Frontend.Tensor.FromFloats(value.Name, t.GetDims(), w));
        }
    }
}
