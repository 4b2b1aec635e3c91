namespace OnnxQuant.Frontend;

/// <summary>
/// The one exception the frontend throws for a model it cannot use: truncated or corrupt protobuf, an unsupported IR
/// version, a graph that references names nobody defines, tensor data that does not match its dims, external data
/// that is missing or lies outside the model's folder. The message names the problem and where it is (file, graph,
/// node, tensor, byte offset) so a user can act on it without a stack trace.
/// </summary>
public sealed class FrontendException : Exception
{
    public FrontendException(string message) : base(message) { }

    public FrontendException(string message, Exception inner) : base(message, inner) { }
}
