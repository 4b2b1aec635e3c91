using Ort = Microsoft.ML.OnnxRuntime;

namespace OnnxQuant.Runtime;

/// <summary>Error codes of ONNX Runtime's OrtErrorCode, in the C API's order.</summary>
public enum OrtErrorCode
{
    Ok = 0,
    Fail = 1,
    InvalidArgument = 2,
    NoSuchFile = 3,
    NoModel = 4,
    EngineError = 5,
    RuntimeException = 6,
    InvalidProtobuf = 7,
    ModelLoaded = 8,
    NotImplemented = 9,
    InvalidGraph = 10,
    EpFail = 11,
    ModelLoadCanceled = 12,
    ModelRequiresCompilation = 13,
    NotFound = 14,
}

/// <summary>ONNX Runtime refused a call (bad model, wrong input, unsupported operator); carries ORT's code and message.</summary>
public sealed class OrtException(OrtErrorCode code, string message, string ortMessage) : Exception(message)
{
    public OrtErrorCode ErrorCode { get; } = code;

    /// <summary>ONNX Runtime's own message, without the operation this binding prefixes.</summary>
    public string OrtMessage { get; } = ortMessage;

    /// <summary>
    /// The essential part of ORT's message: errors raised deep inside ORT carry a source location and an
    /// "[ONNXRuntimeError] : code : NAME :" prefix that mean nothing to a user.
    /// </summary>
    public string ShortMessage
    {
        get
        {
            const string marker = "[ONNXRuntimeError] : ";
            var at = OrtMessage.LastIndexOf(marker, StringComparison.Ordinal);
            if (at < 0)
                return OrtMessage.Trim();
            var rest = OrtMessage[(at + marker.Length)..];
            var parts = rest.Split(" : ", 3);
            return (parts.Length == 3 ? parts[2] : rest).Trim();
        }
    }
}

/// <summary>Turns the managed API's exceptions into <see cref="OrtException"/>, keeping ORT's code and message.</summary>
internal static class OrtErrors
{
    private const string CodePrefix = "[ErrorCode:";

    /// <summary>
    /// The managed API carries the code only in its message ("[ErrorCode:InvalidArgument] ..."), named after its own
    /// internal enum, whose names for codes 11 and 12 lag behind the C API's; those are mapped back to the number ORT
    /// returned.
    /// </summary>
    public static OrtException From(Ort.OnnxRuntimeException ex, string operation)
    {
        var message = ex.Message;
        var code = OrtErrorCode.Fail;
        if (message.StartsWith(CodePrefix, StringComparison.Ordinal) && message.IndexOf(']', StringComparison.Ordinal) is var end and > 0)
        {
            var name = message[CodePrefix.Length..end];
            code = name switch
            {
                "ShapeInferenceNotRegistered" => OrtErrorCode.EpFail,
                "RequirementNotRegistered" => OrtErrorCode.ModelLoadCanceled,
                _ => Enum.TryParse<OrtErrorCode>(name, out var parsed) ? parsed : OrtErrorCode.Fail,
            };
            message = message[(end + 1)..].TrimStart();
        }
        return new OrtException(code, $"{operation}: {message}", message);
    }

    /// <summary>
    /// True when the managed session refused a model only because a graph input or output has an element type its
    /// enum lacks (INT4, UINT4, INT2, UINT2, the FLOAT8 and FLOAT4 kinds): ORT itself accepts such models.
    /// </summary>
    public static bool IsUnregisteredElementType(Ort.OnnxRuntimeException ex) =>
        ex.Message.Contains("Unregistered TensorElementType", StringComparison.Ordinal);
}

/// <summary>
/// The ONNX Runtime library cannot be used as asked: not found, not loadable, too old, or lacking the requested
/// execution provider. The message says how to fix it; the CLI reports it as a user error.
/// </summary>
public sealed class RuntimeSetupException(string message, Exception? inner = null) : Exception(message, inner);
