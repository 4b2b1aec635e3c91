using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace OnnxQuant.Passes.Quantization;

/// <summary>
/// The dense symmetric positive definite algebra compensation needs, on row-major double arrays: the second-moment
/// matrix of input rows, and the upper Cholesky factor of an inverse. MathNet's managed provider does both at about
/// 0.5 GFLOP/s (a 4608-wide 3x3 Conv took minutes), and its native OpenBLAS provider has no Linux build in the package
/// feeds, so these few loops are written here: dot products of contiguous rows in a fixed order with 256-bit vectors,
/// parallel over independent rows or columns. Every element is one dot product whose summation order depends on nothing
/// but its length, so results are identical for any thread count and on any x86-64 machine (AVX-512 or not).
/// </summary>
public static class DenseSpd
{
    /// <summary><c>sum_k a[k] * b[k]</c> with a fixed summation order (two 4-wide accumulators, then the tail).</summary>
    public static double Dot(ReadOnlySpan<double> a, ReadOnlySpan<double> b)
    {
        var n = a.Length;
        var i = 0;
        double sum = 0;
        if (Vector256.IsHardwareAccelerated && n >= 8)
        {
            var va = MemoryMarshal.Cast<double, Vector256<double>>(a);
            var vb = MemoryMarshal.Cast<double, Vector256<double>>(b[..n]);
            Vector256<double> acc0 = Vector256<double>.Zero, acc1 = Vector256<double>.Zero;
            var v = 0;
            for (; v + 1 < va.Length; v += 2)
            {
                acc0 = Vector256.FusedMultiplyAdd(va[v], vb[v], acc0);
                acc1 = Vector256.FusedMultiplyAdd(va[v + 1], vb[v + 1], acc1);
            }
            var acc = acc0 + acc1;
            sum = acc[0] + acc[1] + (acc[2] + acc[3]);
            i = v * 4;
        }
        // The same order without vector hardware would differ in the last bits; every x86-64 .NET target has AVX2
        // or falls back here for all dot products alike.
        for (; i < n; i++)
            sum = Math.FusedMultiplyAdd(a[i], b[i], sum);
        return sum;
    }

    /// <summary><c>E[x]</c> of <paramref name="rows"/>: per column, the rows summed in order, over m.</summary>
    public static double[] Mean(IReadOnlyList<float[]> rows, int n)
    {
        var mean = new double[n];
        for (var i = 0; i < n; i++)
        {
            double s = 0;
            foreach (var row in rows)
                s += row[i];
            mean[i] = s / rows.Count;
        }
        return mean;
    }

    /// <summary>
    /// <c>S = X^T X / m</c> and <c>E[x] = X^T 1 / m</c> of <paramref name="rows"/> (m rows of length n), S row-major.
    /// </summary>
    public static (double[] Second, double[] Mean) Moments(IReadOnlyList<float[]> rows, int n, int threads)
    {
        var m = rows.Count;
        // Columns of X as contiguous rows, so each S entry is one dot product.
        var columns = new double[n][];
        for (var i = 0; i < n; i++)
        {
            var column = new double[m];
            for (var r = 0; r < m; r++)
                column[r] = rows[r][i];
            columns[i] = column;
        }
        var second = new double[(long)n * n];
        var mean = new double[n];
        Parallel.For(0, n, Options(threads), i =>
        {
            double s = 0;
            foreach (var v in columns[i])
                s += v;
            mean[i] = s / m;
            for (var j = 0; j <= i; j++)
                second[(long)i * n + j] = Dot(columns[i], columns[j]) / m;
        });
        for (var i = 0; i < n; i++)
            for (var j = i + 1; j < n; j++)
                second[(long)i * n + j] = second[(long)j * n + i];
        return (second, mean);
    }

