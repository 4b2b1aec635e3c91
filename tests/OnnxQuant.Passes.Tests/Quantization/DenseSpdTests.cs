using MathNet.Numerics.LinearAlgebra;
using OnnxQuant.Passes.Quantization;

namespace OnnxQuant.Passes.Tests.Quantization;

public class DenseSpdTests
{
    /// <summary>m random rows of length n with correlated columns (a second-moment matrix like a layer input's).</summary>
    private static List<float[]> Rows(int m, int n, int seed)
    {
        var random = new Random(seed);
        var mix = Enumerable.Range(0, n).Select(_ => random.NextDouble() - 0.5).ToArray();
        return Enumerable.Range(0, m).Select(_ =>
        {
            var common = random.NextDouble() - 0.5;
            return Enumerable.Range(0, n).Select(i => (float)(random.NextDouble() - 0.5 + 2 * common * mix[i])).ToArray();
        }).ToList();
    }

    /// <summary>
    /// Every entry of S is one multiply-add chain over the rows in order, bit for bit, whichever register tile (512-bit
    /// rows of 8, 256-bit rows of 4, scalar tails) computed it: what makes S the same on machines with and without
    /// AVX-512. 75 columns leave tails of every kind.
    /// </summary>
    [Fact]
    public void MomentsAreOneMultiplyAddChainPerEntry()
    {
        const int n = 75;
        var rows = Rows(41, n, 3);
        var (second, _) = DenseSpd.Moments(rows, n, threads: 2);
        for (var i = 0; i < n; i++)
            for (var j = 0; j <= i; j++)
            {
                double s = 0;
                foreach (var row in rows)
                    s = Math.FusedMultiplyAdd(row[i], row[j], s);
                Assert.Equal(s / rows.Count, second[i * n + j]);
                Assert.Equal(second[i * n + j], second[j * n + i]);
            }
    }

    [Fact]
    public void MomentsEqualMathNetsWithinRounding()
    {
        var rows = Rows(200, 37, 1);
        var (second, mean) = DenseSpd.Moments(rows, 37, threads: 2);
        var x = Matrix<double>.Build.Dense(rows.Count, 37, (r, i) => rows[r][i]);
        var expected = x.TransposeThisAndMultiply(x).Divide(rows.Count);
        var expectedMean = x.ColumnSums().Divide(rows.Count);
        for (var i = 0; i < 37; i++)
        {
            Assert.Equal(expectedMean[i], mean[i], 1e-12);
            for (var j = 0; j < 37; j++)
                Assert.Equal(expected[i, j], second[i * 37 + j], 1e-12);
        }
    }

    /// <summary>Lower triangle of a damped second-moment matrix (the upper triangle left at NaN: it must not be read).</summary>
    private static (double[] Full, double[] Lower) Spd(int n, int seed)
    {
        var (second, _) = DenseSpd.Moments(Rows(3 * n + 10, n, seed), n, threads: 2);
        for (var i = 0; i < n; i++)
            second[i * n + i] += 0.01;
        var lower = new double[n * n];
        for (var i = 0; i < n; i++)
            for (var j = 0; j < n; j++)
                lower[i * n + j] = j <= i ? second[i * n + j] : double.NaN;
        return (second, lower);
    }

    /// <summary>
    /// L L^T = A within 1e-9 per entry, and L is MathNet's Cholesky factor within 1e-9 (relative); sizes straddle the
    /// 64-column blocks and the 4-row, 8-column register tiles.
    /// </summary>
    [Theory]
    [InlineData(1)]
    [InlineData(7)]
    [InlineData(64)]
    [InlineData(150)]
    [InlineData(203)]
    public void CholeskyInPlaceFactorsAndMatchesMathNet(int n)
    {
        var (second, l) = Spd(n, n);
        Assert.True(DenseSpd.CholeskyInPlace(l, n, threads: 2));
        var a = Matrix<double>.Build.Dense(n, n, (i, j) => second[i * n + j]);
        var lm = Matrix<double>.Build.Dense(n, n, (i, j) => j <= i ? l[i * n + j] : 0);
        var product = lm.TransposeAndMultiply(lm);
        for (var i = 0; i < n; i++)
            for (var j = 0; j < n; j++)
                Assert.Equal(a[i, j], product[i, j], 1e-9);
        var reference = a.Cholesky().Factor;
        for (var i = 0; i < n; i++)
            for (var j = 0; j <= i; j++)
                Assert.Equal(reference[i, j], lm[i, j], 1e-9 * Math.Max(1, Math.Abs(reference[i, j])));
        for (var i = 0; i < n; i++)
            for (var j = i + 1; j < n; j++)
                Assert.True(double.IsNaN(l[i * n + j]), "the upper triangle was written");
    }

    [Fact]
    public void ResultsDoNotDependOnTheThreadCount()
    {
        const int n = 200;
        var rows = Rows(300, n, 5);
        var (s1, m1) = DenseSpd.Moments(rows, n, threads: 1);
        var (s2, m2) = DenseSpd.Moments(rows, n, threads: 2);
        Assert.Equal(s1, s2);
        Assert.Equal(m1, m2);
        var (_, one) = Spd(n, 9);
        var two = (double[])one.Clone();
        Assert.True(DenseSpd.CholeskyInPlace(one, n, threads: 1));
        Assert.True(DenseSpd.CholeskyInPlace(two, n, threads: 2));
        Assert.Equal(one, two);
    }

    [Fact]
    public void NotPositiveDefiniteIsRefused()
    {
        // [[1, 2], [2, 1]] has eigenvalues 3 and -1.
        Assert.False(DenseSpd.CholeskyInPlace([1, double.NaN, 2, 1], 2, threads: 1));
        Assert.False(DenseSpd.CholeskyInPlace([0, double.NaN, 0, 1], 2, threads: 1));
    }

    [Fact]
    public void DotIsExactOnIntegersAndHandlesTails()
    {
        for (var n = 0; n < 40; n++)
        {
            var a = Enumerable.Range(1, n).Select(i => (double)i).ToArray();
            var b = Enumerable.Range(1, n).Select(i => (double)(i % 7 - 3)).ToArray();
            Assert.Equal(a.Zip(b, (x, y) => x * y).Sum(), DenseSpd.Dot(a, b));
        }
    }
}
