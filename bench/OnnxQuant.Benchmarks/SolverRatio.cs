using System.Diagnostics;
using System.Globalization;
using OnnxQuant.Solvers;

namespace OnnxQuant.Benchmarks;

/// <summary>
/// Ratio benchmark `solvers`: median wall time of each solver on the synthetic ViT-like problems at 1,000 and 10,000
/// units (6 widths, target 4 bits), and the ratio of the seed paper's "within one second on CPU" for its Lagrangian
/// solver to ours. CPU time (process time, coarse: ~1 ms ticks on Linux) is printed beside wall time because a
/// loaded machine inflates wall time. Usage: solvers [repeats=21].
/// </summary>
public static class SolverRatio
{
    private const double SeedSeconds = 1.0;

    public static RatioBenchmark Benchmark { get; } = new("solvers", "solvers [repeats=21]", Run);

    private static int Run(string[] args)
    {
        var repeats = args.Length > 0 ? int.Parse(args[0], CultureInfo.InvariantCulture) : 21;
        Console.WriteLine($"solver timing, median of {repeats} runs (synthetic ViT-like curves, 6 widths, target 4 bits)");
        foreach (var units in new[] { 1_000, 10_000 })
        {
            var problem = SyntheticCurves.Problem(units);
            foreach (var (name, solver) in new (string, IBitAllocator)[]
                     {
                         ("lagrangian", new LagrangianAllocator()),
                         ("dp (10,000 cells)", new DpAllocator(new DpOptions(MaxCells: 10_000))),
                     })
            {
                var result = solver.Solve(problem); // warm-up (JIT)
                var times = new double[repeats];
                var cpu = new double[repeats];
                var process = Process.GetCurrentProcess();
                for (var i = 0; i < repeats; i++)
                {
                    process.Refresh();
                    var cpuStart = process.TotalProcessorTime;
                    var clock = Stopwatch.StartNew();
                    result = solver.Solve(problem);
                    times[i] = clock.Elapsed.TotalMilliseconds;
                    process.Refresh();
                    cpu[i] = (process.TotalProcessorTime - cpuStart).TotalMilliseconds;
                }
                Array.Sort(times);
                Array.Sort(cpu);
                var median = times[repeats / 2];
                var medianCpu = cpu[repeats / 2];
                var detail = result.Stats switch
                {
                    LagrangianStats lg => $"{lg.Iterations} iterations",
                    DpStats dp => $"{dp.Cells} cells, gap bound {dp.OptimalityGapBound / result.PredictedDistortion:P3} of distortion",
                    _ => "",
                };
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"{units,6} units  {name,-18} wall {median,9:F3} ms  cpu {medianCpu,9:F3} ms  rate {result.Rate:F4}  {detail}  seed 1 s / ours (wall) = {SeedSeconds * 1000 / median:F0}x"));
            }
        }
        return 0;
    }
}
