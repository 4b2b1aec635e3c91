using OnnxQuant.Frontend;
using OnnxQuant.Passes.Canonicalize;
using Attribute = OnnxQuant.Frontend.Attribute;

namespace OnnxQuant.Passes.Rewrite;

/// <summary>
/// Raises a model's default-domain opset, one version at a time, rewriting every operator whose signature or
/// semantics changed on the way (ONNX's operator changelog):
/// 2-7 (the first opsets): Pad's paddings is renamed pads; Reshape's shape becomes an input (5); consumed_inputs (6)
///     and is_test (7) disappear; Concat needs its axis (4); the legacy broadcast/axis attributes of the
///     element-wise ops and Gemm give way to numpy broadcasting (7; only the suffix-aligned form converts).
/// 9: BatchNormalization drops <c>spatial</c>; Upsample's scales become an input.
/// 10: Slice's starts/ends/axes and TopK's k become inputs; Upsample becomes Resize.
/// 11: Pad's pads/value and Clip's min/max become inputs; Resize gains roi and says its (asymmetric) coordinates;
///     Scatter becomes ScatterElements.
/// 12: Dropout's ratio becomes an input.
/// 13: Squeeze/Unsqueeze/ReduceSum axes and Split's split become inputs; Softmax, LogSoftmax and Hardmax stop
///     flattening to 2-D (rewritten as Flatten, the op on the last axis, Reshape back).
/// 14: BatchNormalization loses its training outputs.
/// 16: RoiAlign's default coordinates change (the old ones are set explicitly).
/// 18: the other Reduce* axes become an input; Split needs num_outputs.
/// 20: GridSample's modes are renamed; DFT's axis becomes an input.
/// 21: GroupNormalization's scale and bias go from per group to per channel.
/// Ops and versions in between only widened their types. A model that cannot be converted is refused before anything
/// changes, naming the node, its operator and the opset.
/// </summary>
public static class OpsetConverter
{
    /// <summary>The oldest opset converted.</summary>
    public const long OldestOpset = 1;

    // Ops that took the legacy broadcast/axis attributes before opset 7.
    private static readonly HashSet<string> LegacyBroadcast = new(StringComparer.Ordinal)
    {
        "Add", "Sub", "Mul", "Div", "Pow", "And", "Or", "Xor", "Equal", "Greater", "Less", "Gemm", "PRelu",
    };

    private static readonly string[] ReduceOps18 =
        ["ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"];

    // Experimental operators of opsets 1-9 that ONNX removed without a replacement.
    private static readonly HashSet<string> Removed = new(StringComparer.Ordinal)
    {
        "ATen", "Affine", "ConstantFill", "Crop", "DynamicSlice", "GRUUnit", "GivenTensorFill", "ImageScaler",
        "ParametricSoftplus", "Scale", "ScaledTanh",
    };

    /// <summary>Raises the model to <paramref name="target"/> (nothing when it is already there or newer).</summary>
    /// <exception cref="CompileException">An operator that cannot be converted, or an opset older than 7.</exception>
    public static void Raise(Model model, long target)
    {
        var from = model.OpsetImports.Default ?? 1;
        if (from >= target)
            return;
        if (Refusal(model, target) is { } refusal)
            throw new CompileException(refusal);
        var graphs = model.Graph.AllGraphs().ToList();
        for (var version = from + 1; version <= target; version++)
            foreach (var graph in graphs)
                foreach (var node in graph.Nodes.ToList())
                    if (GraphQueries.IsDefaultDomain(node))
                        Step(graph, node, version, target);
        model.OpsetImports.Default = target;
    }

