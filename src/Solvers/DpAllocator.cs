using System.Diagnostics;
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace OnnxQuant.Solvers;

/// <summary>Memory bound of the DP's budget axis.</summary>
/// <param name="MaxCells">Most budget-axis cells (W + 1); time grows with units x cells x candidates.</param>
/// <param name="MaxTableBytes">Most bytes for the choice table (free units x cells, one byte each).</param>
public sealed record DpOptions(int MaxCells = 100_000, long MaxTableBytes = 256L << 20)
{
    public static DpOptions Default { get; } = new();
}

/// <summary>
/// Exact multiple-choice knapsack by dynamic programming over an integer budget axis.
/// <para>
/// Costs are incremental (n_u (b - b_lowest)) in units of their gcd, so typical layer sizes give a short axis.
/// f_j(w) = least distortion of free units 0..j with incremental cost at most w cells; one byte per (unit, cell)
/// records the chosen candidate and a backtrack from the full budget recovers the allocation.
/// </para>
/// <para>
/// When the exact axis would exceed <see cref="DpOptions"/>, cells are widened to a bucket of q weight-bits and each
/// cost is rounded up to whole buckets, so the result never exceeds the real budget; <see cref="DpStats.OptimalityGapBound"/>
/// then bounds how far it can be from the exact optimum (distance to the linear-relaxation bound).
/// </para>
/// <para>
/// Tie-break (deterministic): in each cell the candidate with fewer bits wins an exact tie, and the backtrack starts
/// from the full budget, so among equal-distortion allocations the one the recurrence meets first is returned.
/// </para>
/// </summary>
public sealed class DpAllocator(DpOptions? options = null) : IBitAllocator
{
    public DpOptions Options { get; } = Validate(options ?? DpOptions.Default);

    public Allocation Solve(AllocationProblem problem)
    {
        ArgumentNullException.ThrowIfNull(problem);
        var clock = Stopwatch.StartNew();
        problem.EnsureFeasible();
        var free = new FreeUnits(problem);
        var m = free.Count;

        // Capacity beyond every unit at its top width buys nothing.
        long maxUseful = 0, unit = 0;
        for (var j = 0; j < m; j++)
            maxUseful += free.Cost[free.Offsets[j + 1] - 1];
        foreach (var c in free.Cost)
            if (c > 0)
                unit = (long)BigInteger.GreatestCommonDivisor(unit, c);
        if (unit == 0)
            unit = 1;
        var capacity = Math.Min(free.Budget, maxUseful);

        var maxCells = (long)Options.MaxCells;
        if (m > 0)
            maxCells = Math.Min(maxCells, Options.MaxTableBytes / m);
        maxCells = Math.Max(maxCells, 2);
        long bucket = unit;
        if (capacity / unit + 1 > maxCells)
        {
            // Smallest multiple of the exact cell that fits the axis into maxCells.
            var exactCells = capacity / unit;
            bucket = unit * ((exactCells + (maxCells - 1) - 1) / (maxCells - 1));
        }
        var width = (int)(capacity / bucket);
        var cells = width + 1;

        var scaled = new int[free.Cost.Length];
        for (var i = 0; i < scaled.Length; i++)
        {
            var s = (free.Cost[i] + bucket - 1) / bucket;
            scaled[i] = s > width ? int.MaxValue : (int)s;
        }

        var choiceTable = new byte[(long)m * cells];
        var prev = new double[cells];
        var cur = new double[cells];
        for (var j = 0; j < m; j++)
        {
            var start = free.Offsets[j];
            var count = free.Offsets[j + 1] - start;
            Relax(prev, cur, GetRow(choiceTable, j, cells), scaled.AsSpan(start, count), free.Distortion.AsSpan(start, count));
            (prev, cur) = (cur, prev);
        }

        var choice = new int[m];
        var w = width;
        for (var j = m - 1; j >= 0; j--)
        {
            var k = GetRow(choiceTable, j, cells)[w];
            choice[j] = k;
            w -= scaled[free.Offsets[j] + k];
        }
        Debug.Assert(w >= 0);

        var bits = free.ToBits(problem, choice);
        double freeDistortion = 0;
        for (var j = 0; j < m; j++)
            freeDistortion += free.Distortion[free.Offsets[j] + choice[j]];
        var gap = bucket == unit ? 0.0 : Math.Max(0.0, freeDistortion - free.RelaxationLowerBound(free.Budget));
        var stats = new DpStats(cells, unit, bucket, choiceTable.LongLength, gap) { Elapsed = clock.Elapsed };
        return new Allocation(problem, bits, stats, []);
    }

    private static Span<byte> GetRow(byte[] table, int unitIndex, int cells) =>
        MemoryMarshal.CreateSpan(ref Unsafe.Add(ref MemoryMarshal.GetArrayDataReference(table), (nint)((long)unitIndex * cells)), cells);

    /// <summary>cur[w] = min_k prev[w - s_k] + d_k, ties to the smaller k; row[w] = that k.</summary>
    private static void Relax(double[] prev, double[] cur, Span<byte> row, ReadOnlySpan<int> scaled, ReadOnlySpan<double> distortion)
    {
        var cells = cur.Length;
        // Candidate 0 has incremental cost 0: it is always possible and sets the baseline.
        var d0 = new Vector<double>(distortion[0]);
        var w = 0;
        for (; w + Vector<double>.Count <= cells; w += Vector<double>.Count)
            (new Vector<double>(prev, w) + d0).CopyTo(cur, w);
        for (; w < cells; w++)
            cur[w] = prev[w] + distortion[0];
        row.Clear();

        for (var k = 1; k < scaled.Length; k++)
        {
            var s = scaled[k];
            if (s >= cells)
                break; // costs ascend with k: no later candidate fits either
            var d = distortion[k];
            var dv = new Vector<double>(d);
            var kb = (byte)k;
            w = s;
            for (; w + Vector<double>.Count <= cells; w += Vector<double>.Count)
            {
                var candidate = new Vector<double>(prev, w - s) + dv;
                var current = new Vector<double>(cur, w);
                var better = Vector.LessThan(candidate, current);
                if (better == Vector<long>.Zero)
                    continue;
                Vector.ConditionalSelect(better, candidate, current).CopyTo(cur, w);
                for (var lane = 0; lane < Vector<double>.Count; lane++)
                    if (better[lane] != 0)
                        row[w + lane] = kb;
            }
            for (; w < cells; w++)
            {
                var candidate = prev[w - s] + d;
                if (candidate < cur[w])
                {
                    cur[w] = candidate;
                    row[w] = kb;
                }
            }
        }
    }

    private static DpOptions Validate(DpOptions options)
    {
        if (options.MaxCells < 2)
            throw new ArgumentOutOfRangeException(nameof(options), $"DP MaxCells must be at least 2, got {options.MaxCells}");
        if (options.MaxTableBytes < 2)
            throw new ArgumentOutOfRangeException(nameof(options), $"DP MaxTableBytes must be at least 2, got {options.MaxTableBytes}");
        if (options.MaxTableBytes > Array.MaxLength)
            throw new ArgumentOutOfRangeException(nameof(options), $"DP MaxTableBytes must be at most {Array.MaxLength} (one array), got {options.MaxTableBytes}");
        return options;
    }
}
