using System.Buffers;
using System.Diagnostics;
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace OnnxQuant.Solvers;

/// <summary>Memory bound of the DP's budget axis.</summary>
/// <param name="MaxCells">Most budget-axis cells (W + 1); time grows with units x cells x candidates.</param>
/// <param name="MaxTableBytes">Most bytes for the choice table (free units x cells, one byte each).</param>
public sealed record DpOptions(int MaxCells = 100_000, long MaxTableBytes = 128L << 20)
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
/// then bounds how far it can be from the exact optimum (distance to the linear-relaxation bound). The budget that
/// rounding strands is then spent greedily, and the result is compared with the best feasible Lagrangian hull point
/// (also filled greedily), so bucketing never returns worse than the Lagrangian solver.
/// </para>
/// <para>
/// Tie-break (deterministic): in each cell the candidate with fewer bits wins an exact tie, and the backtrack starts
/// from the full budget, so among equal-distortion allocations the one the recurrence meets first is returned. With
/// the problem's tie rule on (<see cref="AllocationProblem.TieTolerance"/>), the DP runs on snapped curves with a
/// preference for more weight-bits folded in (<see cref="TieRule"/>), so near-ties resolve the same way everywhere.
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
                unit = Gcd(unit, c);
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

        // The table is rented: every cell of every row is written before it is read, and a sweep or repeated solve
        // then reuses the memory instead of faulting in fresh pages and forcing a full GC each time.
        var tableBytes = (long)m * cells;
        var choiceTable = ArrayPool<byte>.Shared.Rent((int)Math.Max(1, tableBytes));
        var choice = new int[m];
        try
        {
            var prev = new double[cells];
            var cur = new double[cells];
            for (var j = 0; j < m; j++)
            {
                var start = free.Offsets[j];
                var count = free.Offsets[j + 1] - start;
                Relax(prev, cur, GetRow(choiceTable, j, cells), scaled.AsSpan(start, count), free.Distortion.AsSpan(start, count));
                (prev, cur) = (cur, prev);
            }

            var w = width;
            for (var j = m - 1; j >= 0; j--)
            {
                var k = GetRow(choiceTable, j, cells)[w];
                choice[j] = k;
                w -= scaled[free.Offsets[j] + k];
            }
            Debug.Assert(w >= 0);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(choiceTable);
        }

        double gap = 0;
        if (bucket != unit)
        {
            // Rounding costs up to whole buckets can strand up to one bucket per unit of real budget. Spend it
            // greedily, and also start from the best feasible Lagrangian hull point filled the same way: the better
            // of the two is returned, so a bucketed DP is never worse than the Lagrangian solver.
            free.GreedyFill(choice, free.Budget);
            var hull = LagrangianAllocator.Search(free, free.Budget, windowLow: double.PositiveInfinity, maxIterations: 200).Choice;
            free.GreedyFill(hull, free.Budget);
            if (free.Evaluate(hull).Distortion < free.Evaluate(choice).Distortion)
                choice = hull;
            gap = Math.Max(0.0, free.Evaluate(choice).Distortion - free.RelaxationLowerBound(free.Budget)) * free.KeyScale;
        }
        var bits = free.ToBits(problem, choice);
        var stats = new DpStats(cells, unit, bucket, tableBytes, gap)
        {
            Elapsed = clock.Elapsed, TieTolerance = problem.TieTolerance, TieStep = problem.TieStep,
        };
        return new Allocation(problem, bits, stats, []);
    }

    private static long Gcd(long a, long b)
    {
        while (b != 0)
            (a, b) = (b, a % b);
        return a;
    }

    private static Span<byte> GetRow(byte[] table, int unitIndex, int cells) =>
        MemoryMarshal.CreateSpan(ref Unsafe.Add(ref MemoryMarshal.GetArrayDataReference(table), (nint)((long)unitIndex * cells)), cells);

    /// <summary>cur[w] = min_k prev[w - s_k] + d_k over the k with s_k &lt;= w, ties to the smaller k; row[w] = that k.</summary>
    /// <remarks>
    /// Cells go outer and candidates inner, a vector of cells at a time, so the running minimum and its index stay in
    /// registers and each cell is stored once. Candidates ascend in cost: in the block where a candidate starts to
    /// fit only some lanes, it is applied lane by lane after the vector pass (later k, so the tie rule still holds).
    /// </remarks>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)] // hot kernel: skip tier-0 code and on-stack replacement
    private static void Relax(double[] prev, double[] cur, Span<byte> row, ReadOnlySpan<int> scaled, ReadOnlySpan<double> distortion)
    {
        var cells = cur.Length;
        var lanes = Vector<double>.Count;
        var fitting = 1; // candidates whose cost fits the axis at all
        while (fitting < scaled.Length && scaled[fitting] < cells)
            fitting++;
        var d0 = new Vector<double>(distortion[0]);
        var valid = 1; // candidates with s_k <= w: valid in every lane of the block at w
        var w = 0;
        for (; w + lanes <= cells; w += lanes)
        {
            while (valid < fitting && scaled[valid] <= w)
                valid++;
            var value = new Vector<double>(prev, w) + d0;
            var index = Vector<long>.Zero;
            for (var k = 1; k < valid; k++)
            {
                var candidate = new Vector<double>(prev, w - scaled[k]) + new Vector<double>(distortion[k]);
                var better = Vector.LessThan(candidate, value);
                value = Vector.ConditionalSelect(better, candidate, value);
                index = Vector.ConditionalSelect(better, new Vector<long>(k), index);
            }
            value.CopyTo(cur, w);
            if (lanes == 4)
            {
                // Constant lane indices compile to register extracts; a variable index spills the vector.
                row[w] = (byte)index[0];
                row[w + 1] = (byte)index[1];
                row[w + 2] = (byte)index[2];
                row[w + 3] = (byte)index[3];
            }
            else
            {
                for (var lane = 0; lane < lanes; lane++)
                    row[w + lane] = (byte)index[lane];
            }
            for (var k = valid; k < fitting && scaled[k] < w + lanes; k++)
                for (var cell = Math.Max(w, scaled[k]); cell < w + lanes; cell++)
                    Update(prev, cur, row, cell, k, scaled[k], distortion[k]);
        }
        for (; w < cells; w++)
        {
            cur[w] = prev[w] + distortion[0];
            row[w] = 0;
            for (var k = 1; k < fitting && scaled[k] <= w; k++)
                Update(prev, cur, row, w, k, scaled[k], distortion[k]);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Update(double[] prev, double[] cur, Span<byte> row, int cell, int k, int cost, double distortion)
    {
        var candidate = prev[cell - cost] + distortion;
        if (candidate < cur[cell])
        {
            cur[cell] = candidate;
            row[cell] = (byte)k;
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
