namespace OnnxQuant.Solvers;

/// <summary>What a <see cref="SolverWarning"/> is about.</summary>
public enum SolverWarningKind
{
    /// <summary>A curve's distortion rises with more bits somewhere; it was used as given.</summary>
    CurveRises,
    /// <summary>A curve's distortion rose with more bits and was replaced by its running minimum.</summary>
    CurveMadeMonotone,
    /// <summary>A pinned unit has no distortion at its pinned width, so it adds nothing to the predicted distortion.</summary>
    PinnedWithoutDistortion,
    /// <summary>
    /// The Lagrangian search found no multiplier whose rate falls in the tolerance window (the lower convex hull jumps
    /// over it); the best feasible hull point was returned.
    /// </summary>
    LagrangianWindowMissed,
}

/// <summary>A problem with the input or the solution that does not stop the solve.</summary>
/// <param name="Unit">The unit concerned, or null for the problem as a whole.</param>
public sealed record SolverWarning(SolverWarningKind Kind, string? Unit, string Message)
{
    public override string ToString() => Message;
}
