using OnnxQuant.Solvers;

namespace OnnxQuant.Benchmarks;

/// <summary>
/// Reproducible allocation problems shaped like a ViT backbone split into channel groups: sizes are multiples of
/// 768 (one output channel of a 768-wide layer) between 64 and 3072 channels, candidate widths {2,3,4,5,6,8}, and
/// distortion falling about 4x per bit (uniform quantization noise) times a per-unit sensitivity spread over three
/// decades, with a little measurement noise.
/// </summary>
public static class SyntheticCurves
{
    public static readonly int[] Bits = [2, 3, 4, 5, 6, 8];

    public static IReadOnlyList<UnitCurve> Create(int units, int seed = 1)
    {
        var rng = new Random(seed);
        var curves = new UnitCurve[units];
        for (var u = 0; u < units; u++)
        {
            long size = 768L * rng.Next(64, 3073);
            var sensitivity = Math.Pow(10, rng.NextDouble() * 3 - 6) * size;
            var distortion = Bits.Select(b => sensitivity * Math.Pow(4, -b) * (0.9 + 0.2 * rng.NextDouble())).ToArray();
            for (var i = 1; i < distortion.Length; i++)
                distortion[i] = Math.Min(distortion[i], distortion[i - 1]);
            curves[u] = new UnitCurve($"blocks.{u / 16}.group{u % 16}", size, Bits, distortion);
        }
        return curves;
    }

    public static AllocationProblem Problem(int units, double targetBits = 4, int seed = 1) =>
        new(Create(units, seed), targetBits, minBits: 2);
}
