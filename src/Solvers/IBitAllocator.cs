namespace OnnxQuant.Solvers;

/// <summary>Chooses a bit width per unit so the average meets the problem's budget with the least distortion.</summary>
public interface IBitAllocator
{
    /// <summary>Solves <paramref name="problem"/>.</summary>
    /// <exception cref="SolverException">The problem is infeasible (<see cref="SolverErrorKind.Infeasible"/>, with the reason).</exception>
    Allocation Solve(AllocationProblem problem);
}
