namespace OnnxQuant.Cli;

/// <summary>
/// The exception types that mean "the user's input or environment is wrong", mapped to exit codes. Each component throws its own
/// type (the frontend, the solvers, the runtime binding, the passes); this is the one place that lists them.
/// </summary>
internal static class UserErrors
{
    public static int? Classify(Exception ex) => ex switch
    {
        CliInputException => ExitCodes.BadInput,
        OnnxQuant.QatBridge.QatBridgeException => ExitCodes.BadInput,
        OnnxQuant.Data.DataFormatException => ExitCodes.BadInput,
        // The model, calibration data or compile options cannot be used as asked (names the input).
        OnnxQuant.Passes.CompileException => ExitCodes.BadInput,
        // An infeasible budget or invalid curves.
        OnnxQuant.Solvers.SolverException => ExitCodes.BadInput,
        // The model's outputs, the data and the annotations do not fit together for evaluation.
        OnnxQuant.Evaluation.EvaluationException => ExitCodes.BadInput,
        OnnxQuant.Frontend.FrontendException => ExitCodes.BadInput,
        // The environment, not a bug: missing or looping paths, permissions, a full disk. .NET's messages name the path.
        IOException or UnauthorizedAccessException => ExitCodes.BadInput,
        // The ONNX Runtime library is missing or lacks the requested provider; the message says how to get one.
        OnnxQuant.Runtime.RuntimeSetupException => ExitCodes.BadInput,
        // ONNX Runtime refused the user's model or inputs.
        OnnxQuant.Runtime.OrtException => ExitCodes.BadInput,
        _ => null,
    };
}

/// <summary>A problem with the command line itself that the parser cannot see (e.g. two options that conflict).</summary>
public sealed class CliInputException(string message) : Exception(message);
