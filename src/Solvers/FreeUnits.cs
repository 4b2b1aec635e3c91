namespace OnnxQuant.Solvers;

/// <summary>
/// The free (non-pinned) units of a problem flattened for the solvers: candidate k of free unit j sits at
/// Offsets[j] + k with its distortion and incremental cost n_u (b_k - b_0) in weight-bits above the unit's lowest
/// candidate. Budget = what is left after pinned units and every free unit's lowest candidate.
/// <para>
/// <see cref="Distortion"/> holds the values the solvers decide on: the curves as given when the problem's tie rule is
/// off, otherwise q^2 M - c / g (see <see cref="TieRule"/>), which <see cref="KeyScale"/> converts back to distortion.
/// </para>
/// </summary>
internal sealed class FreeUnits
{
    public FreeUnits(AllocationProblem problem)
    {
        var free = problem.Prepared.Where(p => !p.IsPinned).ToArray();
        Units = free;
        Offsets = new int[free.Length + 1];
        for (var j = 0; j < free.Length; j++)
            Offsets[j + 1] = Offsets[j] + free[j].Bits.Length;
        Distortion = new double[Offsets[^1]];
        Cost = new long[Offsets[^1]];
        long baseCost = problem.PinnedCost;
        for (var j = 0; j < free.Length; j++)
        {
            var u = free[j];
            baseCost += u.Size * (long)u.Bits[0];
            for (var k = 0; k < u.Bits.Length; k++)
            {
                Distortion[Offsets[j] + k] = u.Distortion[k];
                Cost[Offsets[j] + k] = u.Size * (long)(u.Bits[k] - u.Bits[0]);
            }
        }
        Budget = problem.BudgetBits - baseCost;
        KeyScale = 1;
        if (problem.TieStep > 0)
            KeyScale = ApplyTieRule(problem.TieStep);
    }

    /// <summary>
    /// Replaces every distortion by its decision value q^2 M - c / g: q the level on the tie grid, c the incremental
    /// cost, g the gcd of the costs and M one more than the largest sum of c / g, so the cost term only orders
    /// allocations whose snapped distortion is equal (more weight-bits first). Returns distortion per decision unit.
    /// </summary>
    private double ApplyTieRule(double step)
    {
        long g = 0;
        foreach (var c in Cost)
            if (c > 0)
                g = Gcd(g, c);
        if (g == 0)
            g = 1;
        double most = 0;
        for (var j = 0; j < Count; j++)
            most += Cost[Offsets[j + 1] - 1] / g;
        var m = most + 1;
        for (var i = 0; i < Distortion.Length; i++)
        {
            var q = TieRule.Level(Distortion[i], step);
            Distortion[i] = q * q * m - Cost[i] / g;
        }
        return step * step / m;
    }

    private static long Gcd(long a, long b)
    {
        while (b != 0)
            (a, b) = (b, a % b);
        return a;
    }

    public PreparedUnit[] Units { get; }
    public int[] Offsets { get; }
    public double[] Distortion { get; }
    public long[] Cost { get; }
    /// <summary>Distortion per unit of <see cref="Distortion"/> (1 unless the tie rule is on).</summary>
    public double KeyScale { get; }
    /// <summary>Weight-bits left for raising free units above their lowest candidate (non-negative when feasible).</summary>
    public long Budget { get; }
    public int Count => Units.Length;

    /// <summary>Full bits per problem unit (pinned ones at their pin) from a candidate index per free unit.</summary>
    public int[] ToBits(AllocationProblem problem, ReadOnlySpan<int> choice)
    {
        var bits = problem.Prepared.Select(p => p.Bits[0]).ToArray();
        for (var j = 0; j < Units.Length; j++)
            bits[Units[j].Index] = Units[j].Bits[choice[j]];
        return bits;
    }

    /// <summary>Incremental cost and distortion of a choice (candidate index per free unit).</summary>
    public (long Cost, double Distortion) Evaluate(ReadOnlySpan<int> choice)
    {
        long cost = 0;
        double distortion = 0;
        for (var j = 0; j < Count; j++)
        {
            cost += Cost[Offsets[j] + choice[j]];
            distortion += Distortion[Offsets[j] + choice[j]];
        }
        return (cost, distortion);
    }