    /// <summary>Why the model cannot be raised to <paramref name="target"/>, or null when it can.</summary>
    public static string? Refusal(Model model, long target)
    {
        var from = model.OpsetImports.Default ?? 1;
        if (from >= target)
            return null;
        if (from < OldestOpset)
            return $"the model uses opset {from}; the quantized model needs opset {target} and models older than opset {OldestOpset} cannot be converted: re-export at opset 13 or newer";
        bool Crosses(long version) => from < version && version <= target;
        foreach (var graph in model.Graph.AllGraphs())
            foreach (var node in graph.Nodes.Where(GraphQueries.IsDefaultDomain))
            {
                var why = node.OpType switch
                {
                    _ when Removed.Contains(node.OpType) => "was removed from ONNX without a replacement",
                    "Scan" when Crosses(9) => "changed its batch-axis semantics at opset 9",
                    "Upsample" or "Tile" or "Split" or "Cast" or "Reshape" when from < 7 && !SimpleBeforeOpset7(node) =>
                        "uses a form of the first opsets (an extra input, or an attribute given as a string) that has no direct successor",
                    _ when from < 7 && LegacyBroadcast.Contains(node.OpType) && !SuffixBroadcast(node) =>
                        "broadcasts with the legacy axis attribute, which opset 7 replaced by numpy broadcasting",
                    "BatchNormalization" when Crosses(9) && node.GetInt("spatial", 1) == 0 =>
                        "uses spatial = 0 (per-activation statistics), which opset 9 no longer has",
                    "BatchNormalization" when Crosses(14) && UsesOutputsBeyond(node, 1) =>
                        "uses its training-mode outputs (mean, variance), which opset 14 computes differently",
                    "Dropout" when Crosses(10) && UsesOutputsBeyond(node, 1) => "uses its mask, whose type changes at opset 10",
                    "GroupNormalization" when Crosses(21) && !GroupNormalizationConvertible(node) =>
                        "has a scale or bias that is not constant, or an input whose channel count is unknown; opset 21 takes them per channel",
                    _ => null,
                };
                if (why is not null)
                    return $"node {node.Describe()} (opset {from}) {why}; it cannot be converted to opset {target}: re-export the model at opset {target}";
            }
        return null;
    }

    /// <summary>Forms of Upsample, Tile, Split, Cast and Reshape from before opset 7 that the steps convert.</summary>
    private static bool SimpleBeforeOpset7(Node node) => node.OpType switch
    {
        "Tile" or "Split" => node.Inputs.Count < (node.OpType == "Tile" ? 3 : 2),
        "Cast" => node.GetAttribute("to") is not { Kind: AttributeKind.String },
        "Reshape" => node.Inputs.Count < 2 || node.GetAttribute("shape") is null,
        _ => false, // Upsample was experimental before opset 7
    };

    /// <summary>
    /// Legacy broadcasting (broadcast = 1) aligned B with A at <c>axis</c>; without an axis, or with the axis that
    /// aligns B's last dimension with A's, it is numpy broadcasting.
    /// </summary>
    private static bool SuffixBroadcast(Node node)
    {
        if (node.GetInt("broadcast", 0) == 0 || node.GetAttribute("axis") is not { } axisAttribute)
            return true;
        var a = node.Inputs[0]?.Type?.Shape?.Rank;
        var b = node.Inputs.Count > 1 ? node.Inputs[1]?.Type?.Shape?.Rank : null;
        var axis = axisAttribute.AsInt();
        return a is { } ra && b is { } rb && (axis < 0 ? axis + ra : axis) + rb == ra;
    }

    private static bool UsesOutputsBeyond(Node node, int count) =>
        node.Outputs.Skip(count).Any(o => !o.IsOmitted && !GraphQueries.IsUnused(o));

