using OnnxQuant.Cli;

namespace OnnxQuant.Cli.Tests;

/// <summary>Runs the CLI in process with captured output, as a user's shell would see it.</summary>
internal static class CliRunner
{
    public static (int Code, string Out, string Err) Run(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        var code = CliApp.Run(args, stdout, stderr);
        return (code, stdout.ToString(), stderr.ToString());
    }
}
