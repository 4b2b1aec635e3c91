using System.CommandLine;
using System.Reflection;

namespace OnnxQuant.Cli;

internal static class VersionCommand
{
    /// <summary>The tool version written into manifests and reports.</summary>
    public static string ToolVersion =>
        typeof(VersionCommand).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion
            .Split('+')[0] ?? "0.0.0";

    public static Command Create()
    {
        var command = new Command("version", "Print the tool version");
        command.SetAction(parse =>
        {
            parse.InvocationConfiguration.Output.WriteLine($"onnxquant {ToolVersion}");
            return ExitCodes.Ok;
        });
        return command;
    }
}
