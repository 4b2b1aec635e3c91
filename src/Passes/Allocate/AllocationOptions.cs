using System.Globalization;
using OnnxQuant.Passes.Pipeline;

namespace OnnxQuant.Passes.Allocate;

/// <summary>Which allocator solves the bit allocation.</summary>
public enum SolverKind
{
    Dp,
    Lagrangian,
}

/// <summary>The budgets and how the allocation is solved.</summary>
public sealed record AllocationOptions : IStageOptions
{
    /// <summary>Average weight bits over the allocated units; several targets compile a front from one calibration.</summary>
    public IReadOnlyList<double> TargetBits { get; init; } = [4];

    /// <summary>Least width a unit may take; null = max(2, floor(target) - 2).</summary>
    public int? MinBits { get; init; }

    public SolverKind Solver { get; init; } = SolverKind.Dp;

    /// <summary>Tolerance of the Lagrangian solver on the rate.</summary>
    public double Epsilon { get; init; } = 0.02;

    /// <summary>The least width a free unit may take for <paramref name="target"/>.</summary>
    public int MinBitsFor(double target) => MinBits ?? Math.Max(2, (int)Math.Floor(target) - 2);

    public void Validate()
    {
        if (TargetBits.Count == 0)
            throw new CompileException("--target-bits needs at least one value");
        foreach (var t in TargetBits)
            if (!double.IsFinite(t) || t < 1 || t > 8)
                throw new CompileException($"--target-bits {t.ToString(CultureInfo.InvariantCulture)} is outside 1..8 average bits per weight");
        if (TargetBits.Distinct().Count() != TargetBits.Count)
            throw new CompileException("--target-bits lists a value twice");
        // Each target writes bits-<formatted target>/: two targets with one folder name would overwrite each other.
        foreach (var clash in TargetBits.GroupBy(FormatBits).Where(g => g.Count() > 1))
            throw new CompileException(
                $"--target-bits {string.Join(" and ", clash.Select(t => t.ToString(CultureInfo.InvariantCulture)))} would both write bits-{clash.Key}/; give targets that differ within two decimals");
        if (MinBits is { } m && (m < 2 || m > 8))
            throw new CompileException($"--min-bits {m} is outside 2..8");
        if (!double.IsFinite(Epsilon) || Epsilon is <= 0 or > 1)
            throw new CompileException($"--epsilon {Epsilon.ToString(CultureInfo.InvariantCulture)} must be in (0, 1]");
    }

    /// <summary>Checked before any measurement, so an impossible budget costs nothing.</summary>
    public void ValidateFeasible(IReadOnlyList<int> candidateBits)
    {
        foreach (var t in TargetBits)
        {
            var least = Math.Max(MinBitsFor(t), candidateBits.Min());
            if (candidateBits.All(b => b < MinBitsFor(t)))
                throw new CompileException($"--min-bits {MinBitsFor(t)} is above every candidate width ({string.Join(",", candidateBits)})");
            if (t < least)
                throw new CompileException($"infeasible budget: target {FormatBits(t)} bits is below the least width {least} every unit must take (--min-bits/--bits); raise the target or lower the minimum");
        }
    }

    public IEnumerable<OptionEntry> Manifest() =>
    [
        new("target_bits", string.Join(",", TargetBits.Select(FormatBits))),
        new("min_bits", MinBits?.ToString(CultureInfo.InvariantCulture) ?? "auto"),
        new("solver", Solver.ToString().ToLowerInvariant()),
        new("epsilon", Epsilon.ToString(CultureInfo.InvariantCulture)),
    ];

    /// <summary>A target as folder names and messages show it (at most two decimals).</summary>
    public static string FormatBits(double bits) => bits.ToString("0.##", CultureInfo.InvariantCulture);
}
