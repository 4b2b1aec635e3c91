using System.Globalization;

namespace OnnxQuant.Solvers;

/// <summary>How a curve whose distortion rises with more bits is treated.</summary>
public enum CurvePolicy
{
    /// <summary>Use the curve as measured (a warning names the unit).</summary>
    UseAsGiven,
    /// <summary>Replace D(b) by min over b' &lt;= b of D(b') (more bits are never worse), with a warning.</summary>
    MakeMonotone,
}

/// <summary>
/// Minimize sum_u D_u(b_u) subject to sum_u n_u b_u &lt;= R sum_u n_u (over all units, pinned ones included) and
/// b_u &gt;= b_min for every free unit. Construction validates the curves (errors throw
/// <see cref="SolverException"/>, soft problems go to <see cref="Warnings"/>); feasibility of the budget is checked
/// by <see cref="CheckFeasibility"/>, which every allocator calls, so one problem can be re-targeted cheaply for a sweep.
/// </summary>
public sealed class AllocationProblem
{
    /// <summary>Largest number of candidate widths per unit (the DP stores a choice index in one byte).</summary>
    public const int MaxCandidatesPerUnit = 255;

    private readonly IReadOnlyList<SolverWarning> _warnings;

    public AllocationProblem(
        IReadOnlyList<UnitCurve> units,
        double targetBits,
        int minBits,
        CurvePolicy curvePolicy = CurvePolicy.UseAsGiven,
        double tieTolerance = 0)
    {
        ArgumentNullException.ThrowIfNull(units);
        if (units.Count == 0)
            throw new SolverException(SolverErrorKind.InvalidProblem, "the problem has no units: give at least one unit curve");
        if (minBits < 1)
            throw new SolverException(SolverErrorKind.InvalidProblem,
                $"minimum bits must be at least 1, got {minBits}");
        ValidateTarget(targetBits);
        TieRule.Validate(tieTolerance);

        var warnings = new List<SolverWarning>();
        var names = new HashSet<string>(StringComparer.Ordinal);
        var prepared = new PreparedUnit[units.Count];
        long total = 0;
        for (var i = 0; i < units.Count; i++)
        {
            var unit = units[i] ?? throw new SolverException(SolverErrorKind.InvalidProblem, $"unit #{i} is null");
            if (string.IsNullOrEmpty(unit.Name))
                throw new SolverException(SolverErrorKind.InvalidCurve, $"unit #{i} has an empty name: every unit needs a unique name");
            if (!names.Add(unit.Name))
                throw new SolverException(SolverErrorKind.InvalidProblem, $"unit name '{unit.Name}' appears more than once: unit names must be unique");
            prepared[i] = PreparedUnit.Create(i, unit, minBits, curvePolicy, warnings);
            try
            {
                total = checked(total + unit.Size);
                _ = checked(total * prepared[i].MaxBits);
            }
            catch (OverflowException)
            {
                throw new SolverException(SolverErrorKind.InvalidProblem,
                    $"the total size in bits overflows a 64-bit integer at unit '{unit.Name}'");
            }
        }

        Units = units;
        TargetBits = targetBits;
        MinBits = minBits;
        CurvePolicy = curvePolicy;
        TotalSize = total;
        Prepared = prepared;
        _warnings = warnings;
        BudgetBits = ComputeBudget(targetBits, total);
        TieTolerance = tieTolerance;
        TieStep = TieRule.Step(units, tieTolerance);
    }

    private AllocationProblem(AllocationProblem source, double targetBits)
    {
        ValidateTarget(targetBits);
        Units = source.Units;
        TargetBits = targetBits;
        MinBits = source.MinBits;
        CurvePolicy = source.CurvePolicy;
        TotalSize = source.TotalSize;
        Prepared = source.Prepared;
        _warnings = source._warnings;
        BudgetBits = ComputeBudget(targetBits, source.TotalSize);
        TieTolerance = source.TieTolerance;
        TieStep = source.TieStep;
    }

    /// <summary>The units as given, in the order allocations report them.</summary>
    public IReadOnlyList<UnitCurve> Units { get; }

    /// <summary>Budget R in average bits per weight over all units.</summary>
    public double TargetBits { get; }

    /// <summary>b_min: the least width any free (non-pinned) unit may take.</summary>
    public int MinBits { get; }

    public CurvePolicy CurvePolicy { get; }

    /// <summary>
    /// Tolerance of the tie rule (<see cref="TieRule"/>): 0 (the default) solves on the curves to their last digit;
    /// above 0 the solvers decide on curves snapped to a grid of this fraction of sqrt(max D) in sqrt(D), so
    /// differences below it cannot change the allocation. Reported distortions always use the curves as given.
    /// </summary>
    public double TieTolerance { get; }

    /// <summary>The tie rule's grid step in sqrt(D) (0 when the rule is off or every curve is zero).</summary>
    public double TieStep { get; }

    /// <summary>Warnings found while validating the curves (rising curves, pinned units without distortion).</summary>
    public IReadOnlyList<SolverWarning> Warnings => _warnings;

    /// <summary>sum_u n_u over all units.</summary>
    public long TotalSize { get; }

