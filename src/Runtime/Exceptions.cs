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
public sealed class OrtException(OrtErrorCode code, string message) : Exception(message)
{
    public OrtErrorCode ErrorCode { get; } = code;
}

/// <summary>
/// The ONNX Runtime library cannot be used as asked: not found, not loadable, too old, or lacking the requested
/// execution provider. The message says how to fix it; the CLI reports it as a user error.
/// </summary>
public sealed class RuntimeSetupException(string message, Exception? inner = null) : Exception(message, inner);
