using System.Diagnostics;
using System.Globalization;
using OnnxQuant.Passes.Quantization;

namespace OnnxQuant.Benchmarks;

/// <summary>
/// Ratio benchmark `compensation`: the three costs of second-order rounding for one layer of a given size, on seeded
/// random data: the second-moment matrix S of the input rows (m n^2 / 2 multiply-adds), the inverse factor of S
/// (n^3 / 3), and the column updates at every candidate width (widths x out x n^2 / 2), with the multiply-add rate of
/// each. Usage: compensation [--width 4608] [--channels 512] [--rows 512] [--bits 2,3,4,5,6,8] [--threads 0].
/// </summary>
public static class CompensationBenchmark
{
    public static RatioBenchmark Benchmark { get; } = new("compensation",
        "compensation [--width N] [--channels C] [--rows M] [--bits 2,3,4,5,6,8] [--threads T]: seconds and GFMA/s of S, its factor and the column updates",
        Run);

    private static int Run(string[] args)
    {
        int width = 4608, channels = 512, rows = 512, threads = 0;
        var bits = QuantMath.DefaultCandidateBits.ToArray();
        for (var i = 0; i < args.Length; i++)
        {
            if (args[i] == "--width") width = int.Parse(args[++i], CultureInfo.InvariantCulture);
            else if (args[i] == "--channels") channels = int.Parse(args[++i], CultureInfo.InvariantCulture);
            else if (args[i] == "--rows") rows = int.Parse(args[++i], CultureInfo.InvariantCulture);
            else if (args[i] == "--bits") bits = args[++i].Split(',').Select(s => int.Parse(s, CultureInfo.InvariantCulture)).ToArray();
            else if (args[i] == "--threads") threads = int.Parse(args[++i], CultureInfo.InvariantCulture);
            else
            {
                Console.Error.WriteLine(Benchmark.Usage);
                return 2;
            }
        }
        var random = new Random(7);
        // Correlated inputs (a shared low-rank part plus noise), as real activations are: S is then far from diagonal.
        var basis = Enumerable.Range(0, 16).Select(_ => Enumerable.Range(0, width).Select(_ => (float)random.NextDouble() - 0.5f).ToArray()).ToArray();
        var inputRows = Enumerable.Range(0, rows).Select(_ =>
        {
            var row = new float[width];
            foreach (var b in basis)
            {
                var c = (float)(random.NextDouble() * 2 - 1);
                for (var j = 0; j < width; j++)
                    row[j] += c * b[j];
            }
            for (var j = 0; j < width; j++)
                row[j] += 0.1f * ((float)random.NextDouble() - 0.5f);
            return row;
        }).ToList();
        var weight = Enumerable.Range(0, channels * width).Select(_ => (float)(random.NextDouble() * 2 - 1) * 0.05f).ToArray();
        var layout = new WeightLayout([channels, width], 0);

        var clock = Stopwatch.StartNew();
        var (second, _) = DenseSpd.Moments(inputRows, width, threads);
        var momentsSeconds = clock.Elapsed.TotalSeconds;
        var statistics = new InputStatistics(width, () => second, new double[width], width, channels, rows);

        clock.Restart();
        var factor = Compensator.Factor(statistics, 0, 128, ordered: true, threads);
        var factorSeconds = clock.Elapsed.TotalSeconds;
        if (factor is null)
        {
            Console.Error.WriteLine("S is not positive definite");
            return 1;
        }

        clock.Restart();
        var quantized = Compensator.QuantizeWidths(weight, layout, bits, statistics, threads);
        var updateSeconds = clock.Elapsed.TotalSeconds;

        double n = width;
        Console.WriteLine($"compensation: width {width}, {channels} channels, {rows} rows, widths {string.Join(",", bits)}, threads {(threads > 0 ? threads : Environment.ProcessorCount)}");
        Console.WriteLine("part              seconds   GFMA/s");
        Console.WriteLine(Line("S = X^T X / m", momentsSeconds, rows * n * n / 2));
        Console.WriteLine(Line("factor of S", factorSeconds, n * n * n / 6));
        Console.WriteLine(Line("column updates", updateSeconds, bits.Length * channels * n * n / 2));
        Console.WriteLine("integers per width: " + string.Join(", ", quantized.Select(q => $"{q.Bits}b sum|q| {q.Values.Sum(v => Math.Abs((int)v))}")));
        return 0;
    }

    private static string Line(string part, double seconds, double fma) =>
        $"{part,-16} {seconds,8:F2} {fma / seconds / 1e9,8:F2}";
}
