namespace OnnxQuant.Benchmarks;

/// <summary>A measurement that runs a whole stage or pipeline once and prints its figures and ratios.</summary>
public sealed record RatioBenchmark(string Name, string Usage, Func<string[], int> Run);

public static class RatioBenchmarks
{
    /// <summary>Every ratio benchmark; add new ones here.</summary>
    public static IReadOnlyList<RatioBenchmark> All { get; } =
    [
        SolverRatio.Benchmark,
        new("frontend-io", "frontend-io [--mb 600]: load/save MB/s and peak memory / file size on a generated model",
            FrontendIoBenchmark.Run),
        CompileStagesBenchmark.Benchmark,
        CurveQualityBenchmark.Benchmark,
        DeploySpeedBenchmark.Benchmark,
        CompensationBenchmark.Benchmark,
    ];

    public static RatioBenchmark? Find(string name) => All.FirstOrDefault(b => b.Name == name);
}
