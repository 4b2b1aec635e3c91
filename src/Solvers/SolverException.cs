namespace OnnxQuant.Solvers;

/// <summary>What kind of input a <see cref="SolverException"/> is about.</summary>
public enum SolverErrorKind
{
    /// <summary>A unit's curve is malformed (lengths differ, NaN, negative distortion, duplicate bits, ...).</summary>
    InvalidCurve,
    /// <summary>The problem as a whole is malformed (no units, duplicate names, bad target or minimum bits, ...).</summary>
    InvalidProblem,
    /// <summary>The problem is well formed but no allocation meets the budget; see <see cref="SolverException.Reason"/>.</summary>
    Infeasible,
    /// <summary>A curves file cannot be read (not JSON, wrong schema, missing or mistyped fields).</summary>
    InvalidCurvesFile,
}

/// <summary>Why no allocation meets the budget.</summary>
public enum InfeasibilityReason
{
    /// <summary>The target is below the minimum bit width every free unit must get.</summary>
    TargetBelowMinBits,
    /// <summary>Pinned units alone (or with every free unit at its lowest width) use more than the budget.</summary>
    PinnedUnitsExceedBudget,
    /// <summary>The target is below the smallest rate reachable with every free unit at its lowest allowed width.</summary>
    TargetBelowMinimumRate,
}

/// <summary>
/// An error in the user's allocation input: a malformed curve or curves file, an invalid problem, or an infeasible
/// budget. The message says what is wrong, where (unit name, file, field) and what to do.
/// </summary>
public sealed class SolverException : Exception
{
    public SolverException(SolverErrorKind kind, string message, InfeasibilityReason? reason = null, Exception? inner = null)
        : base(message, inner)
    {
        Kind = kind;
        Reason = reason;
    }

    public SolverErrorKind Kind { get; }

    /// <summary>Set when <see cref="Kind"/> is <see cref="SolverErrorKind.Infeasible"/>.</summary>
    public InfeasibilityReason? Reason { get; }
}
