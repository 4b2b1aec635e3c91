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

    /// <summary>
    /// U^T U is the inverse (A U^T U = I within 1e-9 per entry) and U is the upper Cholesky factor of A^-1 that MathNet
    /// computes the slow way (within 1e-9); sizes straddle the block and group sizes.
    /// </summary>
    [Theory]
    [InlineData(1)]
    [InlineData(7)]
    [InlineData(64)]
    [InlineData(150)]
    public void InverseUpperFactorInvertsAndMatchesMathNet(int n)
    {
        var (second, _) = DenseSpd.Moments(Rows(3 * n + 10, n, n), n, threads: 2);
        for (var i = 0; i < n; i++)
            second[i * n + i] += 0.01;
        var u = DenseSpd.InverseUpperFactor(second, n, threads: 2)!;
        Assert.NotNull(u);
        var a = Matrix<double>.Build.Dense(n, n, (i, j) => second[i * n + j]);
        var um = Matrix<double>.Build.Dense(n, n, (i, j) => u[i * n + j]);
        for (var i = 0; i < n; i++)
            for (var j = 0; j < i; j++)
                Assert.Equal(0, um[i, j]);
        var identity = a * um.TransposeThisAndMultiply(um);
        for (var i = 0; i < n; i++)
            for (var j = 0; j < n; j++)
                Assert.Equal(i == j ? 1 : 0, identity[i, j], 1e-9);
        var reference = a.Inverse().Cholesky().Factor.Transpose();
        for (var i = 0; i < n; i++)
            for (var j = 0; j < n; j++)
                Assert.Equal(reference[i, j], um[i, j], 1e-9 * Math.Max(1, Math.Abs(reference[i, j])));
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
        for (var i = 0; i < n; i++)
            s1[i * n + i] += 0.01;
        Assert.Equal(DenseSpd.InverseUpperFactor(s1, n, threads: 1), DenseSpd.InverseUpperFactor(s1, n, threads: 2));
    }

    [Fact]
    public void NotPositiveDefiniteGivesNull()
    {
        // [[1, 2], [2, 1]] has eigenvalues 3 and -1.
        Assert.Null(DenseSpd.InverseUpperFactor([1, 2, 2, 1], 2, threads: 1));
        Assert.Null(DenseSpd.InverseUpperFactor([0, 0, 0, 1], 2, threads: 1));
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
