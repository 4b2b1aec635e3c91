using BenchmarkDotNet.Attributes;
using OnnxQuant.Solvers;

namespace OnnxQuant.Benchmarks;

/// <summary>
/// Solver speed at 100, 1,000 and 10,000 units x 6 widths, target 4 bits. The DP runs on a 10,000-cell budget axis
/// (the exact axis of these sizes is longer, so it is bucketed down to 10,000 cells with a reported gap bound).
/// Targets: Lagrangian &lt;= 1 ms and DP &lt;= 50 ms at 1,000 units.
/// </summary>
[MemoryDiagnoser]
public class SolverBenchmarks
{
    private AllocationProblem _problem = null!;
    private readonly LagrangianAllocator _lagrangian = new();
    private readonly DpAllocator _dp = new(new DpOptions(MaxCells: 10_000));

    [Params(100, 1_000, 10_000)]
    public int Units { get; set; }

    [GlobalSetup]
    public void Setup() => _problem = SyntheticCurves.Problem(Units);

    [Benchmark]
    public Allocation Lagrangian() => _lagrangian.Solve(_problem);

    [Benchmark]
    public Allocation Dp10kCells() => _dp.Solve(_problem);
}
