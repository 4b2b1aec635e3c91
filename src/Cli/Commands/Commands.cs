using System.CommandLine;

namespace OnnxQuant.Cli;

internal static class Commands
{
    /// <summary>Every subcommand, in the order help lists them. Add a new command's factory here.</summary>
    public static IEnumerable<Command> All()
    {
        yield return CompileCommand.Create();
        yield return InspectCommand.Create();
        yield return EvalCommand.Create();
        yield return ReportCommand.Create();
        yield return SolveCommand.Create();
        yield return BenchCommand.Create();
        yield return QatRecipeCommand.Create();
        yield return QatImportCommand.Create();
        yield return VersionCommand.Create();
    }
}
