using OnnxQuant.Frontend;
using OnnxQuant.Passes.Calibration;
using OnnxQuant.Passes.Canonicalize;
using OnnxQuant.Passes.Quantization;
using OnnxQuant.Passes.Units;
using Attribute = OnnxQuant.Frontend.Attribute;

namespace OnnxQuant.Passes.Rewrite;

/// <summary>What the speed rewrite placed, beyond the weights.</summary>
/// <param name="QuantizedTensors">Activation tensors given a QuantizeLinear/DequantizeLinear pair.</param>
/// <param name="IntegerOps">Non-layer nodes placed between Q/DQ pairs so that ONNX Runtime runs them on uint8 data, by op type.</param>
/// <param name="NBitsLayers">Layers written as MatMulNBits with int8 compute.</param>
/// <param name="BiasFits">Layers whose INT32 bias did not fit at the chosen weight scale of some channels, which got the
/// smallest coarser weight scale that fits (<see cref="SpeedRewriter"/>).</param>
public sealed record SpeedPlacement(int QuantizedTensors, IReadOnlyDictionary<string, int> IntegerOps, IReadOnlyList<string> NBitsLayers,
    IReadOnlyList<BiasFit> BiasFits)
{
    /// <summary>The node that computes each quantized layer in the artifact (a folded linear's Gemm), by layer name.</summary>
    public IReadOnlyDictionary<string, string> LayerNodes { get; init; } = new Dictionary<string, string>(StringComparer.Ordinal);

    /// <summary>The layers whose output was quantized because ONNX Runtime did not fuse them otherwise.</summary>
    public IReadOnlyList<string> QuantizedOutputs { get; init; } = [];
}

/// <summary>A layer of the speed target whose bias needed a coarser weight scale in <paramref name="Channels"/> output
/// channels; <paramref name="Largest"/> is the largest factor by which a channel's scale grew.</summary>
public sealed record BiasFit(string Layer, int Channels, double Largest);

/// <summary>
/// The <see cref="DeployTarget.Speed"/> rewrite. The weight values are the ones the allocation chose (per output
/// channel, each channel in its own b-bit range); only their containers and the activation Q/DQ differ from the size
/// target, following ONNX Runtime's QDQ selectors (core/optimizer/qdq_transformer/selectors_actions):
/// <list type="bullet">
/// <item>Conv, and MatMul/Gemm above 4 bits: INT8 weight with per-channel DequantizeLinear, the bias as INT32 with
/// scale s_x * s_w (every input of the node must come from a DequantizeLinear), and a QuantizeLinear on the output
/// (after a Relu, which the output's zero point 0 makes redundant): QLinearConv, QLinearMatMul, QGemm. A MatMul
/// whose product alone feeds the Add of a constant bias is written as Gemm between two Reshapes first
/// (<see cref="FoldBiasIntoGemm"/>), so the bias is added in the integer kernel.</item>
/// <item>MatMul/Gemm at 4 bits or fewer whose input is known to have at most <see cref="NBitsMaxRows"/> rows per sample:
/// com.microsoft MatMulNBits (4-bit container, per-channel scales repeated per block) with accuracy_level 4, whose
/// kernel quantizes the activation to int8 itself, so it needs no Q/DQ. With more rows (or an unknown count) they are
/// written as INT8 like wider layers: the 4-bit kernel pays off where reading the weights dominates (a few rows), and
/// on DETR-R50's transformer (100 to 256 rows of 256 to 2,048 channels) its 68 layers took 49 ms per run at one thread
/// where QLinearMatMul took 16 ms for the same layers, and the float input and output it needs break the integer
/// region around it.</item>
/// <item>Between integer layers: Add, Mul and Concat (QLinearAdd, QLinearMul, QLinearConcat), Sigmoid and LeakyRelu
/// (QLinearSigmoid, QLinearLeakyRelu: a SiLU is a Sigmoid and a Mul) and AveragePool/GlobalAveragePool get their own
/// calibrated output parameters; MaxPool, Resize, Transpose, Reshape, Flatten, Squeeze, Unsqueeze and Slice
/// only move values, so their output reuses the input's parameters (ONNX Runtime then drops the pair) and costs no
/// accuracy. An op joins only when all its float inputs are already quantized, so no Q is added on a float path for
/// an op's sake.</item>
/// <item>Every use of a quantized tensor that an integer kernel writes reads its DequantizeLinear (the fusions need the
/// producer's only consumer to be the QuantizeLinear), and such a graph output keeps its name on the dequantized
/// value; a tensor that a float op computes reaches its float readers as it is.</item>
/// <item>The INT32 bias must fit beside the sum of products in the kernel's 32-bit accumulator. A channel whose bias
/// does not, because the input's scale is tiny against the bias (an input of a few 1e-5 into a bias of 0.1), gets the
/// smallest weight scale that fits, its weights rounded again onto that coarser grid: where that happens the product
/// is a rounding error of the bias anyway. ONNX Runtime's own quantizer raises the weight scale the same way; without
/// it the bias saturated and an 8-bit artifact of a torchvision ShuffleNetV2 measured a distortion of 0.32.</item>
/// </list>
/// </summary>
public static class SpeedRewriter
{
    /// <summary>Ops ONNX Runtime runs on uint8 inputs with their own output scale.</summary>
    private static readonly HashSet<string> Requantizing = ["Add", "Mul", "Concat", "AveragePool", "GlobalAveragePool", "Sigmoid", "LeakyRelu"];

