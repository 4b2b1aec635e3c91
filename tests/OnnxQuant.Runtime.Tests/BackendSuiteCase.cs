using OnnxQuant.Frontend;

namespace OnnxQuant.Runtime.Tests;

/// <summary>
/// One model folder of the ONNX backend test suite (model.onnx plus test_data_set_*/input_*.pb and output_*.pb): its
/// recorded inputs run through a session and its recorded outputs compared. Shared by the runtime conformance tests
/// and the opset converter's suite run, which differ only in the session they build and the tolerances they allow.
/// </summary>
internal static class BackendSuiteCase
{
    /// <summary>Null when every recorded output of every data set matches within the tolerances; otherwise what differs.</summary>
    public static string? RunRecorded(InferenceSession session, string dir, double relativeTolerance, double absoluteTolerance)
    {
        if (session.Inputs.Concat(session.Outputs).FirstOrDefault(v => v.Kind != ValueKind.Tensor) is { } nonTensor)
            return $"'{nonTensor.Name}' is a {nonTensor.Kind}; the binding exchanges tensors only";
        var sets = Directory.EnumerateDirectories(dir, "test_data_set_*").Order(StringComparer.Ordinal).ToList();
        if (sets.Count == 0)
            return "no test_data_set_* folder";
        foreach (var set in sets)
        {
            // input_i.pb feeds the i-th graph input; files may name the tensor, but older ones leave it empty.
            var inputs = Files(set, "input")
                .Select((path, i) => new NamedTensor(session.Inputs[i].Name, AsDeclared(TensorProtoFiles.Read(path), session.Inputs[i].DataType)))
                .ToList();
            var expected = Files(set, "output").Select((path, i) => AsDeclared(TensorProtoFiles.Read(path), session.Outputs[i].DataType)).ToList();
            var names = session.Outputs.Select(o => o.Name).Take(expected.Count).ToList();
            var actual = session.Run(inputs, names);
            for (var i = 0; i < expected.Count; i++)
                if (Compare(expected[i], actual[i].Data, relativeTolerance, absoluteTolerance) is { } mismatch)
                    return $"{Path.GetFileName(set)} output '{names[i]}': {mismatch}";
        }
        return null;
    }

    /// <summary>Null when equal within tolerance (NaN equals NaN); otherwise what differs.</summary>
    public static string? Compare(TensorData expected, TensorData actual, double relativeTolerance, double absoluteTolerance)
    {
        if (expected.DataType != actual.DataType)
            return $"type {actual.DataType}, expected {expected.DataType}";
        if (!expected.Shape.SequenceEqual(actual.Shape))
            return $"shape [{string.Join(", ", actual.Shape)}], expected [{string.Join(", ", expected.Shape)}]";
        switch (expected.DataType)
        {
            case DataType.Float or DataType.Double or DataType.Float16 or DataType.BFloat16:
                var e = expected.DataType == DataType.Double ? expected.GetArray<double>() : expected.ToFloats().Select(v => (double)v).ToArray();
                var a = actual.DataType == DataType.Double ? actual.GetArray<double>() : actual.ToFloats().Select(v => (double)v).ToArray();
                for (var i = 0; i < e.Length; i++)
                {
                    if (double.IsNaN(e[i]) && double.IsNaN(a[i]) || e[i] == a[i])
                        continue;
                    if (!(Math.Abs(a[i] - e[i]) <= absoluteTolerance + relativeTolerance * Math.Abs(e[i])))
                        return $"element {i} is {a[i]}, expected {e[i]}";
                }
                return null;
            case DataType.String:
                var es = expected.GetArray<string>();
                var @as = actual.GetArray<string>();
                for (var i = 0; i < es.Length; i++)
                    if (es[i] != @as[i])
                        return $"element {i} is '{@as[i]}', expected '{es[i]}'";
                return null;
            default:
                // Integers and bools compare exactly, byte for byte.
                var eb = expected.ToBytes();
                var ab = actual.ToBytes();
                var at = eb.AsSpan().CommonPrefixLength(ab);
                return at == eb.Length && eb.Length == ab.Length ? null : $"differs at byte {at}";
        }
    }

    /// <summary>
    /// The suite was generated with numpy, which has no bfloat16: it stores BFLOAT16 tensors as UINT16 bit patterns.
    /// Reinterpreting them as declared keeps the bits and fixes the type.
    /// </summary>
    private static TensorData AsDeclared(TensorData data, DataType declared) =>
        declared == DataType.BFloat16 && data.DataType == DataType.UInt16
            ? TensorData.FromBFloat16Bits(data.GetArray<ushort>(), data.Shape)
            : data;

    private static IEnumerable<string> Files(string set, string prefix) =>
        Directory.EnumerateFiles(set, prefix + "_*.pb")
            .OrderBy(p => int.Parse(Path.GetFileNameWithoutExtension(p)[(prefix.Length + 1)..], System.Globalization.CultureInfo.InvariantCulture));
}
