using OnnxQuant.Frontend;
using OnnxQuant.Passes.Pipeline;
using OnnxQuant.Runtime;

namespace OnnxQuant.Passes.Canonicalize;

/// <summary>
/// Evaluates in ONNX Runtime the float parameters a graph computes from constants: the weights and biases of Conv,
/// ConvTranspose, Gemm, MatMul and Einsum, BatchNormalization's statistics, and a constant that scales or shifts a
/// layer's output. Exports without constant folding write a frozen batch normalization's scale as
/// <c>w * (var + eps)^-0.5</c> and a weight-normalized layer's weight as <c>g * v / ||v||</c> in the graph; without
/// this pass such a layer has no constant weight, so it is neither quantized nor listed as skipped. Each such value
/// becomes an initializer holding what ONNX Runtime computes for it (the same values the float model uses), and the
/// nodes that computed it go in dead-node elimination. Values whose computation runs a layer (<see cref="InputIndependentLayersPass"/>
/// folds those), quantization nodes (a model another tool quantized is refused as such), random
/// generators, nodes with subgraphs and values larger than <see cref="MaxElements"/> (or than 4x the constants they
/// are computed from, when over <see cref="SmallElements"/>) are left to the graph.
/// </summary>
public sealed class ConstantExpressionPass : IPass
{
    public string Name => "fold-constant-expressions";

    /// <summary>Most elements of one evaluated value.</summary>
    public const long MaxElements = 1 << 24;

    /// <summary>Elements a value may always have (512 KiB of floats), however few constants it is computed from: a
    /// window's position bias gathered from a small table (SwinV2: heads x 64 x 64 from an MLP over 15 x 15
    /// coordinates) is worth storing; a value tiled to the size of an activation is not.</summary>
    public const long SmallElements = 1 << 17;

    private static readonly HashSet<string> Random = ["RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"];
    private static readonly HashSet<string> Layers = ["Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum", "BatchNormalization", "MatMulNBits"];

    private static readonly HashSet<string> Affine = ["Mul", "Add", "Sub", "Div"];

    public PassResult Run(Model model)
    {
        var graph = model.Graph;
        var (computed, throughLayer, order) = Analyze(graph);
        var targets = order.Where(v => !v.IsGraphOutput && !throughLayer.Contains(v) && v.Uses.Any(u => IsParameter(u, computed))).ToList();
        return targets.Count == 0 ? PassResult.Unchanged : PassResult.Changed(Fold(model, targets, computed).Count);
    }

    /// <summary>What a graph computes from constants alone.</summary>
    /// <param name="Computed">Each value computed from constants alone, with the constant elements it is computed from.</param>
    /// <param name="ThroughLayer">The computed values whose computation runs a layer (a product with a weight).</param>
    /// <param name="Order">The computed values in graph order, so that new initializers' names depend on nothing else.</param>
    internal sealed record ConstantValues(Dictionary<Value, long> Computed, HashSet<Value> ThroughLayer, List<Value> Order)
    {
        /// <summary>The values a layer computed from constants alone that a node reading the input takes, in graph
        /// order. Graph outputs keep their producer (their name is the interface).</summary>
        public List<Value> LayerFrontier() => Order.Where(v => ThroughLayer.Contains(v) && !v.IsGraphOutput
            && v.Uses.Any(u => !u.Node.Outputs.Any(Computed.ContainsKey))).ToList();
    }

    /// <param name="barriers">Nodes taken as reading the input whatever they read.</param>
    /// <param name="quantized">Whether QuantizeLinear and DequantizeLinear compute like any other op (a quantized
    /// model's own constants); otherwise they are taken as reading the input.</param>
    internal static ConstantValues Analyze(Graph graph, IReadOnlySet<Node>? barriers = null, bool quantized = false)
    {
        var computed = new Dictionary<Value, long>(ReferenceEqualityComparer.Instance);
        var throughLayer = new HashSet<Value>(ReferenceEqualityComparer.Instance);
        var order = new List<Value>();
        foreach (var node in graph.Nodes)
        {
            // Dequantized weights stay what they are: a model another quantizer wrote is refused as such, not quantized again.
            if (node.OpType is "Constant" || (!quantized && node.OpType is "DequantizeLinear" or "QuantizeLinear") || Random.Contains(node.OpType) || node.Subgraphs.Any() || node.Inputs.Count == 0
                || !(GraphQueries.IsDefaultDomain(node) || node.Domain == "com.microsoft") || (barriers?.Contains(node) ?? false))
                continue;
            long source = 0;
            var constant = true;
            foreach (var input in node.Inputs)
            {
                if (input is null || input.IsOmitted)
                    continue;
                if (computed.TryGetValue(input, out var n))
                    source += n;
                else if (input.ConstantValue is { } t && !input.IsGraphInput)
                    source += t.ElementCount;
                else
                {
                    constant = false;
                    break;
                }
            }
            if (!constant)
                continue;
            var layer = Layers.Contains(node.OpType) || node.Inputs.Any(i => i is not null && throughLayer.Contains(i));
            foreach (var output in node.Outputs.Where(o => !o.IsOmitted))
            {
                computed[output] = source;
                order.Add(output);
                if (layer)
                    throughLayer.Add(output);
            }
        }
        return new ConstantValues(computed, throughLayer, order);
    }