    /// <summary>The activations ONNX Runtime's CPU optimizer fuses into a Gemm that they alone read.</summary>
    private static readonly HashSet<string> GemmActivations =
        ["Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "Elu", "Selu", "Softplus", "Softsign", "ThresholdedRelu"];

    /// <summary>Ops whose Q/DQ ONNX Runtime drops when input and output parameters are equal (they move values).</summary>
    private static readonly HashSet<string> PassThrough = ["MaxPool", "Resize", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Slice"];

    /// <summary>How a quantized layer is deployed.</summary>
    private enum LayerKind { Int8, NBits }

    /// <summary>The activation tensors the speed target may quantize, beyond the layer inputs: every tensor that could
    /// carry uint8 data if all of <paramref name="layers"/> were integer layers (a superset of what any allocation uses).</summary>
    public static IReadOnlyList<string> CalibrationTensors(Model canonical, IReadOnlyList<QuantLayer> layers)
    {
        var byWeight = layers.ToDictionary(l => l.WeightName, StringComparer.Ordinal);
        var graph = canonical.Graph;
        var int8 = new HashSet<Node>(ReferenceEqualityComparer.Instance);
        // The folds below change the graph: a copy, so that the canonical model stays as it is.
        var copy = canonical.Clone();
        graph = copy.Graph;
        var folds = new List<BiasFold>();
        foreach (var layer in layers)
            if (graph.FindInitializer(layer.WeightName) is { Uses.Count: 1 } w)
            {
                var node = w.Uses[0].Node;
                if (FoldBiasIntoGemm(copy, node) is { } fold)
                {
                    folds.Add(fold);
                    node = fold.Gemm;
                }
                int8.Add(node);
            }
        var region = Region(graph, int8, _ => true, folds);
        return region.Tensors.Where(t => !region.SharesParameters.ContainsKey(t)).Select(t => t.Name)
            .Concat(layers.Select(l => l.Activation)).Distinct(StringComparer.Ordinal).ToList();
    }

    /// <param name="statistics">Input statistics per layer name for <see cref="RewriteOptions.Compensation"/>, as for the size target.</param>
    /// <param name="quantizedOutputs">Layers whose output is quantized even where only float ops read it: what the
    /// fusion check asks for when ONNX Runtime left such a layer's weight on a float kernel.</param>
    public static (RewriteResult Result, SpeedPlacement Placement) Apply(Model model, IReadOnlyList<LayerPlan> plans, CalibrationTable calibration,
        RewriteOptions options, Func<string, InputStatistics?>? statistics = null, CompensationMemo? memo = null,
        IReadOnlySet<string>? quantizedOutputs = null)
    {
        var blockSize = options.BlockSize;
        var graph = model.Graph;
        var storage = new List<LayerStorage>();
        var nodes = new Dictionary<Node, (LayerPlan Plan, LayerKind Kind)>(ReferenceEqualityComparer.Instance);
        foreach (var plan in plans)
        {
            var weight = graph.FindInitializer(plan.Layer.WeightName)
                ?? throw new InvalidOperationException($"weight '{plan.Layer.WeightName}' of layer '{plan.Layer.Name}' not found");
            var node = weight.Uses.Single().Node;
            var kind = node.OpType != "Conv" && plan.MaxBits <= 4 && NBitsCompatible(node)
                && RowsPerSample(node, calibration) is <= NBitsMaxRows ? LayerKind.NBits : LayerKind.Int8;
            nodes.Add(node, (plan, kind));
        }
        var folds = new List<BiasFold>();
        foreach (var (node, entry) in nodes.Where(p => p.Value.Kind == LayerKind.Int8).ToList())
            if (FoldBiasIntoGemm(model, node) is { } fold)
            {
                nodes.Remove(node);
                nodes.Add(fold.Gemm, entry);
                folds.Add(fold);
            }
        var int8 = new HashSet<Node>(nodes.Where(p => p.Value.Kind == LayerKind.Int8).Select(p => p.Key), ReferenceEqualityComparer.Instance);
        var forced = new HashSet<Node>(nodes.Where(p => p.Value.Kind == LayerKind.Int8 && quantizedOutputs?.Contains(p.Value.Plan.Layer.Name) == true)
            .Select(p => p.Key), ReferenceEqualityComparer.Instance);
        var layerNodes = nodes.ToDictionary(p => p.Value.Plan.Layer.Name, p => p.Key.Name, StringComparer.Ordinal);
        var region = Region(graph, int8, v => calibration.Find(v.Name) is not null, folds, forced);

        // Activation parameters first: the INT32 biases need the input scales.
        var parameters = new Dictionary<Value, (Value Scale, Value Zero, float S)>(ReferenceEqualityComparer.Instance);
        foreach (var tensor in region.Tensors)
        {
            if (region.SharesParameters.TryGetValue(tensor, out var source))
            {
                parameters[tensor] = parameters[source];
                continue;
            }
            var range = calibration.Find(tensor.Name)
                ?? throw new InvalidOperationException($"tensor '{tensor.Name}' has no calibrated range");
            var p = QuantMath.ActivationParameters(range.Min, range.Max, 8);
            var scale = graph.AddInitializer(graph.UniqueName(tensor.Name + "_act_scale"), Tensor.FromFloats("s", [], [p.Scale]));
            var zero = graph.AddInitializer(graph.UniqueName(tensor.Name + "_act_zero_point"), Tensor.FromRaw("z", DataType.UInt8, [], [(byte)p.ZeroPoint]));
            parameters[tensor] = (scale, zero, p.Scale);
        }

        var nbits = new List<string>();
        var biasFits = new List<BiasFit>();
        var compensated = new List<LayerCompensation>();
        foreach (var plan in plans)
        {
            var layer = plan.Layer;
            var weightValue = graph.FindInitializer(layer.WeightName)!;
            var node = weightValue.Uses.Single().Node;
            using var created = new CreatedInitializers(graph, storage);
            var weights = weightValue.Initializer!.ToFloatArray();
            var floatBytes = weightValue.Initializer.ByteSize;
            // The values of the size target: per output channel, each channel at its own width, compensated alike (a
            // corrected bias is in the graph before it is quantized below or taken into MatMulNBits).
            var quantized = QdqRewriter.Quantize(graph, node, plan, weights, layer.Layout(WeightFormat.Qdq, blockSize),
                options.Compensation, statistics?.Invoke(layer.Name), compensated, memo);
            var ideal = QdqRewriter.IdealBits(layer, plan.ChannelBits);
            if (nodes[node].Kind == LayerKind.NBits)
            {
                var bytes = ReplaceWithNBits(graph, node, layer, quantized, plan.MaxBits <= 4 ? 4 : 8, blockSize);
                storage.Add(new LayerStorage(layer.Name, "matmulnbits", DataType.UInt8, plan.MaxBits, layer.Size, ideal, bytes, floatBytes));
                nbits.Add(layer.Name);
                continue;
            }
            var input = node.Inputs[0]!;
            var integerBias = node.Inputs.Count > 2 && node.Inputs[2] is { Initializer: not null } b && parameters.ContainsKey(input) ? b : null;
            if (integerBias is not null && FitBias(quantized, integerBias.Initializer!.ToFloatArray(), parameters[input].S) is { } fitted)
            {
                quantized = fitted.Quantization;
                biasFits.Add(new BiasFit(layer.Name, fitted.Channels, fitted.Largest));
            }
            var weightBytes = QdqRewriter.ReplaceWithDequantize(graph, weightValue, layer, quantized, DataType.Int8);
            var biasBytes = integerBias is not null ? QuantizeBias(graph, node, integerBias, parameters[input].S, quantized.Scales) : 0;
            storage.Add(new LayerStorage(layer.Name, "qdq", DataType.Int8, plan.MaxBits, layer.Size, ideal, weightBytes + biasBytes, floatBytes));
        }

        var integerNodes = new HashSet<Node>(region.Nodes, ReferenceEqualityComparer.Instance);
        foreach (var tensor in region.Tensors.Where(region.Quantized.Contains))
            InsertPair(graph, tensor, parameters[tensor], FloatProduced(tensor, integerNodes) ? integerNodes : null);
        FoldScalesIntoProducts(graph, region.Nodes.Where(IsActivationMatMul));
        ReshapeChains.Collapse(graph);

        var opset = Math.Max(13, model.OpsetImports.Default ?? 13);
        if ((model.OpsetImports.Default ?? 1) < opset)
            OpsetConverter.Raise(model, opset);
        if (nbits.Count > 0 && !model.OpsetImports.Contains(QdqRewriter.MicrosoftDomain))
            model.OpsetImports[QdqRewriter.MicrosoftDomain] = 1;
        model.IrVersion = Math.Max(model.IrVersion, 7);
        graph.TopologicalSort();
        var integerOps = region.Nodes.Where(n => !int8.Contains(n)).GroupBy(n => n.OpType, StringComparer.Ordinal)
            .OrderBy(g => g.Key, StringComparer.Ordinal).ToDictionary(g => g.Key, g => g.Count(), StringComparer.Ordinal);
        var placement = new SpeedPlacement(region.Quantized.Count, integerOps, nbits, biasFits)
        {
            LayerNodes = layerNodes,
            QuantizedOutputs = plans.Select(p => p.Layer.Name).Where(n => quantizedOutputs?.Contains(n) == true).ToList(),
        };
        var result = new RewriteResult(storage, model.OpsetImports.Default ?? opset, model.IrVersion, region.Quantized.Count, compensated) { Speed = placement };
        return (result, placement);
    }

    /// <summary>The most rows per sample (the product of the input's dimensions but the last) for which a layer at 4
    /// bits or fewer runs as MatMulNBits.</summary>
    public const long NBitsMaxRows = 8;

    /// <summary>Rows per sample of the layer's input: from the shape calibration observed for one sample, else from the
    /// graph's static shape of the input; null when neither knows.</summary>
    private static long? RowsPerSample(Node node, CalibrationTable calibration)
    {
        if (node.Inputs[0] is not { } input)
            return null;
        var dims = calibration.SampleShapes.TryGetValue(input.Name, out var observed) ? observed
            : (input.Type as TensorType)?.Shape?.ToFixedDims();
        if (dims is null || dims.Length < 2)
            return null;
        // A Gemm's A is [M, K] (transA is 0 for MatMulNBits); a MatMul's input is [..., M, K].
        return dims.Take(dims.Length - 1).Aggregate(1L, (a, b) => a * b);
    }

    /// <summary>Gemm maps onto MatMulNBits (Y = A B + bias) only without transA, scaling, or a bias of another shape.</summary>
    private static bool NBitsCompatible(Node node)
    {
        if (node.OpType == "MatMul")
            return node.Inputs[0]?.Type?.Shape?.Rank is null or >= 2;
        if (node.OpType != "Gemm" || node.GetInt("transA", 0) != 0 || node.GetFloat("alpha", 1f) != 1f)
            return false;
        if (node.Inputs.Count < 3 || node.Inputs[2] is null)
            return true;
        return node.GetFloat("beta", 1f) == 1f && node.Inputs[2]!.Initializer is { } c && c.Dims.Count == 1;
    }

    /// <summary>
    /// A MatMul and the Add of its bias rewritten as Gemm: <paramref name="Flatten"/> reshapes the input to [rows, K]
    /// (null when it is 2-D already), <paramref name="Unflatten"/> gives the output its shape back, and a sole Relu
    /// after the Add now runs on the 2-D output, between the two.
    /// </summary>
    private sealed record BiasFold(Node Gemm, Node? Flatten, Node? Unflatten);

    /// <summary>
    /// A linear layer exported as MatMul [.., K] x [K, N] followed by the Add of a constant [N] bias (how exporters
    /// write a Linear on 3-D tokens) becomes Reshape -> Gemm(bias) -> Reshape, the Relu that alone reads the sum moved
    /// before the second Reshape. ONNX Runtime fuses a QDQ Gemm into QGemm, which adds the INT32 bias in the integer
    /// accumulator and requantizes once, where QLinearMatMul requantizes the product and a float Add with its own
    /// Q/DQ pair adds the bias (on the small DETR those Adds and pairs took a fifth of the quantized model's kernel
    /// time). The Reshapes move uint8 values only. The output keeps the Add's (or the Relu's) value name, so
    /// calibration ranges carry over. Null (nothing changed) when the pattern does not hold.
    /// </summary>
    private static BiasFold? FoldBiasIntoGemm(Model model, Node node)
    {
        var graph = model.Graph;
        // Slice with starts/ends inputs: opset 10.
        if (node.OpType != "MatMul" || !GraphQueries.IsDefaultDomain(node) || (model.OpsetImports.Default ?? 1) < 10
            || node.Inputs.Count != 2 || node.Inputs[0] is not { } x || node.Inputs[1] is not { Initializer: { } w } weight
            || w.Dims.Count != 2 || w.DataType != DataType.Float)
            return null;
        var product = node.Outputs[0];
        if (product.Uses.Count != 1 || product.IsGraphOutput || product.Uses[0].Node is not { OpType: "Add" } add
            || !GraphQueries.IsDefaultDomain(add) || add.Inputs.Count != 2 || add.Outputs.Count != 1)
            return null;
        var k = w.Dims[0];
        var n = w.Dims[1];
        if (add.Inputs[1 - product.Uses[0].InputIndex] is not { Initializer: { } c } bias || c.DataType != DataType.Float
            || c.Dims.Count != 1 || c.Dims[0] != n)
            return null;
        var sum = add.Outputs[0];
        var relu = sum.Uses.Count == 1 && !sum.IsGraphOutput && sum.Uses[0].Node is { OpType: "Relu" } r
            && GraphQueries.IsDefaultDomain(r) && r.Outputs.Count == 1 ? r : null;
        var final = relu?.Outputs[0] ?? sum;
        var rank = x.Type?.Shape?.Rank;
        var name = node.Name.Length > 0 ? node.Name : product.Name;

        Node? flatten = null;
        var a = x;
        if (rank != 2)
        {
            var flatShape = graph.AddInitializer(graph.UniqueName(name + "_rows_shape"), Tensor.FromInt64s("s", [2], [-1, k]));
            flatten = new Node("Reshape", [x, flatShape], [graph.UniqueName(name + "_rows")], name: graph.UniqueName(name + "_rows"));
            flatten.Outputs[0].Type = new TensorType(x.Type?.ElementType ?? DataType.Float, null);
            graph.InsertBefore(node, flatten);
            a = flatten.Outputs[0];
        }
        var gemm = new Node("Gemm", [a, weight, bias], [graph.UniqueName(name + "_gemm")], name: graph.UniqueName(name + "_gemm"));
        gemm.Outputs[0].Type = new TensorType(DataType.Float, null);
        graph.InsertBefore(node, gemm);
        var last = gemm.Outputs[0];
        Node? movedRelu = null;
        if (relu is not null)
        {
            movedRelu = new Node("Relu", [last], [graph.UniqueName(name + "_gemm_relu")], name: graph.UniqueName(relu.Name.Length > 0 ? relu.Name : name + "_relu"));
            movedRelu.Outputs[0].Type = new TensorType(DataType.Float, null);
            graph.InsertAfter(gemm, movedRelu);
            last = movedRelu.Outputs[0];
        }
        Node? unflatten = null;
        if (flatten is not null)
        {
            // The output's shape is the input's with its last dimension N: Shape -> Slice(0, -1) -> Concat([N]).
            var shape = new Node("Shape", [x], [graph.UniqueName(name + "_input_shape")], name: graph.UniqueName(name + "_input_shape"));
            var zero = graph.AddInitializer(graph.UniqueName(name + "_zero"), Tensor.FromInt64s("z", [1], [0]));
            var minusOne = graph.AddInitializer(graph.UniqueName(name + "_minus_one"), Tensor.FromInt64s("m", [1], [-1]));
            var lead = new Node("Slice", [shape.Outputs[0], zero, minusOne, zero], [graph.UniqueName(name + "_leading_dims")],
                name: graph.UniqueName(name + "_leading_dims"));
            var width = graph.AddInitializer(graph.UniqueName(name + "_width"), Tensor.FromInt64s("n", [1], [n]));
            var target = new Node("Concat", [lead.Outputs[0], width], [graph.UniqueName(name + "_output_shape")],
                name: graph.UniqueName(name + "_output_shape"), attributes: [Attribute.FromInt("axis", 0)]);
            foreach (var v in new[] { shape.Outputs[0], lead.Outputs[0], target.Outputs[0] })
                v.Type = new TensorType(DataType.Int64, null);
            unflatten = new Node("Reshape", [last, target.Outputs[0]], [graph.UniqueName(name + "_output")], name: graph.UniqueName(name + "_output"));
            unflatten.Outputs[0].Type = final.Type;
            var after = movedRelu ?? gemm;
            graph.InsertAfter(after, shape);
            graph.InsertAfter(shape, lead);
            graph.InsertAfter(lead, target);
            graph.InsertAfter(target, unflatten);
            last = unflatten.Outputs[0];
        }
        else
            last.Type = final.Type;
        var finalName = final.Name;
        if (relu is not null)
            graph.RemoveNode(relu, force: true);
        graph.RemoveNode(add, force: true);
        graph.RemoveNode(node, force: true);
        graph.ReplaceAllUsesWith(final, last, replaceGraphOutputs: true);
        last.Name = finalName;
        return new BiasFold(gemm, flatten, unflatten);
    }

    /// <summary>The integer region: nodes that will run on uint8 data and the tensors that carry it.</summary>
    /// <param name="Tensors">Every tensor with activation parameters (shared ones included), in order.</param>
    /// <param name="Quantized">The tensors that get a Q/DQ pair: those an integer kernel reads or must write.</param>
    private sealed record IntegerRegion(List<Node> Nodes, List<Value> Tensors, Dictionary<Value, Value> SharesParameters, HashSet<Value> Quantized);

    /// <summary>
    /// Walks the graph in order: an integer layer quantizes its input and its output (after a single Relu
    /// consumer, which the output's zero point makes redundant); a requantizing or pass-through op joins when every
    /// float input it reads is already quantized and (requantizing) its output has a range.
    /// </summary>
    private static IntegerRegion Region(Graph graph, HashSet<Node> int8Layers, Func<Value, bool> hasRange, IReadOnlyList<BiasFold> folds,
        HashSet<Node>? quantizedOutputs = null)
    {
        var foldOf = folds.ToDictionary(f => f.Gemm, f => f, (IEqualityComparer<Node>)ReferenceEqualityComparer.Instance);
        var activation = new HashSet<Node>(ReferenceEqualityComparer.Instance);
        var nodes = new List<Node>();
        var tensors = new List<Value>();
        var seen = new HashSet<Value>(ReferenceEqualityComparer.Instance);
        var shares = new Dictionary<Value, Value>(ReferenceEqualityComparer.Instance);
        void Add(Value v)
        {
            if (seen.Add(v))
                tensors.Add(v);
        }
        foreach (var node in graph.Nodes)
        {
            if (int8Layers.Contains(node))
            {
                var input = node.Inputs[0]!;
                var output = Tail(node.Outputs[0]);
                if (foldOf.TryGetValue(node, out var fold) && fold.Flatten is not null)
                {
                    // A folded linear: the ranges are those of its 3-D input and output, which the Reshapes share.
                    var x = fold.Flatten.Inputs[0]!;
                    var y = fold.Unflatten!.Outputs[0];
                    if (!hasRange(x) || !hasRange(y))
                        continue;
                    if (!nodes.Contains(fold.Flatten))
                        nodes.Add(fold.Flatten);
                    nodes.Add(node);
                    nodes.Add(fold.Unflatten);
                    Add(x);
                    if (seen.Add(input))
                    {
                        tensors.Add(input);
                        shares[input] = shares.GetValueOrDefault(x, x);
                    }
                    Add(y);
                    seen.Add(output);
                    tensors.Add(output);
                    shares[output] = y;
                    continue;
                }
                if (!hasRange(input) || !hasRange(output))
                    continue;
                nodes.Add(node);
                Add(input);
                Add(output);
                continue;
            }
            if (IsActivationMatMul(node))
            {
                // Both operands are activations (attention's scores and weighted sum): quantized like a layer's
                // input, each with its own range, whatever produced them; ONNX Runtime runs the product on integers
                // (MatMulIntegerToFloat, or QLinearMatMul where its output is needed quantized).
                var a = node.Inputs[0]!;
                var b = node.Inputs[1]!;
                // An operand that passed through Reshape/Transpose from a quantized tensor shares its parameters.
                if (!(seen.Contains(a) || hasRange(a)) || !(seen.Contains(b) || hasRange(b)))
                    continue;
                nodes.Add(node);
                Add(a);
                Add(b);
                activation.Add(node);
                if (hasRange(Tail(node.Outputs[0])))
                    Add(Tail(node.Outputs[0]));
                continue;
            }
            if (!GraphQueries.IsDefaultDomain(node) || node.Outputs.Count != 1)
                continue;
            var data = DataInputs(node);
            if (data.Count == 0 || data.Any(v => !seen.Contains(v)))
                continue;
            if (PassThrough.Contains(node.OpType))
            {
                var output = node.Outputs[0];
                if ((!IsFloat(output) && output.Type is not null) || seen.Contains(output))
                    continue;
                nodes.Add(node);
                Add(output);
                shares[output] = shares.GetValueOrDefault(data[0], data[0]);
            }
            else if (Requantizing.Contains(node.OpType))
            {
                var output = Tail(node.Outputs[0]);
                if (!hasRange(output))
                    continue;
                nodes.Add(node);
                Add(output);
            }
        }
        // Which tensors an integer kernel needs quantized: every integer layer's input, a convolution's output (QLinearConv
        // writes uint8; QGemm and MatMulIntegerToFloat may write float), and, backwards, the inputs of a region op whose
        // output is needed. The rest keep their parameters (others may share them) but no Q/DQ pair: quantizing a
        // tensor that only float ops read costs accuracy and a round trip, and the split DequantizeLinear nodes keep
        // ONNX Runtime from fusing the float ops (GELU, SkipLayerNormalization) behind it.
        var needed = new HashSet<Value>(ReferenceEqualityComparer.Instance);
        var writes = new Dictionary<Node, Value>(ReferenceEqualityComparer.Instance);
        foreach (var node in nodes)
        {
            if (int8Layers.Contains(node))
            {
                needed.Add(node.Inputs[0]!);
                // ONNX Runtime fuses a Gemm with the activation that alone reads it into FusedGemm before it looks for
                // QDQ kernels, which leaves the weight's DequantizeLinear in front of a float kernel: such a Gemm writes
                // its (activated) output quantized, as QLinearConv always does.
                if (node.OpType == "Conv" || quantizedOutputs?.Contains(node) == true || (node.OpType == "Gemm"
                    && GraphQueries.SoleUser(node.Outputs[0]) is { } user && GraphQueries.IsDefaultDomain(user) && GemmActivations.Contains(user.OpType)))
                    needed.Add(Tail(node.Outputs[0]));
            }
            else if (activation.Contains(node))
            {
                needed.Add(node.Inputs[0]!);
                needed.Add(node.Inputs[1]!);
            }
            else
                writes[node] = PassThrough.Contains(node.OpType) ? node.Outputs[0] : Tail(node.Outputs[0]);
        }
        for (var i = nodes.Count - 1; i >= 0; i--)
            if (writes.TryGetValue(nodes[i], out var written) && needed.Contains(written))
                needed.UnionWith(DataInputs(nodes[i]));
        needed.IntersectWith(tensors);
        nodes.RemoveAll(n => writes.TryGetValue(n, out var w) && !needed.Contains(w));
        return new IntegerRegion(nodes, tensors, shares, needed);
    }

    /// <summary>
    /// A positive constant scalar that multiplies (or divides) an integer activation product and nothing else, such as
    /// attention's 1/sqrt(d) on q k^T, moves into the scale of the product's second operand's DequantizeLinear:
    /// (a s_b (q_b - z_b)) c = a (s_b c) (q_b - z_b). ONNX Runtime then runs product and scaling as one
    /// MatMulIntegerToFloat, where the float graph had them as one FusedMatMul, instead of a separate Mul on every run.
    /// </summary>
    private static void FoldScalesIntoProducts(Graph graph, IEnumerable<Node> products)
    {
        foreach (var product in products.ToList())
        {
            var output = product.Outputs[0];
            if (output.IsGraphOutput || output.Uses.Count != 1)
                continue;
            var (scaling, index) = (output.Uses[0].Node, output.Uses[0].InputIndex);
            if (scaling.OpType is not ("Mul" or "Div") || !GraphQueries.IsDefaultDomain(scaling) || scaling.Inputs.Count != 2
                || (scaling.OpType == "Div" && index != 0) || scaling.Outputs[0].IsGraphOutput)
                continue;
            // A constant of higher rank than the product would broadcast the product to a new shape.
            if (scaling.Inputs[1 - index]?.ConstantValue is not { DataType: DataType.Float, ElementCount: 1 } constant
                || (constant.Rank > 0 && (output.Type?.Shape is not { } shape || shape.Rank < constant.Rank)))
                continue;
            var c = constant.ToFloatArray()[0];
            if (scaling.OpType == "Div")
                c = 1f / c;
            if (!(c > 0) || !float.IsFinite(c))
                continue;
            if (product.Inputs[1]?.Producer is not { OpType: "DequantizeLinear" } dequantize
                || dequantize.Inputs[1]?.ConstantValue is not { DataType: DataType.Float, ElementCount: 1 } operandScale)
                continue;
            var scaled = operandScale.ToFloatArray()[0] * c;
            if (!(scaled > 0) || !float.IsFinite(scaled))
                continue;
            var scale = graph.AddInitializer(graph.UniqueName(scaling.Name + "_folded_scale"), Tensor.FromFloats("s", [], [scaled]));
            Value?[] inputs = dequantize.Inputs.Count > 2 ? [dequantize.Inputs[0], scale, dequantize.Inputs[2]] : [dequantize.Inputs[0], scale];
            var operand = new Node("DequantizeLinear", inputs, [graph.UniqueName(dequantize.Outputs[0].Name + "_scaled")],
                name: graph.UniqueName(dequantize.Name + "_scaled"));
            operand.Outputs[0].Type = dequantize.Outputs[0].Type;
            graph.InsertAfter(dequantize, operand);
            product.ReplaceInput(1, operand.Outputs[0]);
            if (dequantize.Outputs[0].Uses.Count == 0 && !dequantize.Outputs[0].IsGraphOutput)
                graph.RemoveNode(dequantize);
            graph.ReplaceAllUsesWith(scaling.Outputs[0], output);
            graph.RemoveNode(scaling);
        }
    }

    /// <summary>A MatMul of two float activations (neither a constant), e.g. attention's Q K^T and its weighted sum of V.</summary>
    private static bool IsActivationMatMul(Node node) =>
        node.OpType == "MatMul" && GraphQueries.IsDefaultDomain(node) && node.Inputs.Count == 2 && node.Outputs.Count == 1
        && node.Inputs.All(v => v is { IsInitializer: false } && v.Producer?.OpType != "Constant" && (v.Type is null || IsFloat(v)));

    /// <summary>The float tensors an op computes on (shape, index and axes inputs excluded).</summary>
    private static List<Value> DataInputs(Node node) => node.OpType switch
    {
        "Add" or "Mul" or "Concat" => node.Inputs.Where(v => v is not null).Select(v => v!).ToList(),
        _ => node.Inputs.Count > 0 && node.Inputs[0] is { } x ? [x] : [],
    };

    private static bool IsFloat(Value v) => v.Type?.ElementType == DataType.Float;

    /// <summary>
    /// The value to quantize for a node's output: through a sole Relu consumer, else the output. After a Relu the
    /// calibrated minimum is 0, so the zero point is exactly 0 and ONNX Runtime drops the Relu as redundant; a Clip is
    /// not absorbed, since whether the quantized range sits inside its bounds is a float comparison on the edge.
    /// </summary>
    private static Value Tail(Value output)
    {
        if (output.Uses.Count == 1 && !output.IsGraphOutput && output.Uses[0].Node is { OpType: "Relu" } act
            && GraphQueries.IsDefaultDomain(act) && act.Outputs.Count == 1)
            return act.Outputs[0];
        return output;
    }

    /// <summary>
    /// Whether a float kernel computes <paramref name="tensor"/>: a graph input or the output of an op outside the
    /// integer region. Such a tensor exists in float whatever is quantized, so its float readers can keep it. The output
    /// of an integer kernel (or of the Relu its zero point absorbs) exists only as uint8 once ONNX Runtime fuses the
    /// quantization into the kernel, and a float reader of it would undo that fusion.
    /// </summary>
    private static bool FloatProduced(Value tensor, HashSet<Node> integerNodes)
    {
        if (tensor.Producer is not { } producer)
            return true;
        if (integerNodes.Contains(producer))
            return false;
        return !(producer.OpType == "Relu" && producer.Inputs[0]?.Producer is { } layer && integerNodes.Contains(layer));
    }

    /// <summary>
    /// Q then DQ on a tensor. Every reader of the tensor (a graph output too) reads the DQ, unless
    /// <paramref name="integerReaders"/> is given (the tensor is computed in float, see <see cref="FloatProduced"/>): then
    /// only those read the DQ, and float readers (a residual Add, a LayerNormalization, a graph output) keep the exact
    /// value, without the rounding and without a DequantizeLinear that runs on every call.
    /// </summary>
    private static void InsertPair(Graph graph, Value tensor, (Value Scale, Value Zero, float S) p, HashSet<Node>? integerReaders)
    {
        var uses = tensor.Uses.ToList();
        var name = tensor.Name;
        var q = new Node("QuantizeLinear", [tensor, p.Scale, p.Zero], [graph.UniqueName(name + "_quantized")], name: graph.UniqueName(name + "_act_q"));
        q.Outputs[0].Type = new TensorType(DataType.UInt8, tensor.Type?.Shape);
        var dq = new Node("DequantizeLinear", [q.Outputs[0], p.Scale, p.Zero], [graph.UniqueName(name + "_dequantized")], name: graph.UniqueName(name + "_act_dq"));
        dq.Outputs[0].Type = new TensorType(DataType.Float, tensor.Type?.Shape);
        if (tensor.Producer is { } producer)
        {
            graph.InsertAfter(producer, q);
            graph.InsertAfter(q, dq);
        }
        else
        {
            graph.InsertNode(0, dq);
            graph.InsertNode(0, q);
        }
        var perAxis = new Dictionary<(int Axis, long Channels), Node?>();
        foreach (var use in uses)
        {
            if (integerReaders is not null && !integerReaders.Contains(use.Node))
                continue;
            if (use.InputIndex == 0 && FloatWeightAxis(use.Node) is { } axis)
            {
                // ONNX Runtime's WeightBiasQuantization gives a Conv, ConvTranspose or Gemm that reads a per-tensor
                // DequantizeLinear symmetric per-tensor INT8 weights of its own, which no integer kernel then consumes
                // (ConvTranspose has none on the CPU EP) and which change the values of a layer the plan keeps float.
                // A per-axis DequantizeLinear with the same scale and zero point in every channel computes the same
                // values and is not matched, so the layer keeps its float weights.
                if (!perAxis.TryGetValue(axis, out var reader))
                    perAxis[axis] = reader = PerAxisDequantize(graph, q.Outputs[0], tensor, p, axis.Axis, axis.Channels, dq);
                if (reader is not null)
                {
                    use.Node.ReplaceInput(use.InputIndex, reader.Outputs[0]);
                    continue;
                }
            }
            use.Node.ReplaceInput(use.InputIndex, dq.Outputs[0]);
        }
        var outputReadsDequantized = tensor.IsGraphOutput && integerReaders is null;
        if (dq.Outputs[0].Uses.Count == 0 && !outputReadsDequantized)
        {
            graph.RemoveNode(dq);
            if (q.Outputs[0].Uses.Count == 0)
                graph.RemoveNode(q);
        }
        if (outputReadsDequantized)
        {
            for (var i = 0; i < graph.Outputs.Count; i++)
                if (ReferenceEquals(graph.Outputs[i], tensor))
                    graph.ReplaceOutput(i, dq.Outputs[0]);
            // The output keeps its name, now on the value the integer graph delivers.
            tensor.Name = graph.UniqueName(name + "_float");
            dq.Outputs[0].Name = name;
        }
    }

    /// <summary>
    /// For a Conv, ConvTranspose or Gemm whose weight is still a float constant (a layer the plan keeps float): the axis
    /// of its data input that holds the input channels and their count; null for any other reader or an unknown count.
    /// </summary>
    private static (int Axis, long Channels)? FloatWeightAxis(Node reader)
    {
        if (!GraphQueries.IsDefaultDomain(reader) || reader.OpType is not ("Conv" or "ConvTranspose" or "Gemm")
            || reader.Inputs.Count < 2 || reader.Inputs[1] is not { Initializer: { DataType: DataType.Float } w } || w.Dims.Count < 2)
            return null;
        var group = reader.GetInt("group", 1);
        return reader.OpType switch
        {
            "Conv" => (1, w.Dims[1] * group),
            "ConvTranspose" => (1, w.Dims[0]),
            // Gemm reads A as [M, K] (transA 0) or [K, M]; K is B's reduction dimension.
            _ => (reader.GetInt("transA", 0) == 0 ? 1 : 0, reader.GetInt("transB", 0) == 0 ? w.Dims[0] : w.Dims[1]),
        };
    }

    /// <summary>A DequantizeLinear of <paramref name="quantized"/> on <paramref name="axis"/> with the tensor's scale and
    /// zero point repeated per channel; null where the tensor's rank is known and has no such axis.</summary>
    private static Node? PerAxisDequantize(Graph graph, Value quantized, Value tensor, (Value Scale, Value Zero, float S) p, int axis, long channels, Node after)
    {
        if (tensor.Type is { Shape: { } shape } && (shape.Rank <= axis || shape[axis] is { IsFixed: true } d && d.Value != channels))
            return null;
        var zero = p.Zero.Initializer!.RawData.Span[0];
        var name = tensor.Name;
        var scale = graph.AddInitializer(graph.UniqueName(name + "_act_scale_per_channel"),
            Tensor.FromFloats("s", [channels], Enumerable.Repeat(p.S, (int)channels).ToArray()));
        var zeros = graph.AddInitializer(graph.UniqueName(name + "_act_zero_point_per_channel"),
            Tensor.FromRaw("z", DataType.UInt8, [channels], Enumerable.Repeat(zero, (int)channels).ToArray()));
        var dq = new Node("DequantizeLinear", [quantized, scale, zeros], [graph.UniqueName(name + "_dequantized_float_reader")],
            name: graph.UniqueName(name + "_act_dq_float_reader"));
        dq.SetAttribute(Attribute.FromInt("axis", axis));
        dq.Outputs[0].Type = new TensorType(DataType.Float, tensor.Type?.Shape);
        graph.InsertAfter(after, dq);
        return dq;
    }

    /// <summary>
    /// Raises the weight scale of every output channel whose bias would not fit as INT32 with scale s_x * s_w[c] beside
    /// the kernel's sum of products (K products of a uint8 and an int8 at most: K * 255 * 128), to the smallest scale that
    /// fits, and rounds that channel's already rounded weights onto it (they stay within int8, the scale only grows).
    /// Null when every channel fits, or for a layout with more than one scale per channel (no INT32 bias there).
    /// </summary>
    private static (WeightQuantization Quantization, int Channels, double Largest)? FitBias(WeightQuantization q, float[] bias, float inputScale)
    {
        var layout = q.Layout;
        if (layout.BlocksPerChannel != 1 || bias.Length != layout.Channels || q.Scales.Length != layout.Channels)
            return null;
        var room = int.MaxValue - (double)layout.BlockLength * 255 * 128;
        if (room <= 0)
            return null;
        float[]? scales = null;
        sbyte[]? values = null;
        float[]? positions = null;
        int[]? indices = null;
        var channels = 0;
        var largest = 1.0;
        for (var c = 0; c < layout.Channels; c++)
        {
            var needed = Math.Abs((double)bias[c]) / (inputScale * room);
            if (!(q.Scales[c] < needed))
                continue;
            // The next float above the bound, so that |b| / (s_x s) rounds to at most the room left.
            var scale = MathF.BitIncrement((float)needed);
            if (!float.IsFinite(scale))
                continue;
            scales ??= (float[])q.Scales.Clone();
            values ??= (sbyte[])q.Values.Clone();
            positions ??= new float[q.Values.Length];
            indices ??= new int[layout.BlockLength];
            var count = layout.GatherBlock(positions, c, 0, new float[layout.BlockLength], indices);
            for (var i = 0; i < count; i++)
                values[indices[i]] = (sbyte)Math.Clamp(MathF.Round(q.Values[indices[i]] * q.Scales[c] / scale, MidpointRounding.ToEven), -128, 127);
            largest = Math.Max(largest, scale / (double)q.Scales[c]);
            scales[c] = scale;
            channels++;
        }
        return channels == 0 ? null : (q with { Values = values!, Scales = scales!, OutputErrors = null }, channels, largest);
    }

    /// <summary>
    /// The bias as INT32 with per-channel scale s_x * s_w[c] and zero point 0, what QLinearConv and QGemm take; the
    /// rounding error is at most half a product step per channel. Returns the bytes written.
    /// </summary>
    private static long QuantizeBias(Graph graph, Node node, Value bias, float inputScale, float[] weightScales)
    {
        if (bias.Initializer is not { } tensor || tensor.Dims.Count != 1 || tensor.Dims[0] != weightScales.Length)
            return 0;
        var values = tensor.ToFloatArray();
        var scales = new float[values.Length];
        var raw = new byte[values.Length * 4];
        for (var c = 0; c < values.Length; c++)
        {
            scales[c] = inputScale * weightScales[c];
            var q = Math.Clamp(Math.Round(values[c] / (double)scales[c], MidpointRounding.ToEven), int.MinValue, int.MaxValue);
            BitConverter.TryWriteBytes(raw.AsSpan(c * 4), (int)q);
        }
        var baseName = bias.Name;
        var qValue = graph.AddInitializer(graph.UniqueName(baseName + "_quantized"), Tensor.FromRaw("q", DataType.Int32, [values.Length], raw));
        var scale = graph.AddInitializer(graph.UniqueName(baseName + "_scale"), Tensor.FromFloats("s", [values.Length], scales));
        var zero = graph.AddInitializer(graph.UniqueName(baseName + "_zero_point"), Tensor.FromRaw("z", DataType.Int32, [values.Length], new byte[values.Length * 4]));
        var dq = new Node("DequantizeLinear", [qValue, scale, zero], [graph.UniqueName(baseName + "_dequantized")],
            name: graph.UniqueName(node.Name + "_bias_dq"), attributes: [Attribute.FromInt("axis", 0)]);
        dq.Outputs[0].Type = new TensorType(DataType.Float, Shape.Of(values.Length));
        graph.InsertBefore(node, dq);
        node.ReplaceInput(2, dq.Outputs[0]);
        if (bias.Uses.Count == 0 && bias.IsInitializer && !bias.IsGraphInput)
            graph.RemoveInitializer(bias);
        return raw.Length + values.Length * 8L;
    }

    /// <summary>
    /// MatMul (weight [K, N]) or Gemm (weight [K, N], or [N, K] with transB) as MatMulNBits with 4-bit storage and
    /// accuracy_level 4: the per-channel values and scales of <paramref name="q"/>, the scale repeated for every block.
    /// </summary>
    private static long ReplaceWithNBits(Graph graph, Node node, QuantLayer layer, WeightQuantization q, int bits, int blockSize)
    {
        var transposed = node.OpType == "Gemm" && node.GetInt("transB", 0) != 0;
        var k = (int)layer.WeightShape[transposed ? 1 : 0];
        var n = (int)layer.WeightShape[transposed ? 0 : 1];
        var blocks = (k + blockSize - 1) / blockSize;
        var blob = blockSize * bits / 8;
        var packed = new byte[(long)n * blocks * blob];
        var offset = 1 << (bits - 1); // the default zero point: stored = q + 2^(bits-1)
        for (var col = 0; col < n; col++)
            for (var row = 0; row < blocks * blockSize; row++)
            {
                var stored = row < k ? q.Values[transposed ? col * k + row : row * n + col] + offset : offset;
                var bitPos = row % blockSize * bits;
                packed[((long)col * blocks + row / blockSize) * blob + bitPos / 8] |= (byte)(stored << (bitPos % 8));
            }
        var scales = new float[(long)n * blocks];
        for (var col = 0; col < n; col++)
            Array.Fill(scales, q.Scales[col], col * blocks, blocks);
        var baseName = layer.WeightName;
        var b = graph.AddInitializer(graph.UniqueName(baseName + "_nbits"), Tensor.FromRaw("b", DataType.UInt8, [n, blocks, blob], packed));
        var s = graph.AddInitializer(graph.UniqueName(baseName + "_nbits_scales"), Tensor.FromFloats("s", [(long)n * blocks], scales));
        var weightValue = node.Inputs[1]!;
        var bias = node.OpType == "Gemm" && node.Inputs.Count > 2 ? node.Inputs[2] : null;
        var output = node.Outputs[0];
        // A MatMul followed by the Add of a constant [N] vector (a linear layer's bias) takes the bias as its own input,
        // so the sum happens inside the kernel.
        Node? biasAdd = null;
        if (bias is null && output.Uses.Count == 1 && !output.IsGraphOutput && output.Uses[0].Node is { OpType: "Add" } add
            && GraphQueries.IsDefaultDomain(add) && add.Inputs.Count == 2
            && add.Inputs[1 - output.Uses[0].InputIndex] is { Initializer: { } c } constant && c.DataType == DataType.Float
            && c.Dims.Count == 1 && c.Dims[0] == n)
        {
            bias = constant;
            biasAdd = add;
        }
        List<Value?> inputs = bias is null ? [node.Inputs[0], b, s] : [node.Inputs[0], b, s, null, null, bias];
        if (biasAdd is not null)
        {
            // The Add's output is the layer's output from now on.
            graph.RemoveNode(node, force: true);
            node = biasAdd;
            output = biasAdd.Outputs[0];
        }
        QdqRewriter.SwapInMatMulNBits(graph, node, weightValue, layer, inputs, k, n, bits, blockSize, accuracyLevel: 4);
        return packed.Length + scales.Length * 4L;
    }
}
