namespace OnnxQuant.Solvers;

/// <summary>One target of a sweep: its allocation, or the reason it has none.</summary>
public sealed record ParetoPoint(double TargetBits, Allocation? Allocation, SolverException? Error)
{
    public bool IsFeasible => Allocation is not null;
}

/// <summary>The rate-distortion front: one point per requested target, in the order requested.</summary>
public sealed record ParetoFront(IReadOnlyList<ParetoPoint> Points)
{
    public IEnumerable<ParetoPoint> Feasible => Points.Where(p => p.IsFeasible);
}

/// <summary>Allocations for many budgets from one set of curves.</summary>
public static class ParetoSweep
{
    /// <summary>
    /// Solves <paramref name="problem"/> re-targeted at each of <paramref name="targets"/>. A target that is invalid
    /// or infeasible gets its error in its own point; the others are still solved.
    /// </summary>
    public static ParetoFront Run(AllocationProblem problem, IEnumerable<double> targets, IBitAllocator allocator)
    {
        ArgumentNullException.ThrowIfNull(problem);
        ArgumentNullException.ThrowIfNull(targets);
        ArgumentNullException.ThrowIfNull(allocator);
        var points = new List<ParetoPoint>();
        foreach (var target in targets)
        {
            try
            {
                points.Add(new ParetoPoint(target, allocator.Solve(problem.WithTarget(target)), null));
            }
            catch (SolverException error)
            {
                points.Add(new ParetoPoint(target, null, error));
            }
        }
        return new ParetoFront(points);
    }
}
