namespace OnnxQuant.Data;

/// <summary>
/// A data file (.npy, .npz, annotation JSON) that cannot be used: truncated, malformed, of an unsupported type, or
/// inconsistent with what it claims. The message names the file and says what is wrong.
/// </summary>
public sealed class DataFormatException : Exception
{
    public DataFormatException(string message) : base(message) { }
    public DataFormatException(string message, Exception inner) : base(message, inner) { }
}
