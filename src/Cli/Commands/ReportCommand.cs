using System.CommandLine;
using OnnxQuant.Passes.Artifact;

namespace OnnxQuant.Cli;

/// <summary>
/// <c>onnxquant report OUT_DIR</c>: writes OUT_DIR/report.html again from the compile's manifest.json and report.json
/// files alone (the page every compile writes), e.g. after an upgrade of the page or to restore a deleted one.
/// </summary>
internal static class ReportCommand
{
    public static Command Create()
    {
        var folder = new Argument<string>("folder") { Description = "The output folder of a compile (holds manifest.json)" };
        var command = new Command("report", "Regenerate report.html (rate-distortion front, bit allocation, error curves) from a compile's JSON reports");
        command.Arguments.Add(folder);
        command.SetAction(parse =>
        {
            var dir = parse.GetValue(folder)!;
            if (!Directory.Exists(dir))
                throw new CliInputException($"{dir}: no such folder; give the -o folder of a compile");
            var path = HtmlReportWriter.Regenerate(dir);
            parse.InvocationConfiguration.Output.WriteLine($"written: {path}");
            return ExitCodes.Ok;
        });
        return command;
    }
}