    /// <summary>Rewrites <paramref name="node"/> from version <paramref name="version"/> - 1 to <paramref name="version"/>.</summary>
    private static void Step(Graph graph, Node node, long version, long target)
    {
        if (version <= 7)
            node.RemoveAttribute(version <= 6 ? "consumed_inputs" : "is_test");
        switch (version, node.OpType)
        {
            case (2, "Pad"):
                if (node.GetInts("paddings") is { } paddings)
                {
                    node.RemoveAttribute("paddings");
                    node.SetAttribute(Attribute.FromInts("pads", paddings));
                }
                break;
            case (4, "Concat"):
                if (node.GetAttribute("axis") is null)
                    node.SetAttribute(Attribute.FromInt("axis", 1));
                break;
            case (5, "Reshape"):
                MoveToInput(graph, node, "shape", 1, Int64s(node.GetInts("shape")));
                break;
            case (7, _) when LegacyBroadcast.Contains(node.OpType):
                node.RemoveAttribute("broadcast");
                node.RemoveAttribute("axis");
                break;
            case (9, "BatchNormalization"):
                node.RemoveAttribute("spatial");
                break;
            case (9, "Upsample"):
                MoveToInput(graph, node, "scales", 1, FloatsTensor(node, "scales"));
                break;
            case (10, "Slice"):
                var starts = node.GetInts("starts");
                var ends = node.GetInts("ends");
                var axes = node.GetInts("axes");
                MoveToInput(graph, node, "starts", 1, Int64s(starts));
                MoveToInput(graph, node, "ends", 2, Int64s(ends));
                MoveToInput(graph, node, "axes", 3, Int64s(axes));
                break;
            case (10, "TopK"):
                MoveToInput(graph, node, "k", 1, node.GetAttribute("k") is { } k ? Tensor.FromInt64s("k", [1], [k.AsInt()]) : null);
                break;
            case (10, "Upsample"):
                node.OpType = "Resize";
                if (node.GetString("mode", "nearest") is "bilinear" or "linear")
                    node.SetAttribute(Attribute.FromString("mode", "linear"));
                break;
            case (11, "Pad"):
                var value = node.GetFloat("value", 0f);
                MoveToInput(graph, node, "pads", 1, Int64s(node.GetInts("pads")));
                node.RemoveAttribute("value");
                if (value != 0f)
                    SetInput(node, 2, ScalarLike(graph, node, node.Inputs[0]!, value, target));
                break;
            case (11, "Clip"):
                var min = node.GetAttribute("min")?.AsFloat();
                var max = node.GetAttribute("max")?.AsFloat();
                node.RemoveAttribute("min");
                node.RemoveAttribute("max");
                if (min is { } lo)
                    SetInput(node, 1, ScalarLike(graph, node, node.Inputs[0]!, lo, target));
                if (max is { } hi)
                    SetInput(node, 2, ScalarLike(graph, node, node.Inputs[0]!, hi, target));
                break;
            case (11, "Resize"):
                // Resize-10 (and the Upsample it replaced) maps output to input coordinates as x / scale, flooring for
                // nearest; opset 11 must say so, and takes an (empty) roi before the scales.
                var scales = node.Inputs.Count > 1 ? node.Inputs[1] : null;
                node.TruncateInputs(1);
                node.AppendInput(graph.AddInitializer(graph.UniqueName($"{node.Name}_roi"), Tensor.FromFloats("roi", [0], [])));
                node.AppendInput(scales);
                node.SetAttribute(Attribute.FromString("coordinate_transformation_mode", "asymmetric"));
                if (node.GetString("mode", "nearest") == "nearest")
                    node.SetAttribute(Attribute.FromString("nearest_mode", "floor"));
                break;
            case (11, "Scatter"):
                node.OpType = "ScatterElements";
                break;
            case (12, "Dropout"):
                MoveToInput(graph, node, "ratio", 1, node.GetAttribute("ratio") is { } ratio ? Tensor.FromFloats("ratio", [], [ratio.AsFloat()]) : null);
                break;
            case (13, "Squeeze" or "Unsqueeze" or "ReduceSum"):
                MoveToInput(graph, node, "axes", 1, Int64s(node.GetInts("axes")));
                break;
            case (13, "Split"):
                MoveToInput(graph, node, "split", 1, Int64s(node.GetInts("split")));
                break;
            case (13, "Softmax" or "LogSoftmax" or "Hardmax"):
                FlattenSoftmax(graph, node);
                break;
            case (14, "BatchNormalization"):
                if (node.Outputs.Count > 1)
                    Replace(graph, node, node.Inputs, 1);
                break;
            case (16, "RoiAlign"):
                if (node.GetAttribute("coordinate_transformation_mode") is null)
                    node.SetAttribute(Attribute.FromString("coordinate_transformation_mode", "output_half_pixel"));
                break;
            case (18, _) when ReduceOps18.Contains(node.OpType):
                MoveToInput(graph, node, "axes", 1, Int64s(node.GetInts("axes")));
                break;
            case (18, "Split"):
                if ((node.Inputs.Count < 2 || node.Inputs[1] is null) && node.GetAttribute("num_outputs") is null)
                    node.SetAttribute(Attribute.FromInt("num_outputs", node.Outputs.Count));
                break;
            case (20, "GridSample"):
                var mode = node.GetString("mode", "bilinear");
                node.SetAttribute(Attribute.FromString("mode", mode switch { "bilinear" => "linear", "bicubic" => "cubic", _ => mode }));
                break;
            case (20, "DFT"):
                MoveToInput(graph, node, "axis", 2, Tensor.FromInt64s("axis", [], [node.GetInt("axis", 1)]));
                break;
            case (21, "GroupNormalization"):
                PerChannelGroupNormalization(graph, node);
                break;
        }
    }

