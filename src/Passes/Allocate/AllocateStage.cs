using OnnxQuant.Solvers;

namespace OnnxQuant.Passes.Allocate;

/// <summary>One target's allocation, the least width it allowed, and what the report should say about how it was solved.</summary>
public sealed record TargetAllocation(double Target, int MinBits, Allocation Allocation, IReadOnlyList<string> Notes);

/// <summary>Solves the bit allocation of the free units for one target with the chosen solver.</summary>
public static class AllocateStage
{
    public static TargetAllocation Run(Partition partition, double target, AllocationOptions options)
    {
        var minBits = options.MinBitsFor(target);
        // Near-equal choices are resolved on a coarse grid so that last-digit differences between machines' kernels
        // cannot change the allocation (TieRule).
        var problem = new AllocationProblem(partition.FreeCurves, target, minBits, CurvePolicy.MakeMonotone, TieRule.DefaultTolerance);
        IBitAllocator allocator = options.Solver == SolverKind.Dp
            ? new DpAllocator()
            : new LagrangianAllocator(new LagrangianOptions(options.Epsilon));
        var allocation = allocator.Solve(problem);
        return new TargetAllocation(target, minBits, allocation,
            [.. allocation.Warnings.Select(w => w.Message), TieRule.Describe(problem)]);
    }
}
