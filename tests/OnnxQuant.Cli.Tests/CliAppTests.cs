using OnnxQuant.Cli;

namespace OnnxQuant.Cli.Tests;

public class CliAppTests
{
    private static (int Code, string Out, string Err) Run(params string[] args) => CliRunner.Run(args);

    [Fact]
    public void VersionPrintsTheAssemblyVersion()
    {
        var (code, stdout, _) = Run("version");
        Assert.Equal(ExitCodes.Ok, code);
        Assert.Matches(@"^onnxquant \d+\.\d+\.\d+\s*$", stdout);
    }

    [Fact]
    public void UnknownCommandIsAnErrorAndRunsNothing()
    {
        var (code, stdout, stderr) = Run("no-such-command");
        Assert.NotEqual(ExitCodes.Ok, code);
        Assert.DoesNotContain("onnxquant 0", stdout);
        Assert.False(string.IsNullOrWhiteSpace(stderr));
    }

    [Fact]
    public void UserErrorsAreOneLineWithExitCode2()
    {
        var stderr = new StringWriter();
        var code = ErrorReporter.Report(new CliInputException("--foo and --bar\ncannot be combined"), stderr, verbose: false);
        Assert.Equal(ExitCodes.BadInput, code);
        var lines = stderr.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Single(lines);
        Assert.Equal("error: --foo and --bar cannot be combined", lines[0]);
    }

    [Fact]
    public void VerboseUserErrorsCarryTheStackTrace()
    {
        var stderr = new StringWriter();
        Exception thrown;
        try { throw new CliInputException("bad"); }
        catch (Exception ex) { thrown = ex; }
        ErrorReporter.Report(thrown, stderr, verbose: true);
        Assert.Contains(nameof(VerboseUserErrorsCarryTheStackTrace), stderr.ToString());
    }

    [Fact]
    public void BugsExitWith1AndShowTheirTrace()
    {
        var stderr = new StringWriter();
        var code = ErrorReporter.Report(new InvalidOperationException("boom"), stderr, verbose: false);
        Assert.Equal(ExitCodes.InternalError, code);
        Assert.StartsWith("internal error: boom", stderr.ToString());
        Assert.Contains(nameof(InvalidOperationException), stderr.ToString());
    }
}