    /// <summary>
    /// The upper triangular U with <c>A^-1 = U^T U</c> for a symmetric positive definite <paramref name="a"/> (n x n,
    /// row-major; not modified), or null when <paramref name="a"/> is not positive definite. With J the reversal
    /// permutation, <c>J A J = L L^T</c> gives <c>A^-1 = (J L^-T J)(J L^-1 J)</c>, so <c>U = J L^-1 J</c>: one Cholesky
    /// factorization and one triangular inverse (n^3 / 3 multiply-adds in all) instead of an inverse and a second
    /// factorization. Both are blocked so that rows are reused from cache.
    /// </summary>
    public static double[]? InverseUpperFactor(double[] a, int n, int threads)
    {
        var l = new double[(long)n * n];
        for (var i = 0; i < n; i++)
            for (var j = 0; j <= i; j++)
                l[(long)i * n + j] = a[(long)(n - 1 - i) * n + (n - 1 - j)];
        if (!Cholesky(l, n, Options(threads)))
            return null;
        return ReversedInverse(l, n, Options(threads));
    }

    private const int Block = 64;

    /// <summary>
    /// In-place lower Cholesky factor of the lower triangle of <paramref name="w"/>, right-looking by blocks of
    /// <see cref="Block"/> columns: factor the diagonal block, solve the rows below it, subtract the block's
    /// contribution from the trailing triangle (each entry one dot product, rows in parallel).
    /// </summary>
    private static bool Cholesky(double[] w, int n, ParallelOptions options)
    {
        for (var k0 = 0; k0 < n; k0 += Block)
        {
            var k1 = Math.Min(n, k0 + Block);
            for (var i = k0; i < k1; i++)
            {
                for (var j = k0; j < i; j++)
                    w[(long)i * n + j] = (w[(long)i * n + j] - Dot(w.AsSpan(i * n + k0, j - k0), w.AsSpan(j * n + k0, j - k0))) / w[(long)j * n + j];
                var d = w[(long)i * n + i] - Dot(w.AsSpan(i * n + k0, i - k0), w.AsSpan(i * n + k0, i - k0));
                if (!(d > 0) || !double.IsFinite(d))
                    return false;
                w[(long)i * n + i] = Math.Sqrt(d);
            }
            var start = k0;
            var end = k1;
            Parallel.For(k1, n, options, i =>
            {
                for (var j = start; j < end; j++)
                    w[(long)i * n + j] = (w[(long)i * n + j] - Dot(w.AsSpan(i * n + start, j - start), w.AsSpan(j * n + start, j - start))) / w[(long)j * n + j];
            });
            // Every row's block columns are solved before any trailing entry reads another row's.
            Parallel.For(k1, n, options, i =>
            {
                var row = w.AsSpan(i * n + start, end - start);
                for (var j = end; j <= i; j++)
                    w[(long)i * n + j] -= Dot(row, w.AsSpan(j * n + start, end - start));
            });
        }
        return true;
    }

    /// <summary>
    /// <c>U = J L^-1 J</c> from the lower factor: columns of L^-1 by forward substitution, in groups of
    /// <see cref="Group"/> columns that share each row of L while it is in cache.
    /// </summary>
    private static double[] ReversedInverse(double[] l, int n, ParallelOptions options)
    {
        var u = new double[(long)n * n];
        var groups = (n + Group - 1) / Group;
        Parallel.For(0, groups, options, g =>
        {
            var c0 = g * Group;
            var c1 = Math.Min(n, c0 + Group);
            var x = new double[c1 - c0][];
            for (var c = c0; c < c1; c++)
                x[c - c0] = new double[n];
            for (var k = c0; k < n; k++)
            {
                var diagonal = l[(long)k * n + k];
                for (var c = c0; c < c1 && c <= k; c++)
                {
                    var xc = x[c - c0];
                    xc[k] = c == k ? 1 / diagonal : -Dot(l.AsSpan(k * n + c, k - c), xc.AsSpan(c, k - c)) / diagonal;
                }
            }
            // U[i, t] = X[n-1-i, n-1-t]: column c of X is column n-1-c of U, row n-1-k for X[k, c].
            for (var c = c0; c < c1; c++)
                for (var k = c; k < n; k++)
                    u[(long)(n - 1 - k) * n + (n - 1 - c)] = x[c - c0][k];
        });
        return u;
    }

    private const int Group = 16;

    private static ParallelOptions Options(int threads) =>
        new() { MaxDegreeOfParallelism = threads > 0 ? threads : Environment.ProcessorCount };
}
