using System.Diagnostics;
using System.Globalization;

namespace OnnxQuant.Solvers;

/// <param name="Epsilon">Rate tolerance: the search stops once the rate is within epsilon of the target.</param>
/// <param name="AllowOvershoot">
/// False (default): the rate never exceeds the target, so the result meets the same budget as the DP.
/// True: the rate may exceed the target by up to epsilon (|rate - R| &lt;= eps on both sides, as F-LBQ-LG states it).
/// </param>
/// <param name="MaxIterations">Cap on binary-search steps (the search normally ends far earlier).</param>
public sealed record LagrangianOptions(double Epsilon = 0.02, bool AllowOvershoot = false, int MaxIterations = 200)
{
    public static LagrangianOptions Default { get; } = new();
}

/// <summary>
/// F-LBQ-LG: for a multiplier lambda each free unit takes b_u(lambda) = argmin_b D_u(b) + lambda n_u b over its
/// candidates (all &gt;= b_min); the rate falls as lambda grows. A binary search on log2(lambda), over a range set from
/// the curves' own slopes, finds the smallest lambda whose rate meets the budget and stops as soon as the rate is
/// within epsilon of the target. Every answer is a vertex of each unit's lower convex hull, so the result lies on
/// the convex hull of the exact front; its distortion is never below the DP's.
/// <para>
/// If the hull jumps over the window [R - eps, R] (a step of the rate larger than eps), the search narrows to the
/// break point and returns the best feasible hull point, flagged in the stats and warnings.
/// </para>
/// <para>Tie-break (deterministic): a unit whose objective ties between widths takes the fewer bits. With the
/// problem's tie rule on, the search runs on snapped curves tilted towards more weight-bits (<see cref="TieRule"/>),
/// so a flat stretch of a curve is taken when the budget allows and near-ties resolve the same way everywhere.</para>
/// </summary>
public sealed class LagrangianAllocator(LagrangianOptions? options = null) : IBitAllocator
{
    public LagrangianOptions Options { get; } = Validate(options ?? LagrangianOptions.Default);

    /// <summary>Convenience: the default options with another epsilon.</summary>
    public LagrangianAllocator(double epsilon) : this(new LagrangianOptions(epsilon)) { }

    public Allocation Solve(AllocationProblem problem)
    {
        ArgumentNullException.ThrowIfNull(problem);
        var clock = Stopwatch.StartNew();
        problem.EnsureFeasible();
        var free = new FreeUnits(problem);
        var eps = Options.Epsilon;
        var budget = free.Budget;
        var baseCost = problem.BudgetBits - free.Budget;
        if (Options.AllowOvershoot)
            budget = (long)Math.Min((double)long.MaxValue, Math.Floor((problem.TargetBits + eps) * problem.TotalSize)) - baseCost;
        // Incremental cost at or above this is within the window (rate >= R - eps).
        var windowLow = (problem.TargetBits - eps) * problem.TotalSize - baseCost;

        var search = Search(free, budget, windowLow, Options.MaxIterations);
        var best = search.Choice;
        var converged = search.Converged;

        var warnings = new List<SolverWarning>();
        if (!converged)
        {
            var bitsMissed = free.ToBits(problem, best);
            var rate = problem.Prepared.Select((p, i) => p.Size * (long)bitsMissed[i]).Sum() / (double)problem.TotalSize;
            warnings.Add(new SolverWarning(SolverWarningKind.LagrangianWindowMissed, null,
                $"lagrangian: no multiplier gives a rate within {Fmt(eps)} of target {Fmt(problem.TargetBits)} " +
                $"(the convex hull steps from above the budget to {Fmt(rate)}); returned that best feasible hull point — " +
                "the dp solver can use the remaining budget"));
        }
        var stats = new LagrangianStats(search.Lambda * free.KeyScale, search.Iterations, eps, !converged, Options.AllowOvershoot)
        {
            Elapsed = clock.Elapsed, TieTolerance = problem.TieTolerance, TieStep = problem.TieStep,
        };
        return new Allocation(problem, free.ToBits(problem, best), stats, warnings);
    }

    /// <summary>Result of the multiplier search: a candidate index per free unit.</summary>
    internal readonly record struct HullPoint(int[] Choice, long Cost, double Lambda, int Iterations, bool Converged);

