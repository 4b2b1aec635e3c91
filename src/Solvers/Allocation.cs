namespace OnnxQuant.Solvers;

/// <summary>One unit's chosen width.</summary>
public sealed record UnitAllocation(string Name, long Size, int Bits, double Distortion);

/// <summary>
/// A solved allocation: bits per unit in the problem's unit order, the achieved rate
/// (sum n_u b_u / sum n_u over all units, pinned ones included) and the predicted distortion sum_u D_u(b_u).
/// </summary>
public sealed class Allocation
{
    private readonly Dictionary<string, int> _byName;

    internal Allocation(AllocationProblem problem, int[] bits, SolverStats stats, IReadOnlyList<SolverWarning> solverWarnings)
    {
        var units = new UnitAllocation[bits.Length];
        long cost = 0;
        double distortion = 0;
        for (var i = 0; i < bits.Length; i++)
        {
            var p = problem.Prepared[i];
            var k = Array.IndexOf(p.Bits, bits[i]);
            if (k < 0)
                throw new InvalidOperationException($"solver chose {bits[i]} bits for unit '{p.Name}', which is not a candidate");
            units[i] = new UnitAllocation(p.Name, p.Size, bits[i], p.Distortion[k]);
            cost += p.Size * (long)bits[i];
            distortion += p.Distortion[k];
        }
        if (cost > problem.BudgetBits && stats is not LagrangianStats { AllowOvershoot: true })
            throw new InvalidOperationException($"solver exceeded the budget: {cost} > {problem.BudgetBits} weight-bits");
        Units = units;
        TargetBits = problem.TargetBits;
        CostBits = cost;
        Rate = (double)cost / problem.TotalSize;
        PredictedDistortion = distortion;
        Stats = stats;
        Warnings = [.. problem.Warnings, .. solverWarnings];
        _byName = units.ToDictionary(u => u.Name, u => u.Bits, StringComparer.Ordinal);
    }

    /// <summary>Per-unit result in the problem's unit order.</summary>
    public IReadOnlyList<UnitAllocation> Units { get; }

    /// <summary>Bits per unit in the problem's unit order.</summary>
    public IReadOnlyList<int> Bits => Units.Select(u => u.Bits).ToArray();

    public double TargetBits { get; }

    /// <summary>sum_u n_u b_u.</summary>
    public long CostBits { get; }

    /// <summary>sum_u n_u b_u / sum_u n_u.</summary>
    public double Rate { get; }

    /// <summary>sum_u D_u(b_u) (additivity assumed).</summary>
    public double PredictedDistortion { get; }

    public SolverStats Stats { get; }

    /// <summary>The problem's validation warnings followed by the solver's own.</summary>
    public IReadOnlyList<SolverWarning> Warnings { get; }

    /// <summary>The width chosen for the unit named <paramref name="name"/>.</summary>
    /// <exception cref="KeyNotFoundException">No unit has that name.</exception>
    public int BitsOf(string name) =>
        _byName.TryGetValue(name, out var b) ? b : throw new KeyNotFoundException($"no unit named '{name}' in the allocation");
}

/// <summary>
/// How a solver got its answer. <see cref="Elapsed"/> is wall time and differs run to run: it is kept out of every
/// output that must be byte-identical (curves files, JSON results); everything else is deterministic.
/// </summary>
public abstract record SolverStats(string Solver)
{
    public TimeSpan Elapsed { get; init; }

    /// <summary>The problem's <see cref="AllocationProblem.TieTolerance"/> (0 = no tie rule).</summary>
    public double TieTolerance { get; init; }

    /// <summary>The tie rule's grid step in sqrt(D) (<see cref="AllocationProblem.TieStep"/>).</summary>
    public double TieStep { get; init; }
}

/// <param name="Cells">Budget-axis cells (W + 1).</param>
/// <param name="CostUnit">gcd of the units' incremental costs n_u (b - b_lowest), in weight-bits: one exact cell.</param>
/// <param name="BucketSize">Weight-bits per cell actually used; equals <paramref name="CostUnit"/> when exact.</param>
/// <param name="TableBytes">Size of the choice table (one byte per free unit and cell).</param>
/// <param name="OptimalityGapBound">
/// Upper bound on (this distortion - the exact optimum): 0 when exact; with bucketing, this distortion minus the
/// linear-relaxation lower bound at the true budget. With the tie rule on, both are of the snapped curves.
/// </param>
public sealed record DpStats(long Cells, long CostUnit, long BucketSize, long TableBytes, double OptimalityGapBound)
    : SolverStats("dp")
{
    public bool IsExact => BucketSize == CostUnit;
}

/// <param name="Lambda">The multiplier whose allocation was returned (distortion per weight-bit).</param>
/// <param name="Iterations">Binary-search steps on log2(lambda).</param>
/// <param name="WindowMissed">No multiplier gave a rate within epsilon of the target; the best feasible hull point was returned.</param>
/// <param name="AllowOvershoot">The rate was allowed up to target + epsilon.</param>
public sealed record LagrangianStats(double Lambda, int Iterations, double Epsilon, bool WindowMissed, bool AllowOvershoot)
    : SolverStats("lagrangian");
