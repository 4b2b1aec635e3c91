namespace OnnxQuant.Passes;

/// <summary>
/// The user's model, data or options cannot be compiled as asked: calibration data that does not match the model,
/// an option that names nothing, a budget no allocation can meet. The message names the input and says what to do.
/// The CLI prints it as one line and exits 2.
/// </summary>
public sealed class CompileException : Exception
{
    public CompileException(string message) : base(message) { }
    public CompileException(string message, Exception inner) : base(message, inner) { }
}