    /// <summary>
    /// Binary search on log2(lambda) for the smallest multiplier whose incremental cost fits <paramref name="budget"/>,
    /// stopping early once the cost reaches <paramref name="windowLow"/>. A window above the budget never stops early,
    /// so the search narrows to the break point and returns the most expensive hull point that fits.
    /// </summary>
    internal static HullPoint Search(FreeUnits free, long budget, double windowLow, int maxIterations)
    {
        var (minSlope, maxSlope) = SlopeRange(free);
        var best = new int[free.Count];
        if (maxSlope <= 0)
        {
            // No curve drops with more bits: the cheapest widths are optimal (ties go to fewer bits).
            return new HullPoint(best, Choose(free, 1, best), 1, 0, true);
        }
        var choice = new int[free.Count];
        double lo = Math.Log2(minSlope) - 1, hi = Math.Log2(maxSlope) + 1;
        // Above every slope each unit takes its fewest bits: the least rate, feasible by EnsureFeasible.
        var bestCost = Choose(free, Math.Pow(2, hi), best);
        var lambda = Math.Pow(2, hi);
        if (bestCost >= windowLow)
            return new HullPoint(best, bestCost, lambda, 0, true);
        // Below every positive slope each unit takes its least distortion: if that fits, nothing beats it.
        var loCost = Choose(free, Math.Pow(2, lo), choice);
        if (loCost <= budget)
            return new HullPoint(choice, loCost, Math.Pow(2, lo), 0, true);
        var iterations = 0;
        while (iterations < maxIterations)
        {
            var mid = 0.5 * (lo + hi);
            if (mid <= lo || mid >= hi)
                break; // the interval cannot shrink further: the rate steps over the window here
            iterations++;
            var cost = Choose(free, Math.Pow(2, mid), choice);
            if (cost > budget)
            {
                lo = mid;
                continue;
            }
            hi = mid;
            lambda = Math.Pow(2, mid);
            bestCost = cost;
            (best, choice) = (choice, best);
            if (cost >= windowLow)
                return new HullPoint(best, bestCost, lambda, iterations, true);
        }
        return new HullPoint(best, bestCost, lambda, iterations, false);
    }

    /// <summary>b_u(lambda) for every free unit into <paramref name="choice"/>; returns the total incremental cost.</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    private static long Choose(FreeUnits free, double lambda, int[] choice)
    {
        var offsets = free.Offsets;
        var dist = free.Distortion;
        var cost = free.Cost;
        long total = 0;
        for (var j = 0; j < choice.Length; j++)
        {
            int start = offsets[j], end = offsets[j + 1];
            var bestK = start;
            var bestValue = dist[start]; // incremental cost 0
            for (var i = start + 1; i < end; i++)
            {
                var value = dist[i] + lambda * cost[i];
                if (value < bestValue)
                {
                    bestValue = value;
                    bestK = i;
                }
            }
            choice[j] = bestK - start;
            total += cost[bestK];
        }
        return total;
    }

    /// <summary>Least and greatest positive pairwise slope (D_j - D_k) / (n (b_k - b_j)) over all units.</summary>
    private static (double Min, double Max) SlopeRange(FreeUnits free)
    {
        double min = double.PositiveInfinity, max = 0;
        for (var j = 0; j < free.Count; j++)
            for (var a = free.Offsets[j]; a < free.Offsets[j + 1]; a++)
                for (var b = a + 1; b < free.Offsets[j + 1]; b++)
                {
                    var slope = (free.Distortion[a] - free.Distortion[b]) / (free.Cost[b] - free.Cost[a]);
                    if (slope > 0)
                    {
                        min = Math.Min(min, slope);
                        max = Math.Max(max, slope);
                    }
                }
        return (min, max);
    }

    private static string Fmt(double v) => v.ToString("0.####", CultureInfo.InvariantCulture);

    private static LagrangianOptions Validate(LagrangianOptions options)
    {
        if (!double.IsFinite(options.Epsilon) || options.Epsilon < 0)
            throw new SolverException(SolverErrorKind.InvalidProblem,
                $"epsilon must be a finite non-negative number, got {options.Epsilon.ToString(CultureInfo.InvariantCulture)}");
        if (options.MaxIterations < 1)
            throw new SolverException(SolverErrorKind.InvalidProblem, $"MaxIterations must be at least 1, got {options.MaxIterations}");
        return options;
    }
}
