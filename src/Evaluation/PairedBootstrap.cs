namespace OnnxQuant.Evaluation;

/// <summary>
/// How sure a difference in AP between two models on the same images is: <see cref="Resamples"/> draws of the images
/// with replacement (the same draws for both models, from a fixed seed), AP of each model on each draw, and the
/// percentile interval of the differences. An interval that excludes 0 says the eval set resolves the difference; one
/// that straddles it says the difference is within what the choice of images moves.
/// </summary>
/// <param name="Difference">AP of the second model minus AP of the first, on every image once.</param>
/// <param name="Lower">2.5th percentile of the resampled differences.</param>
/// <param name="Upper">97.5th percentile of the resampled differences.</param>
/// <param name="SecondHigher">Share of resamples on which the second model's AP is strictly higher.</param>
public sealed record BootstrapComparison(double Difference, double Lower, double Upper, double SecondHigher, int Resamples, int Seed);

public static class PairedBootstrap
{
    public const int DefaultSeed = 20261206;

    /// <summary>Compares the AP of <paramref name="second"/> against <paramref name="first"/>; both matched on the same images.</summary>
    public static BootstrapComparison Compare(CocoMatches first, CocoMatches second, int resamples, int seed = DefaultSeed)
    {
        if (resamples < 1)
            throw new ArgumentOutOfRangeException(nameof(resamples), $"need at least one resample, got {resamples}");
        if (!first.ImageIds.SequenceEqual(second.ImageIds))
            throw new ArgumentException("the two models were evaluated on different images; a paired comparison needs the same ones");
        var n = first.ImageIds.Count;
        var once = Enumerable.Repeat(1, n).ToArray();
        var difference = (second.Ap(once) ?? 0) - (first.Ap(once) ?? 0);
        var random = new Random(seed);
        var weights = new int[n];
        var differences = new double[resamples];
        var higher = 0;
        for (var b = 0; b < resamples; b++)
        {
            Array.Clear(weights);
            for (var i = 0; i < n; i++)
                weights[random.Next(n)]++;
            var d = (second.Ap(weights) ?? 0) - (first.Ap(weights) ?? 0);
            differences[b] = d;
            if (d > 0)
                higher++;
        }
        Array.Sort(differences);
        return new BootstrapComparison(difference, Percentile(differences, 0.025), Percentile(differences, 0.975),
            (double)higher / resamples, resamples, seed);
    }

    // Linear interpolation between the closest ranks, as numpy's default percentile.
    private static double Percentile(double[] sorted, double q)
    {
        var position = q * (sorted.Length - 1);
        var low = (int)Math.Floor(position);
        var high = Math.Min(low + 1, sorted.Length - 1);
        return sorted[low] + (position - low) * (sorted[high] - sorted[low]);
    }
}