    /// <summary>Replaces each target that ONNX Runtime computes as a float tensor of at most <see cref="MaxElements"/>
    /// elements (and at most 4x the constant elements it is computed from, or <see cref="SmallElements"/>) by an
    /// initializer holding that value; returns the targets replaced. Nothing changes when ONNX Runtime cannot evaluate them (an operator it lacks, a
    /// shape it rejects): the graph keeps computing them.</summary>
    /// <param name="options">The session that computes them; by default optimizations off (the graph's own semantics).</param>
    /// <param name="integers">Whether 8- and 16-bit integer targets (a quantized model's QuantizeLinear outputs) are
    /// stored too; otherwise only float ones are.</param>
    internal static List<Value> Fold(Model model, IReadOnlyList<Value> targets, Dictionary<Value, long> computed,
        SessionOptions? options = null, bool integers = false)
    {
        var graph = model.Graph;
        Dictionary<string, TensorData> values;
        try
        {
            values = Evaluate(model, targets, options ?? SessionOptions.Calibration);
        }
        catch (OrtException)
        {
            return [];
        }
        var folded = new List<Value>();
        foreach (var target in targets)
        {
            // Float values; a quantized model's integers too (a QuantizeLinear's output, read by its DequantizeLinear).
            var type = ElementTypeInference.Of(target);
            if (!values.TryGetValue(target.Name, out var data) || data.DataType != type
                || !(type == DataType.Float || (integers && type is DataType.UInt8 or DataType.Int8 or DataType.UInt16 or DataType.Int16))
                || data.ElementCount > Math.Min(MaxElements, Math.Max(SmallElements, 4 * computed[target])))
                continue;
            var value = graph.AddInitializer(graph.UniqueName(target.Name + "_folded"),
                Tensor.FromRaw(target.Name, type, data.Shape, data.ToBytes()));
            graph.ReplaceAllUsesWith(target, value);
            folded.Add(target);
        }
        return folded;
    }

    /// <summary>Whether a use reads the value as a layer's parameter, or as the constant that scales or shifts a
    /// layer's output.</summary>
    private static bool IsParameter(Usage use, Dictionary<Value, long> computed)
    {
        var node = use.Node;
        if (!GraphQueries.IsDefaultDomain(node))
            return false;
        // A product of two operands computed from constants is not a layer: its input would become a constant too,
        // and the layer with it (a reference-point MLP over learned queries computes the same values for every input,
        // which ONNX Runtime folds itself when the session starts).
        bool IsActivation(Value? v) => v is not null && !computed.ContainsKey(v) && (v.ConstantValue is null || v.IsGraphInput);
        if (node.OpType is "MatMul" or "Einsum")
            return node.Inputs.Count == 2 && IsActivation(node.Inputs[1 - use.InputIndex]);
        if (Layers.Contains(node.OpType))
            return use.InputIndex > 0 && IsActivation(node.Inputs[0]);
        if (!Affine.Contains(node.OpType) || node.Inputs.Count != 2)
            return false;
        var other = node.Inputs[1 - use.InputIndex];
        return IsActivation(other) && ScaledLayerOutput(other!, computed, 3);
    }

    /// <summary>Whether a value is the output of a Conv, ConvTranspose or Gemm, or of a constant scale or shift of one
    /// (what <see cref="FoldOutputAffinePass"/> folds): a residual Add of two activations is not.</summary>
    private static bool ScaledLayerOutput(Value value, Dictionary<Value, long> computed, int depth)
    {
        if (value.Producer is not { } p || !GraphQueries.IsDefaultDomain(p))
            return false;
        if (p.OpType is "Conv" or "ConvTranspose" or "Gemm")
            return true;
        if (depth == 0 || !Affine.Contains(p.OpType) || p.Inputs.Count != 2 || p.Inputs[0] is not { } a || p.Inputs[1] is not { } b)
            return false;
        bool Constant(Value v) => computed.ContainsKey(v) || (v.ConstantValue is not null && !v.IsGraphInput);
        return (Constant(a) && ScaledLayerOutput(b, computed, depth - 1)) || (Constant(b) && ScaledLayerOutput(a, computed, depth - 1));
    }

    /// <summary>The targets' values, computed by ONNX Runtime (optimizations off) on a copy of the graph that keeps
    /// only what they need; <paramref name="feeds"/> for the graph inputs they read, if any.</summary>
    internal static Dictionary<string, TensorData> Evaluate(Model model, IReadOnlyList<Value> targets, SessionOptions options,
        IReadOnlyList<NamedTensor>? feeds = null)
    {
        var clone = model.Clone();
        var graph = clone.Graph;
        var outputs = targets.Select(t => graph.FindValue(t.Name)!).ToList();
        foreach (var value in outputs)
            ElementTypeInference.EnsureTyped(value);
        graph.KeepOnlyOutputs(outputs);
        foreach (var input in graph.Inputs.Where(i => !i.IsInitializer && i.Uses.Count == 0).ToList())
            graph.RemoveInput(input);
        var read = graph.Inputs.Select(i => i.Name).ToHashSet(StringComparer.Ordinal);
        using var session = InferenceSession.Create(ModelIO.ToBytes(clone), options);
        var result = session.Run((feeds ?? []).Where(f => read.Contains(f.Name)).ToList());
        return result.ToDictionary(o => o.Name, o => o.Data, StringComparer.Ordinal);
    }
}
