using Xunit.Abstractions;

namespace OnnxQuant.Runtime.Tests;

/// <summary>
/// The ONNX 1.12 backend node tests (libonnx-testdata) through the binding: at least 850 of 932 must match their
/// expected outputs within 1e-3 relative + 1e-5 absolute, and the failures must be exactly the known gaps listed in
/// <see cref="KnownGaps"/> — a listed test that starts passing fails this test too, so the list stays honest.
/// </summary>
public class ConformanceTests(ITestOutputHelper output)
{
    [Fact]
    public void NodeTestsMatchExpectedOutputsExceptKnownGaps()
    {
        var tests = Conformance.AllTests();
        Assert.Equal(932, tests.Count);
        var results = tests.Select(Conformance.Run).ToList();
        var passed = results.Count(r => r.Passed);
        output.WriteLine($"{passed}/{tests.Count} node tests passed; {KnownGaps.Reasons.Count} known gaps");

        var unexpectedFailures = results.Where(r => !r.Passed && !KnownGaps.Reasons.ContainsKey(r.Name))
            .Select(r => $"{r.Name}: {r.Detail}").ToList();
        var unexpectedPasses = results.Where(r => r.Passed && KnownGaps.Reasons.ContainsKey(r.Name)).Select(r => r.Name).ToList();
        var stale = KnownGaps.Reasons.Keys.Where(k => !tests.Contains(k)).ToList();
        Assert.True(unexpectedFailures.Count == 0 && unexpectedPasses.Count == 0 && stale.Count == 0,
            $"{passed}/{tests.Count} passed.\nUnexpected failures:\n  {string.Join("\n  ", unexpectedFailures)}\n"
            + $"Listed as gaps but passing (remove them from KnownGaps):\n  {string.Join("\n  ", unexpectedPasses)}\n"
            + $"Listed but not in the suite:\n  {string.Join("\n  ", stale)}");
        Assert.True(passed >= 850, $"only {passed} of {tests.Count} node tests passed");
    }

    [Fact]
    public void EveryKnownGapHasAReason() =>
        Assert.All(KnownGaps.Reasons, gap => Assert.False(string.IsNullOrWhiteSpace(gap.Value), gap.Key));
}