    /// <summary>
    /// Spends budget left over by an approximate choice: repeatedly applies the single-unit upgrade with the largest
    /// distortion drop per weight-bit that still fits <paramref name="budget"/> (ties: lower unit index, then the
    /// fewer bits), until none fits. Never raises the cost above the budget nor the distortion.
    /// </summary>
    public void GreedyFill(int[] choice, long budget)
    {
        var slack = budget - Evaluate(choice).Cost;
        if (slack <= 0)
            return;
        // Lazy max-heap of each unit's best upgrade. A unit's best ratio can only fall as the slack shrinks, so a
        // popped entry is re-checked against the current slack and re-queued if it has fallen.
        var queue = new PriorityQueue<int, (double Ratio, int Unit)>(Comparer<(double Ratio, int Unit)>.Create(
            (a, b) => a.Ratio != b.Ratio ? b.Ratio.CompareTo(a.Ratio) : a.Unit.CompareTo(b.Unit)));
        for (var j = 0; j < Count; j++)
            if (BestUpgrade(choice, j, slack) is { } move)
                queue.Enqueue(j, (move.Ratio, j));
        while (queue.TryDequeue(out var j, out var priority))
        {
            if (BestUpgrade(choice, j, slack) is not { } move)
                continue;
            if (move.Ratio < priority.Ratio)
            {
                queue.Enqueue(j, (move.Ratio, j));
                continue;
            }
            slack -= Cost[Offsets[j] + move.K] - Cost[Offsets[j] + choice[j]];
            choice[j] = move.K;
            if (BestUpgrade(choice, j, slack) is { } next)
                queue.Enqueue(j, (next.Ratio, j));
        }
    }

    private (double Ratio, int K)? BestUpgrade(int[] choice, int j, long slack)
    {
        var at = Offsets[j] + choice[j];
        (double, int)? best = null;
        for (var i = at + 1; i < Offsets[j + 1]; i++)
        {
            var extra = Cost[i] - Cost[at];
            if (extra > slack)
                break; // costs ascend within a unit
            var drop = Distortion[at] - Distortion[i];
            if (drop <= 0)
                continue;
            var ratio = drop / extra;
            if (best is null || ratio > best.Value.Item1)
                best = (ratio, i - Offsets[j]);
        }
        return best;
    }

    /// <summary>
    /// The linear-relaxation optimum of the multiple-choice knapsack at <paramref name="budget"/>: a lower bound on
    /// the exact optimum (of the free units' distortion). Greedy over the lower-convex-hull segments of every unit
    /// taken by steepest distortion drop per weight-bit, the last one fractionally.
    /// </summary>
    public double RelaxationLowerBound(long budget)
    {
        var segments = new List<(double Slope, long Cost, double Drop)>();
        double value = 0;
        for (var j = 0; j < Count; j++)
        {
            var start = Offsets[j];
            var hull = LowerHull(Cost.AsSpan(start, Offsets[j + 1] - start), Distortion.AsSpan(start, Offsets[j + 1] - start));
            value += Distortion[start + hull[0]];
            for (var h = 1; h < hull.Count; h++)
            {
                var c = Cost[start + hull[h]] - Cost[start + hull[h - 1]];
                var drop = Distortion[start + hull[h - 1]] - Distortion[start + hull[h]];
                if (drop <= 0)
                    break;
                segments.Add((drop / c, c, drop));
            }
        }
        segments.Sort((a, b) => b.Slope.CompareTo(a.Slope));
        double left = budget;
        foreach (var (_, cost, drop) in segments)
        {
            if (left <= 0)
                break;
            var take = Math.Min(1.0, left / cost);
            value -= take * drop;
            left -= take * cost;
        }
        return value;
    }

    /// <summary>
    /// Indices of the lower convex hull of points (cost[i], distortion[i]), costs strictly ascending, from the
    /// cheapest point rightwards. Collinear middle points are dropped.
    /// </summary>
    public static List<int> LowerHull(ReadOnlySpan<long> cost, ReadOnlySpan<double> distortion)
    {
        var hull = new List<int>(cost.Length);
        for (var i = 0; i < cost.Length; i++)
        {
            while (hull.Count >= 2)
            {
                int a = hull[^2], b = hull[^1];
                // b is not below the segment a-i: cross product of (b - a) and (i - a) is not positive.
                var cross = (double)(cost[b] - cost[a]) * (distortion[i] - distortion[a])
                          - (double)(cost[i] - cost[a]) * (distortion[b] - distortion[a]);
                if (cross <= 0)
                    hull.RemoveAt(hull.Count - 1);
                else
                    break;
            }
            hull.Add(i);
        }
        return hull;
    }
}
