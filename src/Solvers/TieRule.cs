using System.Globalization;

namespace OnnxQuant.Solvers;

/// <summary>
/// The tolerance-aware tie rule that makes an allocation a function of the curves, not of their last digits.
/// <para>
/// Curves measured on different machines differ in their last digits (CPU kernels sum in different orders). For the
/// relative squared error D = ||y_q - y||^2 / ||y||^2 a kernel difference of relative size e moves sqrt(D) =
/// ||y_q - y|| / ||y|| by about e whatever D is, so D itself moves by about 2 e sqrt(D): small distortions differ
/// in their fourth digit, and rounding D to significant digits cannot absorb that. The rule therefore works in
/// sqrt(D):
/// </para>
/// <list type="number">
/// <item>step = tolerance x sqrt(max D) over every value of every curve of the problem (so the grid depends on the
/// curves only, not on the target or the minimum width, and scales with them);</item>
/// <item>each value becomes its level q = round(sqrt(D) / step) (ties to even), i.e. D is snapped to (q step)^2;</item>
/// <item>the solvers minimize sum_u q_u^2 exactly, and among allocations with the same sum prefer the one that
/// spends more of the budget (more weight-bits), then the solver's fixed order.</item>
/// </list>
/// <para>
/// Both are folded into one decision value per candidate, q^2 M - c / g, where c is the candidate's weight-bits above
/// the unit's lowest width, g their gcd and M one more than the largest possible sum of c / g: the second term never
/// outweighs a difference of one level. Curves perturbed below the step therefore give the same allocation unless a
/// value lies within the perturbation of a rounding boundary; snapping moves a unit's distortion by at most
/// step sqrt(D) + step^2 / 4, so the predicted distortion of the chosen allocation (always reported with the curves
/// as given) is within sum_u (step sqrt(D_u) + step^2 / 4) of the optimum, twice that in the worst case.
/// </para>
/// </summary>
public static class TieRule
{
    /// <summary>The tolerance <c>compile</c> and <c>solve</c> use: 1e-4 of the largest RMS error sqrt(max D).</summary>
    public const double DefaultTolerance = 1e-4;

    /// <summary>Largest accepted tolerance (a coarser grid would mostly throw the curves away).</summary>
    public const double MaxTolerance = 0.1;

    /// <summary>The grid step in sqrt(D): tolerance x sqrt of the largest finite value of any curve (0 when off or all zero).</summary>
    public static double Step(IReadOnlyList<UnitCurve> units, double tolerance)
    {
        ArgumentNullException.ThrowIfNull(units);
        if (tolerance == 0)
            return 0;
        double max = 0;
        foreach (var unit in units)
            if (unit?.Distortion is { } values)
                foreach (var d in values)
                    if (double.IsFinite(d) && d > max)
                        max = d;
        return tolerance * Math.Sqrt(max);
    }

    /// <summary>The level of <paramref name="distortion"/> on a grid of <paramref name="step"/> in sqrt(D).</summary>
    public static double Level(double distortion, double step) =>
        Math.Round(Math.Sqrt(distortion) / step, MidpointRounding.ToEven);

    /// <summary>The value the solvers see for <paramref name="distortion"/>: (level x step)^2, or the value itself when the step is 0.</summary>
    public static double Snap(double distortion, double step)
    {
        if (step == 0)
            return distortion;
        var q = Level(distortion, step);
        return q * step * (q * step);
    }

    /// <summary>One line saying which rule decided the allocation (for reports).</summary>
    public static string Describe(AllocationProblem problem)
    {
        ArgumentNullException.ThrowIfNull(problem);
        if (problem.TieTolerance == 0)
            return "allocation tie rule: none (curves used to the last digit; exact ties go to fewer bits)";
        var g = (double v) => v.ToString("G3", CultureInfo.InvariantCulture);
        return $"allocation tie rule: curves snapped to a grid of {g(problem.TieTolerance)} x sqrt(max D) in sqrt(D) " +
               $"(step {g(problem.TieStep)}); equal snapped totals go to more weight-bits, so curves that differ below the step give the same allocation";
    }

    internal static void Validate(double tolerance)
    {
        if (!double.IsFinite(tolerance) || tolerance < 0 || tolerance > MaxTolerance)
            throw new SolverException(SolverErrorKind.InvalidProblem,
                $"tie tolerance must be between 0 (off) and {MaxTolerance.ToString(CultureInfo.InvariantCulture)}, got {tolerance.ToString(CultureInfo.InvariantCulture)}");
    }
}
