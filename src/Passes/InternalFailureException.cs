namespace OnnxQuant.Passes;

/// <summary>
/// The compiler broke one of its own guarantees: ONNX Runtime rejected a model the compiler wrote, or an internal
/// invariant does not hold. This is a bug, never the user's input: the CLI exits with the internal-error code and
/// prints what to attach to a bug report, and <see cref="DebugDirectory"/> keeps the failing artifact.
/// </summary>
public sealed class InternalFailureException(string message, string? debugDirectory, Exception? inner = null)
    : Exception(message, inner)
{
    /// <summary>Where the failing model and the error were saved, or null when nothing could be saved.</summary>
    public string? DebugDirectory { get; } = debugDirectory;
}