    private static Tensor? Int64s(IReadOnlyList<long>? values) =>
        values is null ? null : Tensor.FromInt64s("values", [values.Count], values.ToArray());

    private static Tensor? FloatsTensor(Node node, string attribute) =>
        node.GetFloats(attribute) is { } values ? Tensor.FromFloats(attribute, [values.Count], values.ToArray()) : null;

    /// <summary>Removes the attribute and, when it had a value, feeds <paramref name="tensor"/> at the input index.</summary>
    private static void MoveToInput(Graph graph, Node node, string attribute, int inputIndex, Tensor? tensor)
    {
        node.RemoveAttribute(attribute);
        if (tensor is null)
            return;
        SetInput(node, inputIndex, graph.AddInitializer(graph.UniqueName($"{(node.Name.Length > 0 ? node.Name : node.OpType)}_{attribute}"), tensor));
    }

    private static void SetInput(Node node, int index, Value value)
    {
        while (node.Inputs.Count < index)
            node.AppendInput(null);
        if (node.Inputs.Count == index)
            node.AppendInput(value);
        else
            node.ReplaceInput(index, value);
    }

    /// <summary>
    /// A scalar of <paramref name="like"/>'s element type: a constant when the type is known (or float is all the
    /// target allows), otherwise a float constant cast like it (CastLike, opset 15).
    /// </summary>
    private static Value ScalarLike(Graph graph, Node node, Value like, float value, long target)
    {
        var name = graph.UniqueName($"{(node.Name.Length > 0 ? node.Name : node.OpType)}_const");
        var type = like.Type?.ElementType;
        if (type is { } known && known != DataType.Float)
        {
            if (Encode(known, [value]) is { } raw)
                return graph.AddInitializer(name, Tensor.FromRaw(name, known, [], raw));
        }
        var constant = graph.AddInitializer(name, Tensor.FromFloats(name, [], [value]));
        if (type == DataType.Float || target < 15)
            return constant;
        var cast = new Node("CastLike", [constant, like], [graph.UniqueName(name + "_cast")], name: graph.UniqueName(name + "_castlike"));
        graph.InsertBefore(node, cast);
        return cast.Outputs[0];
    }

    /// <summary>Little-endian bytes of the values in a numeric element type; null for types not handled here.</summary>
    private static byte[]? Encode(DataType type, float[] values)
    {
        var output = new List<byte>();
        foreach (var v in values)
        {
            byte[]? bytes = type switch
            {
                DataType.Double => BitConverter.GetBytes((double)v),
                DataType.Float16 => BitConverter.GetBytes((Half)v),
                DataType.BFloat16 => BitConverter.GetBytes((ushort)(BitConverter.SingleToUInt32Bits(v) >> 16)),
                DataType.Int8 => [(byte)(sbyte)v],
                DataType.UInt8 => [(byte)v],
                DataType.Int16 => BitConverter.GetBytes((short)v),
                DataType.UInt16 => BitConverter.GetBytes((ushort)v),
                DataType.Int32 => BitConverter.GetBytes((int)v),
                DataType.UInt32 => BitConverter.GetBytes((uint)v),
                DataType.Int64 => BitConverter.GetBytes((long)v),
                DataType.UInt64 => BitConverter.GetBytes((ulong)v),
                _ => null,
            };
            if (bytes is null)
                return null;
            output.AddRange(bytes);
        }
        return output.ToArray();
    }