    /// <summary>
    /// The budget in weight-bits: floor(R * sum n_u), computed in decimal so a target such as 3.3 is not shaved by
    /// binary rounding. An allocation is feasible when sum n_u b_u &lt;= BudgetBits.
    /// </summary>
    public long BudgetBits { get; }

    /// <summary>Rate with every free unit at its lowest candidate width (the least achievable rate).</summary>
    public double MinimumRate => (double)(PinnedCost + Prepared.Where(p => !p.IsPinned).Sum(p => p.Size * (long)p.Bits[0])) / TotalSize;

    /// <summary>Rate with every free unit at its highest candidate width.</summary>
    public double MaximumRate => (double)(PinnedCost + Prepared.Where(p => !p.IsPinned).Sum(p => p.Size * (long)p.Bits[^1])) / TotalSize;

    internal IReadOnlyList<PreparedUnit> Prepared { get; }

    internal long PinnedCost => Prepared.Where(p => p.IsPinned).Sum(p => p.Size * (long)p.Bits[0]);

    /// <summary>The same curves and options with another target (no re-validation).</summary>
    public AllocationProblem WithTarget(double targetBits) => new(this, targetBits);

    /// <summary>Null when some allocation meets the budget; otherwise the error an allocator throws, with its reason.</summary>
    public SolverException? CheckFeasibility()
    {
        long pinnedCost = 0, pinnedSize = 0, freeMinCost = 0, freeSize = 0;
        foreach (var p in Prepared)
        {
            if (p.IsPinned)
            {
                pinnedCost += p.Size * (long)p.Bits[0];
                pinnedSize += p.Size;
            }
            else
            {
                freeMinCost += p.Size * (long)p.Bits[0];
                freeSize += p.Size;
            }
        }
        if (pinnedCost + freeMinCost <= BudgetBits)
            return null;

        var r = Format(TargetBits);
        var minRate = Format((double)(pinnedCost + freeMinCost) / TotalSize);
        if (freeSize > 0 && TargetBits < MinBits && pinnedCost >= (long)MinBits * pinnedSize)
            return new SolverException(SolverErrorKind.Infeasible,
                $"infeasible budget: target {r} bits is below the minimum bit width {MinBits} that every free unit must get " +
                $"(smallest achievable rate {minRate}); raise the target or lower the minimum bits",
                InfeasibilityReason.TargetBelowMinBits);
        // Pinned units are to blame when the free units at their lowest widths would meet the target on their own.
        if (pinnedSize > 0 && (pinnedCost > BudgetBits || freeMinCost <= TargetBits * freeSize))
        {
            var pinnedUnits = Prepared.Count(p => p.IsPinned);
            var pinnedRate = Format((double)pinnedCost / pinnedSize);
            var share = Format(100.0 * pinnedSize / TotalSize);
            var left = freeSize == 0 ? "no free units remain" :
                $"leaving {Format(Math.Max(0, BudgetBits - pinnedCost) / (double)freeSize)} bits per free weight where the free units need at least {Format((double)freeMinCost / freeSize)}";
            return new SolverException(SolverErrorKind.Infeasible,
                $"infeasible budget: {pinnedUnits} pinned unit(s) ({share}% of the weights at {pinnedRate} bits on average) " +
                $"use {pinnedCost} of the {BudgetBits} weight-bits that target {r} allows, {left}; " +
                $"raise the target (smallest achievable rate {minRate}) or pin fewer units",
                InfeasibilityReason.PinnedUnitsExceedBudget);
        }
        return new SolverException(SolverErrorKind.Infeasible,
            $"infeasible budget: target {r} bits is below the smallest achievable rate {minRate} " +
            "(every free unit at its lowest allowed width); raise the target or allow lower widths",
            InfeasibilityReason.TargetBelowMinimumRate);
    }

    internal void EnsureFeasible()
    {
        if (CheckFeasibility() is { } error)
            throw error;
    }

    private static void ValidateTarget(double targetBits)
    {
        if (!double.IsFinite(targetBits) || targetBits <= 0)
            throw new SolverException(SolverErrorKind.InvalidProblem,
                $"target bits must be a positive finite number, got {Format(targetBits)}");
    }

    private static long ComputeBudget(double targetBits, long totalSize)
    {
        var budget = decimal.Floor((decimal)targetBits * totalSize);
        return budget >= long.MaxValue ? long.MaxValue : (long)budget;
    }

    internal static string Format(double value) => value.ToString("0.####", CultureInfo.InvariantCulture);
}

/// <summary>
/// A validated unit: candidate widths ascending, filtered by the allowed set and b_min (a pinned unit has exactly its
/// pinned width), with their (possibly made monotone) distortions.
/// </summary>
internal sealed class PreparedUnit
{
    private PreparedUnit(int index, string name, long size, int[] bits, double[] distortion, bool isPinned)
    {
        Index = index;
        Name = name;
        Size = size;
        Bits = bits;
        Distortion = distortion;
        IsPinned = isPinned;
    }

