using Xunit.Abstractions;

namespace OnnxQuant.Passes.Tests.Rewrite;

/// <summary>
/// The opset converter over the ONNX backend test suite: every model below opset 21 that ONNX Runtime runs correctly
/// at its own opset is raised to 21 and must still match the suite's expected outputs (and the same at 25, where ONNX
/// Runtime 1.30 has the kernels). The models that cannot be converted are listed with their reasons; a listed model
/// that converts, or one missing from the suite, fails the test, so the list stays honest.
/// </summary>
public class OpsetConversionConformanceTests(ITestOutputHelper output)
{
    /// <summary>Models the converter refuses or converts wrongly, with the reason.</summary>
    private static readonly Dictionary<string, string> CannotConvert = new(StringComparer.Ordinal)
    {
        ["node/test_scan_sum"] = "Scan-8 iterates over a batch axis that Scan-9 removed; converting would need the body rewritten",
    };

    [Fact]
    public void SuiteModelsRaisedTo21And25MatchTheirExpectedOutputs()
    {
        var models = BackendSuiteConversion.Models();
        Assert.True(models.Count > 1000, $"{models.Count} suite models found under {BackendSuiteConversion.Root}: install libonnx-testdata (dotnet cake --target=setup)");
        var problems = new List<string>();
        foreach (var target in new long[] { 21, 25 })
        {
            var results = models.Select(m => BackendSuiteConversion.Run(m, target)).ToList();
            var counted = results.Where(r => r.Outcome is not (ConversionOutcome.NotBelowTarget or ConversionOutcome.BaselineFails)).ToList();
            var matches = counted.Count(r => r.Outcome == ConversionOutcome.Matches);
            var noKernel = counted.Count(r => r.Outcome == ConversionOutcome.NoKernel);
            output.WriteLine($"opset {target}: {matches} of {counted.Count} converted and matching; {noKernel} without an ONNX Runtime kernel at {target}; "
                + $"{results.Count(r => r.Outcome == ConversionOutcome.BaselineFails)} not counted (ONNX Runtime fails them at their own opset)");
            foreach (var r in counted.Where(r => r.Outcome == ConversionOutcome.NoKernel))
                output.WriteLine($"  {r.Name}: no kernel at {target}: {r.Detail}");
            foreach (var r in counted.Where(r => r.Outcome is ConversionOutcome.Refused or ConversionOutcome.Mismatch))
            {
                output.WriteLine($"  {r.Name}: {r.Outcome}: {r.Detail}");
                if (!CannotConvert.ContainsKey(r.Name))
                    problems.Add($"opset {target}: {r.Name}: {r.Outcome}: {r.Detail}");
            }
            if (target == 21)
            {
                if (noKernel > 0)
                    problems.Add($"opset 21: {noKernel} converted models lack a kernel, which ONNX Runtime 1.30 has for every opset-21 operator");
                foreach (var name in CannotConvert.Keys)
                    if (results.FirstOrDefault(r => r.Name == name) is not { Outcome: ConversionOutcome.Refused or ConversionOutcome.Mismatch })
                        problems.Add($"{name} is listed as not convertible but is {results.FirstOrDefault(r => r.Name == name)?.Outcome.ToString() ?? "not in the suite"}: remove it from the list");
            }
        }
        Assert.True(problems.Count == 0, string.Join("\n", problems));
    }
}