    /// <summary>Replaces the node with one of the same op and attributes but other inputs and fewer outputs.</summary>
    private static void Replace(Graph graph, Node node, IEnumerable<Value?> inputs, int outputs)
    {
        var names = node.Outputs.Take(outputs).Select(o => o.Name).ToList();
        var replacement = new Node(node.OpType, inputs.ToList(), names.Select(n => graph.UniqueName(n + "_converted")), name: node.Name,
            attributes: node.Attributes.Select(a => a));
        graph.InsertBefore(node, replacement);
        for (var i = 0; i < outputs; i++)
        {
            replacement.Outputs[i].FullType = node.Outputs[i].FullType;
            graph.ReplaceAllUsesWith(node.Outputs[i], replacement.Outputs[i], replaceGraphOutputs: true);
        }
        graph.RemoveNode(node, force: true);
        for (var i = 0; i < outputs; i++)
            replacement.Outputs[i].Name = names[i];
    }

    private static bool GroupNormalizationConvertible(Node node) =>
        node.Inputs.Count >= 3 && node.Inputs[1]?.ConstantValue is not null && node.Inputs[2]?.ConstantValue is not null
        && node.Inputs[0]?.Type?.Shape is { Rank: >= 2 } shape && shape[1].Value is not null;

    /// <summary>Opset 18 scales and shifts each group; opset 21 each channel: repeat each group's value over its channels.</summary>
    private static void PerChannelGroupNormalization(Graph graph, Node node)
    {
        var channels = node.Inputs[0]!.Type!.Shape![1].Value!.Value;
        var groups = node.GetInt("num_groups", 1);
        for (var i = 1; i <= 2; i++)
        {
            var tensor = node.Inputs[i]!.ConstantValue!;
            var perGroup = tensor.ToFloatArray();
            var perChannel = new float[channels];
            for (var c = 0; c < channels; c++)
                perChannel[c] = perGroup[c / (channels / groups)];
            var name = graph.UniqueName($"{node.Name}_{(i == 1 ? "scale" : "bias")}_per_channel");
            var expanded = Tensor.FromFloats(name, [channels], perChannel);
            var raw = tensor.DataType == DataType.Float ? null : Encode(tensor.DataType, perChannel);
            node.ReplaceInput(i, graph.AddInitializer(name, raw is null ? expanded : Tensor.FromRaw(name, tensor.DataType, [channels], raw)));
        }
    }

    /// <summary>Opset &lt; 13 softmax semantics: flatten to [prod(dims[:axis]), prod(dims[axis:])], normalize rows.</summary>
    private static void FlattenSoftmax(Graph graph, Node node)
    {
        var axis = node.GetInt("axis", 1);
        var input = node.Inputs[0]!;
        var rank = input.Type?.Shape?.Rank;
        if (rank is { } r && (axis == r - 1 || axis == -1))
        {
            node.SetAttribute(Attribute.FromInt("axis", -1));
            return;
        }
        var flat = new Node("Flatten", [input], [graph.UniqueName(input.Name + "_flat")], name: graph.UniqueName(node.Name + "_flatten"),
            attributes: [Attribute.FromInt("axis", axis)]);
        var shape = new Node("Shape", [input], [graph.UniqueName(input.Name + "_shape")], name: graph.UniqueName(node.Name + "_shape"));
        graph.InsertBefore(node, flat);
        graph.InsertBefore(node, shape);
        var output = node.Outputs[0];
        var inner = new Node(node.OpType, [flat.Outputs[0]], [graph.UniqueName(output.Name + "_2d")], name: graph.UniqueName(node.Name + "_2d"),
            attributes: [Attribute.FromInt("axis", -1)]);
        graph.InsertBefore(node, inner);
        var reshape = new Node("Reshape", [inner.Outputs[0], shape.Outputs[0]], [graph.UniqueName(output.Name + "_restored")], name: graph.UniqueName(node.Name + "_reshape"));
        graph.InsertBefore(node, reshape);
        reshape.Outputs[0].Type = output.Type;
        var name = output.Name;
        var wasOutput = output.IsGraphOutput;
        graph.RemoveNode(node, force: true);
        graph.ReplaceAllUsesWith(output, reshape.Outputs[0], replaceGraphOutputs: true);
        if (wasOutput)
            reshape.Outputs[0].Name = name;
    }
}