    public int Index { get; }
    public string Name { get; }
    public long Size { get; }
    /// <summary>Candidate widths, strictly ascending; one entry for a pinned unit.</summary>
    public int[] Bits { get; }
    public double[] Distortion { get; }
    public bool IsPinned { get; }
    public int MaxBits => Bits[^1];

    public static PreparedUnit Create(int index, UnitCurve unit, int minBits, CurvePolicy policy, List<SolverWarning> warnings)
    {
        var name = unit.Name;
        if (unit.Size <= 0)
            throw Curve(name, $"has size {unit.Size}: the number of weights must be positive");
        var bits = unit.Bits ?? throw Curve(name, "has no bits list");
        var dist = unit.Distortion ?? throw Curve(name, "has no distortion list");
        if (bits.Count != dist.Count)
            throw Curve(name, $"has {bits.Count} bit widths but {dist.Count} distortion values: they must pair up one to one");
        if (bits.Count > AllocationProblem.MaxCandidatesPerUnit)
            throw Curve(name, $"has {bits.Count} bit widths; at most {AllocationProblem.MaxCandidatesPerUnit} are supported");

        var order = Enumerable.Range(0, bits.Count).OrderBy(i => bits[i]).ToArray();
        var sortedBits = order.Select(i => bits[i]).ToArray();
        var sortedDist = order.Select(i => dist[i]).ToArray();
        for (var i = 0; i < sortedBits.Length; i++)
        {
            if (sortedBits[i] < 1 || sortedBits[i] > 64)
                throw Curve(name, $"has bit width {sortedBits[i]}: widths must be between 1 and 64");
            if (i > 0 && sortedBits[i] == sortedBits[i - 1])
                throw Curve(name, $"lists bit width {sortedBits[i]} twice: each width must appear once");
            if (!double.IsFinite(sortedDist[i]))
                throw Curve(name, $"has distortion {sortedDist[i]} at {sortedBits[i]} bits: distortion must be finite (re-measure the curve)");
            if (sortedDist[i] < 0)
                throw Curve(name, $"has negative distortion {sortedDist[i].ToString("R", CultureInfo.InvariantCulture)} at {sortedBits[i]} bits: distortion must be non-negative");
        }

        var rises = new List<string>();
        for (var i = 1; i < sortedBits.Length; i++)
            if (sortedDist[i] > sortedDist[i - 1])
                rises.Add($"{sortedBits[i - 1]}->{sortedBits[i]}");
        if (rises.Count > 0)
        {
            if (policy == CurvePolicy.MakeMonotone)
            {
                for (var i = 1; i < sortedDist.Length; i++)
                    sortedDist[i] = Math.Min(sortedDist[i], sortedDist[i - 1]);
                warnings.Add(new SolverWarning(SolverWarningKind.CurveMadeMonotone, name,
                    $"unit '{name}': distortion rises with more bits ({string.Join(", ", rises)}); made monotone (running minimum)"));
            }
            else
            {
                warnings.Add(new SolverWarning(SolverWarningKind.CurveRises, name,
                    $"unit '{name}': distortion rises with more bits ({string.Join(", ", rises)}); used as given"));
            }
        }

        if (unit.PinnedBits is { } pinned)
        {
            if (pinned < 1 || pinned > 64)
                throw Curve(name, $"is pinned at {pinned} bits: widths must be between 1 and 64");
            var at = Array.IndexOf(sortedBits, pinned);
            double d = 0;
            if (at >= 0)
                d = sortedDist[at];
            else
                warnings.Add(new SolverWarning(SolverWarningKind.PinnedWithoutDistortion, name,
                    $"unit '{name}' is pinned at {pinned} bits but its curve has no value there; it adds 0 to the predicted distortion"));
            return new PreparedUnit(index, name, unit.Size, [pinned], [d], isPinned: true);
        }

        if (sortedBits.Length == 0)
            throw Curve(name, "has an empty curve: a unit that is not pinned needs at least one bit width");
        if (unit.AllowedBits is { } allowedList)
        {
            foreach (var a in allowedList)
                if (Array.IndexOf(sortedBits, a) < 0)
                    throw Curve(name, $"allows {a} bits, which its curve does not list ({string.Join(",", sortedBits)})");
        }
        var keep = Enumerable.Range(0, sortedBits.Length)
            .Where(i => sortedBits[i] >= minBits && (unit.AllowedBits is null || unit.AllowedBits.Contains(sortedBits[i])))
            .ToArray();
        if (keep.Length == 0)
            throw new SolverException(SolverErrorKind.InvalidProblem,
                $"unit '{name}' has no candidate width at or above the minimum bits {minBits} " +
                $"(curve widths {string.Join(",", sortedBits)}{(unit.AllowedBits is null ? "" : $", allowed {string.Join(",", unit.AllowedBits)}")}); " +
                "lower the minimum bits or measure the curve at more widths");
        return new PreparedUnit(index, name, unit.Size, keep.Select(i => sortedBits[i]).ToArray(),
            keep.Select(i => sortedDist[i]).ToArray(), isPinned: false);
    }

    private static SolverException Curve(string name, string what) =>
        new(SolverErrorKind.InvalidCurve, $"unit '{name}' {what}");
}
