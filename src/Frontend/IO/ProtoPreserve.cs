using Google.Protobuf;

// Access to the generated messages' unknown-field sets, so fields this schema does not know survive a round trip.
namespace OnnxQuant.Frontend.Proto
{
    internal sealed partial class ModelProto { internal UnknownFieldSet? Unknown { get => _unknownFields; set => _unknownFields = value; } }
    internal sealed partial class GraphProto { internal UnknownFieldSet? Unknown { get => _unknownFields; set => _unknownFields = value; } }
    internal sealed partial class NodeProto { internal UnknownFieldSet? Unknown { get => _unknownFields; set => _unknownFields = value; } }
    internal sealed partial class AttributeProto { internal UnknownFieldSet? Unknown { get => _unknownFields; set => _unknownFields = value; } }
    internal sealed partial class TensorProto { internal UnknownFieldSet? Unknown { get => _unknownFields; set => _unknownFields = value; } }
    internal sealed partial class ValueInfoProto { internal UnknownFieldSet? Unknown { get => _unknownFields; set => _unknownFields = value; } }
    internal sealed partial class FunctionProto { internal UnknownFieldSet? Unknown { get => _unknownFields; set => _unknownFields = value; } }
    internal sealed partial class TypeProto { internal UnknownFieldSet? Unknown { get => _unknownFields; set => _unknownFields = value; } }
}
