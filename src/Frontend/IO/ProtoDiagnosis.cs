using Google.Protobuf;
using OnnxQuant.Frontend.Proto;

namespace OnnxQuant.Frontend;

/// <summary>
/// After a parse failure, finds where the damage is: walks the top-level fields and the graph's fields one at a time
/// (with the protobuf library, not by hand) and names the first one that does not parse, with its byte offset.
/// </summary>
internal static class ProtoDiagnosis
{
    private static readonly Dictionary<int, (string Name, MessageParser Parser)> ModelFields = new()
    {
        [7] = ("graph", GraphProto.Parser),
        [8] = ("opset_import", OperatorSetIdProto.Parser),
        [14] = ("metadata_props", StringStringEntryProto.Parser),
        [20] = ("training_info", TrainingInfoProto.Parser),
        [25] = ("functions", FunctionProto.Parser),
        [26] = ("configuration", DeviceConfigurationProto.Parser),
    };

    private static readonly Dictionary<int, (string Name, MessageParser Parser)> GraphFields = new()
    {
        [1] = ("node", NodeProto.Parser),
        [5] = ("initializer", TensorProto.Parser),
        [11] = ("input", ValueInfoProto.Parser),
        [12] = ("output", ValueInfoProto.Parser),
        [13] = ("value_info", ValueInfoProto.Parser),
        [15] = ("sparse_initializer", SparseTensorProto.Parser),
        [14] = ("quantization_annotation", TensorAnnotation.Parser),
        [16] = ("metadata_props", StringStringEntryProto.Parser),
    };

    /// <summary>"in graph node #12 (bytes 340..512)" or similar; never throws.</summary>
    public static string Locate(byte[] bytes)
    {
        try
        {
            return Walk(bytes, 0, bytes.Length, ModelFields, "model") ?? "the damage could not be located";
        }
        catch (Exception)
        {
            return "the damage could not be located";
        }
    }

    private static string? Walk(byte[] bytes, int start, int end, Dictionary<int, (string Name, MessageParser Parser)> known, string where)
    {
        var input = new CodedInputStream(bytes, start, end - start);
        var counts = new Dictionary<int, int>();
        while (true)
        {
            var fieldStart = start + (int)input.Position;
            uint tag;
            try
            {
                tag = input.ReadTag();
            }
            catch (InvalidProtocolBufferException)
            {
                return $"bad field tag in {where} at byte {fieldStart}";
            }
            if (tag == 0) return null;
            var number = WireFormat.GetTagFieldNumber(tag);
            var index = counts[number] = counts.GetValueOrDefault(number) + 1;
            var label = known.TryGetValue(number, out var k) ? $"{k.Name} #{index}" : $"field {number}";
            if (WireFormat.GetTagWireType(tag) != WireFormat.WireType.LengthDelimited)
            {
                try { input.SkipLastField(); }
                catch (InvalidProtocolBufferException) { return $"bad {label} of {where} at byte {fieldStart}"; }
                continue;
            }
            ByteString content;
            try { content = input.ReadBytes(); }
            catch (InvalidProtocolBufferException)
            {
                return $"{label} of {where} at byte {fieldStart} runs past the end of its message";
            }
            if (!known.TryGetValue(number, out var field)) continue;
            var contentEnd = start + (int)input.Position;
            var contentStart = contentEnd - content.Length;
            try
            {
                field.Parser.ParseFrom(content);
            }
            catch (InvalidProtocolBufferException)
            {
                var inner = number == 7 && known == ModelFields
                    ? Walk(bytes, contentStart, contentEnd, GraphFields, "the graph")
                    : null;
                return inner ?? $"in {where} {field.Name} #{index} (bytes {contentStart}..{contentEnd})";
            }
        }
    }
}
