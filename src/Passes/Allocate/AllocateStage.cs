using OnnxQuant.Solvers;

namespace OnnxQuant.Passes.Allocate;

/// <summary>One target's allocation and the least width it allowed.</summary>
public sealed record TargetAllocation(double Target, int MinBits, Allocation Allocation);

/// <summary>Solves the bit allocation of the free units for one target with the chosen solver.</summary>
public static class AllocateStage
{
    public static TargetAllocation Run(Partition partition, double target, AllocationOptions options)
    {
        var minBits = options.MinBitsFor(target);
        var problem = new AllocationProblem(partition.FreeCurves, target, minBits, CurvePolicy.MakeMonotone);
        IBitAllocator allocator = options.Solver == SolverKind.Dp
            ? new DpAllocator()
            : new LagrangianAllocator(new LagrangianOptions(options.Epsilon));
        return new TargetAllocation(target, minBits, allocator.Solve(problem));
    }
}
