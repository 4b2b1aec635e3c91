using Google.Protobuf;

namespace OnnxQuant.QatBridge;

/// <summary>
/// Counts QuantizeLinear/DequantizeLinear nodes of a serialized ModelProto's main graph by walking the protobuf wire
/// format (ModelProto.graph = 7, GraphProto.node = 1, NodeProto.op_type = 4); it needs no schema and copies nothing
/// but the op-type strings.
/// </summary>
internal static class OnnxOpCounter
{
    private const int ModelGraph = 7;
    private const int GraphNode = 1;
    private const int NodeOpType = 4;

    /// <exception cref="QatBridgeException">The bytes are not a protobuf message or have no graph.</exception>
    public static (int Quantize, int Dequantize) CountQdq(byte[] model, string where)
    {
        try
        {
            var graph = FindField(ByteString.CopyFrom(model), ModelGraph)
                ?? throw new QatBridgeException($"{where}: the ONNX model has no graph");
            int q = 0, dq = 0;
            var input = graph.CreateCodedInput();
            uint tag;
            while ((tag = input.ReadTag()) != 0)
            {
                if (WireFormat.GetTagFieldNumber(tag) == GraphNode && WireFormat.GetTagWireType(tag) == WireFormat.WireType.LengthDelimited)
                {
                    var op = FindField(input.ReadBytes(), NodeOpType)?.ToStringUtf8();
                    if (op == "QuantizeLinear") q++;
                    else if (op == "DequantizeLinear") dq++;
                }
                else
                    input.SkipLastField();
            }
            return (q, dq);
        }
        catch (InvalidProtocolBufferException e)
        {
            throw new QatBridgeException($"{where}: not a valid ONNX file ({e.Message})", e);
        }
    }

    private static ByteString? FindField(ByteString message, int field)
    {
        var input = message.CreateCodedInput();
        uint tag;
        ByteString? found = null;
        while ((tag = input.ReadTag()) != 0)
        {
            if (WireFormat.GetTagFieldNumber(tag) == field && WireFormat.GetTagWireType(tag) == WireFormat.WireType.LengthDelimited)
                found = input.ReadBytes(); // the last occurrence wins, as protobuf merging does for messages' scalars
            else
                input.SkipLastField();
        }
        return found;
    }
}
