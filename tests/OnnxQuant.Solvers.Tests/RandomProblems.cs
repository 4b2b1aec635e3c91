using OnnxQuant.Solvers;

namespace OnnxQuant.Solvers.Tests;

/// <summary>Small random problems from a fixed seed, and brute force over them.</summary>
internal static class RandomProblems
{
    private static readonly int[] AllBits = [2, 3, 4, 5, 6, 8];

    /// <summary>
    /// 1-6 units with 1-5 candidate widths each, sizes sharing a random factor, mostly falling curves (some rise or
    /// stay flat), sometimes a pinned unit or an allowed subset; the target lies between the least and most rate.
    /// </summary>
    public static AllocationProblem Create(Random rng, int maxUnits = 6)
    {
        var count = rng.Next(1, maxUnits + 1);
        var factor = rng.Next(1, 5) * (rng.Next(2) == 0 ? 1 : 64);
        var units = new List<UnitCurve>();
        for (var u = 0; u < count; u++)
        {
            var bits = AllBits.Where(_ => rng.NextDouble() < 0.6).ToList();
            if (bits.Count == 0)
                bits.Add(AllBits[rng.Next(AllBits.Length)]);
            var distortion = new List<double>();
            var d = rng.NextDouble() * 10 + 0.5;
            foreach (var _ in bits)
            {
                distortion.Add(Math.Round(d, 3));
                var roll = rng.NextDouble();
                d = roll < 0.1 ? d + rng.NextDouble() : roll < 0.2 ? d : d * rng.NextDouble();
            }
            int? pinned = rng.NextDouble() < 0.1 ? bits[rng.Next(bits.Count)] : null;
            IReadOnlyList<int>? allowed = null;
            if (pinned is null && bits.Count > 2 && rng.NextDouble() < 0.15)
                allowed = bits.Where((_, i) => i % 2 == 0).ToArray();
            units.Add(new UnitCurve($"u{u}", factor * rng.Next(1, 40), bits, distortion, pinned) { AllowedBits = allowed });
        }
        var minBits = rng.Next(2) == 0 ? 2 : 3;
        // Keep every free unit with at least one width >= minBits.
        units = units.Select(c => c.PinnedBits is null && !Candidates(c, minBits).Any() ? c with { PinnedBits = c.Bits[0], AllowedBits = null } : c).ToList();
        var probe = new AllocationProblem(units, 8, minBits);
        var target = probe.MinimumRate + rng.NextDouble() * (probe.MaximumRate - probe.MinimumRate + 0.3);
        return probe.WithTarget(Math.Round(target, 3) + 0.0005);
    }

    public static IEnumerable<int> Candidates(UnitCurve c, int minBits) =>
        c.PinnedBits is { } p ? [p] : c.Bits.Where(b => b >= minBits && (c.AllowedBits is null || c.AllowedBits.Contains(b)));

    /// <summary>Least total distortion over every allocation that meets the budget (null if none does).</summary>
    public static (double Distortion, int[] Bits)? BruteForce(AllocationProblem problem)
    {
        var options = problem.Units.Select(u => Candidates(u, problem.MinBits).ToArray()).ToArray();
        var pick = new int[options.Length];
        (double, int[])? best = null;
        void Walk(int u, long cost, double distortion)
        {
            if (cost > problem.BudgetBits)
                return;
            if (u == options.Length)
            {
                if (best is null || distortion < best.Value.Item1 - 1e-12)
                    best = (distortion, pick.ToArray());
                return;
            }
            foreach (var b in options[u])
            {
                pick[u] = b;
                Walk(u + 1, cost + problem.Units[u].Size * b, distortion + DistortionAt(problem.Units[u], b));
            }
        }
        Walk(0, 0, 0);
        return best;
    }

    public static double DistortionAt(UnitCurve unit, int bits)
    {
        var i = unit.Bits.ToList().IndexOf(bits);
        return i < 0 ? 0 : unit.Distortion[i];
    }
}
