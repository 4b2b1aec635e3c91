namespace OnnxQuant.QatBridge;

/// <summary>
/// A recipe, learned-scales file or trained student that cannot be used: malformed JSON, a field out of range, a
/// student that ONNX Runtime refuses or that produces non-finite outputs. The message names the file and the field
/// and says what to do. The CLI prints it as one line and exits 2.
/// </summary>
public sealed class QatBridgeException : Exception
{
    public QatBridgeException(string message) : base(message) { }
    public QatBridgeException(string message, Exception inner) : base(message, inner) { }
}
