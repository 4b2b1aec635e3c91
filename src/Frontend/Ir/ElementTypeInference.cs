namespace OnnxQuant.Frontend;

/// <summary>
/// The element type of a value the model leaves untyped (an intermediate tensor without value_info), from its
/// producer: the compiler exposes intermediates as graph outputs, which must carry a type, and a guess of float breaks
/// on the shape arithmetic of real exports (a Cast to int64 feeding a Reshape). Covers the operators whose output
/// type is fixed or set by an attribute; any other takes the type of its first typed input (elementwise, shape and
/// data-movement operators), and float when nothing is known.
/// </summary>
public static class ElementTypeInference
{
    private static readonly HashSet<string> Int64Outputs = new(StringComparer.Ordinal) { "Shape", "Size", "NonZero", "ArgMax", "ArgMin", "NonMaxSuppression" };

    private static readonly HashSet<string> BoolOutputs = new(StringComparer.Ordinal)
    {
        "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And", "Or", "Xor", "IsNaN", "IsInf",
    };

    /// <summary>The value's element type: its own when known, else inferred from its producer.</summary>
    public static DataType Of(Value value) => Of(value, 0);

    /// <summary>Gives <paramref name="value"/> a tensor type (inferred element type, unknown shape) when it has none.</summary>
    public static void EnsureTyped(Value value) => value.FullType ??= new TensorType(Of(value), null);

    private static DataType Of(Value value, int depth)
    {
        if (value.Type is { } known)
            return known.ElementType;
        if (value.Initializer is { } init)
            return init.DataType;
        if (value.Producer is not { } node || depth > 64)
            return DataType.Float;
        var index = value.ProducerOutputIndex;
        if (node.Domain is "" or "ai.onnx")
        {
            switch (node.OpType)
            {
                case "Cast":
                    return (DataType)node.GetInt("to", (long)DataType.Float);
                case "CastLike" when node.Inputs.Count > 1 && node.Inputs[1] is { } like:
                    return Of(like, depth + 1);
                case "Constant" when node.GetAttribute("value") is { } attribute:
                    return attribute.AsTensor().DataType;
                case "Constant" when node.GetAttribute("value_int") is not null || node.GetAttribute("value_ints") is not null:
                    return DataType.Int64;
                case "Constant" when node.GetAttribute("value_string") is not null || node.GetAttribute("value_strings") is not null:
                    return DataType.String;
                case "ConstantOfShape":
                    return node.GetAttribute("value")?.AsTensor().DataType ?? DataType.Float;
                case "TopK" when index == 1:
                case "MaxPool" when index == 1:
                case "Unique" when index > 0:
                    return DataType.Int64;
                case "EyeLike" or "RandomNormalLike" or "RandomUniformLike" when node.GetAttribute("dtype") is { } dtype:
                    return (DataType)dtype.AsInt();
                case "RandomNormal" or "RandomUniform" or "Multinomial":
                    return (DataType)node.GetInt("dtype", (long)(node.OpType == "Multinomial" ? DataType.Int32 : DataType.Float));
                case "QuantizeLinear" when node.Inputs.Count > 2 && node.Inputs[2] is { } zeroPoint:
                    return Of(zeroPoint, depth + 1);
                case "QuantizeLinear":
                    return DataType.UInt8;
                case "DequantizeLinear":
                    return DataType.Float;
                case "Where" when node.Inputs.Count > 1 && node.Inputs[1] is { } x:
                    return Of(x, depth + 1);
            }
            if (Int64Outputs.Contains(node.OpType))
                return DataType.Int64;
            if (BoolOutputs.Contains(node.OpType))
                return DataType.Bool;
        }
        foreach (var input in node.Inputs)
            if (input is not null && !input.IsOmitted)
                return Of(input, depth + 1);
        return DataType.Float;
    }
}
