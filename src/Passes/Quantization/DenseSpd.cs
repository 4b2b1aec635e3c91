using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace OnnxQuant.Passes.Quantization;

/// <summary>
/// The dense symmetric positive definite algebra compensation needs, on row-major double arrays: the second-moment
/// matrix of input rows, and the upper Cholesky factor of an inverse. MathNet's managed provider does both at about
/// 0.5 GFLOP/s (a 4608-wide 3x3 Conv took minutes), and its native OpenBLAS provider has no Linux build in the package
/// feeds, so these few loops are written here: dot products of contiguous rows in a fixed order with 256-bit (512-bit where the CPU has them) vectors,
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
    /// <param name="round">Applied to each entry of S as it is written (the mirrored half copies the result).</param>
    public static (double[] Second, double[] Mean) Moments(IReadOnlyList<float[]> rows, int n, int threads, Func<double, double>? round = null)
    {
        var m = rows.Count;
        // X^T (each column of X one contiguous row) for the left operand and X packed 8 columns at a time for the
        // right: each S entry is one multiply-add chain over the rows in order, computed 4 x 8 at a time in registers.
        var transposed = new double[(long)n * m];
        var packed = new double[(long)m * (n + 8)];
        for (var r = 0; r < m; r++)
        {
            var row = rows[r];
            for (var i = 0; i < n; i++)
            {
                transposed[(long)i * m + r] = row[i];
                packed[(long)i / 8 * m * 8 + (long)r * 8 + i % 8] = row[i];
            }
        }
        var second = new double[(long)n * n];
        var mean = new double[n];
        // Rows are taken GroupRows at a time and each packed 8-column panel is read once for the whole group: read once
        // per 4 rows, the panels streamed from memory and the product ran at a fifth of the multiply-add rate.
        var groups = (n + GroupRows - 1) / GroupRows;
        Parallel.For(0, groups, Options(threads), group =>
        {
            var g0 = group * GroupRows;
            var g1 = Math.Min(n, g0 + GroupRows);
            Span<double> acc = stackalloc double[RowTile * 8];
            for (var i = g0; i < g1; i++)
            {
                double s = 0;
                for (var r = 0; r < m; r++)
                    s += transposed[(long)i * m + r];
                mean[i] = s / m;
            }
            for (var j = 0; j < g1; j += 8)
                for (var i0 = Math.Max(g0, j / RowTile * RowTile); i0 < g1; i0 += RowTile)
                {
                    var i1 = Math.Min(g1, i0 + RowTile);
                    Tile(transposed, (long)i0 * m, i1 - i0, m, packed, (long)j / 8 * m * 8, m, Math.Min(8, n - j), acc);
                    for (var i = i0; i < i1; i++)
                        for (var c = 0; c < 8 && j + c <= i; c++)
                            second[(long)i * n + j + c] = round is null ? acc[(i - i0) * 8 + c] / m : round(acc[(i - i0) * 8 + c] / m);
                }
        });
        for (var i = 0; i < n; i++)
            for (var j = i + 1; j < n; j++)
                second[(long)i * n + j] = second[(long)j * n + i];
        return (second, mean);
    }

    /// <summary>
    /// In place: the lower Cholesky factor L of the symmetric positive definite matrix whose lower triangle
    /// <paramref name="w"/> holds (n x n, row-major; the upper triangle is neither read nor written), so that
    /// <c>A = L L^T</c>; false when A is not positive definite. The caller allocates the one n^2 array: fresh large
    /// arrays are expensive to fault in, so no copy is made here.
    /// </summary>
    public static bool CholeskyInPlace(double[] w, int n, int threads) => Cholesky(w, n, Options(threads));

    private const int Block = 64;

    /// <summary>
    /// In-place lower Cholesky factor of the lower triangle of <paramref name="w"/>, right-looking by blocks of
    /// <see cref="Block"/> columns: factor the diagonal block, solve the rows below it, subtract the block's
    /// contribution from the trailing triangle. The trailing update, n^3 / 6 of the n^3 / 6 + O(n^2) work, runs as a
    /// register-blocked product against the transposed panel: each entry subtracts one multiply-add chain over the
    /// panel's columns in order, so its value does not depend on the tiling, the vector width or the thread count.
    /// </summary>
    private static bool Cholesky(double[] w, int n, ParallelOptions options)
    {
        var panel = new double[Block * ((long)n + 8)];
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
            var width = end - start;
            Parallel.For(k1, n, options, i =>
            {
                for (var j = start; j < end; j++)
                    w[(long)i * n + j] = (w[(long)i * n + j] - Dot(w.AsSpan(i * n + start, j - start), w.AsSpan(j * n + start, j - start))) / w[(long)j * n + j];
            });
            if (k1 >= n)
                break;
            // The solved panel, transposed and packed 8 columns at a time: the 8 entries of row j..j+7 that one
            // multiply-add step reads for panel column k lie next to those for k + 1, so the update streams memory.
            for (var i = k1; i < n; i++)
            {
                var chunk = (long)(i - k1) / 8 * Block * 8 + (i - k1) % 8;
                for (var k = 0; k < width; k++)
                    panel[chunk + k * 8] = w[(long)i * n + start + k];
            }
            var tiles = (n - k1 + RowTile - 1) / RowTile;
            Parallel.For(0, tiles, options, tile =>
            {
                var i0 = k1 + tile * RowTile;
                var i1 = Math.Min(n, i0 + RowTile);
                TrailingUpdate(w, panel, n, start, width, i0, i1, k1);
            });
        }
        return true;
    }

    private const int RowTile = 8;

    /// <summary>Rows that share each pass over a packed panel (a multiple of <see cref="RowTile"/>).</summary>
    private const int GroupRows = 32;

    /// <summary>
    /// Rows [i0, i1) of the trailing triangle: <c>w[i, j] -= sum_k w[i, start + k] * panel[k, j]</c> for
    /// <c>from &lt;= j &lt;= i</c>.
    /// </summary>
    private static void TrailingUpdate(double[] w, double[] panel, int n, int start, int width, int i0, int i1, int from)
    {
        Span<double> acc = stackalloc double[RowTile * 8];
        for (var j = from; j < i1; j += 8)
        {
            Tile(w, (long)i0 * n + start, i1 - i0, n, panel, (long)(j - from) / 8 * Block * 8, width, Math.Min(8, n - j), acc);
            for (var i = i0; i < i1; i++)
                for (var c = 0; c < 8 && j + c <= i; c++)
                    w[(long)i * n + j + c] -= acc[(i - i0) * 8 + c];
        }
    }

    /// <summary>
    /// <c>acc[r, c] = sum_k a[first + r * stride + k] * panel[at + k * 8 + c]</c> for <paramref name="rows"/> (at most
    /// 8) rows and <paramref name="columns"/> (at most 8) columns: one multiply-add chain per entry in k order, so the
    /// value is the same whether it is computed in a 512-bit or a 256-bit register tile or alone.
    /// </summary>
    private static void Tile(double[] a, long first, int rows, long stride, double[] panel, long at, int width, int columns, Span<double> acc)
    {
        if (rows == 8 && columns == 8 && Vector512.IsHardwareAccelerated)
        {
            Tile512(a, first, stride, panel, at, width, acc);
            return;
        }
        for (var r0 = 0; r0 < rows; r0 += 4)
        {
            var tileRows = Math.Min(4, rows - r0);
            if (tileRows == 4 && columns == 8 && Vector256.IsHardwareAccelerated)
                Tile256(a, first + r0 * stride, stride, panel, at, width, acc[(r0 * 8)..]);
            else
                for (var r = r0; r < r0 + tileRows; r++)
                    for (var c = 0; c < columns; c++)
                    {
                        double s = 0;
                        for (var k = 0; k < width; k++)
                            s = Math.FusedMultiplyAdd(a[first + r * stride + k], panel[at + k * 8 + c], s);
                        acc[r * 8 + c] = s;
                    }
        }
    }

    private static void Tile512(double[] a, long first, long stride, double[] panel, long at, int width, Span<double> acc)
    {
        Vector512<double> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
        ref var p = ref MemoryMarshal.GetArrayDataReference(panel);
        ref var x = ref Unsafe.Add(ref MemoryMarshal.GetArrayDataReference(a), (nint)first);
        for (var k = 0; k < width; k++)
        {
            var u = Vector512.LoadUnsafe(ref p, (nuint)(at + k * 8));
            a0 = Vector512.FusedMultiplyAdd(Vector512.Create(Unsafe.Add(ref x, (nint)k)), u, a0);
            a1 = Vector512.FusedMultiplyAdd(Vector512.Create(Unsafe.Add(ref x, (nint)(stride + k))), u, a1);
            a2 = Vector512.FusedMultiplyAdd(Vector512.Create(Unsafe.Add(ref x, (nint)(2 * stride + k))), u, a2);
            a3 = Vector512.FusedMultiplyAdd(Vector512.Create(Unsafe.Add(ref x, (nint)(3 * stride + k))), u, a3);
            a4 = Vector512.FusedMultiplyAdd(Vector512.Create(Unsafe.Add(ref x, (nint)(4 * stride + k))), u, a4);
            a5 = Vector512.FusedMultiplyAdd(Vector512.Create(Unsafe.Add(ref x, (nint)(5 * stride + k))), u, a5);
            a6 = Vector512.FusedMultiplyAdd(Vector512.Create(Unsafe.Add(ref x, (nint)(6 * stride + k))), u, a6);
            a7 = Vector512.FusedMultiplyAdd(Vector512.Create(Unsafe.Add(ref x, (nint)(7 * stride + k))), u, a7);
        }
        a0.CopyTo(acc); a1.CopyTo(acc[8..]); a2.CopyTo(acc[16..]); a3.CopyTo(acc[24..]);
        a4.CopyTo(acc[32..]); a5.CopyTo(acc[40..]); a6.CopyTo(acc[48..]); a7.CopyTo(acc[56..]);
    }

    private static void Tile256(double[] a, long first, long stride, double[] panel, long at, int width, Span<double> acc)
    {
        Vector256<double> a00 = default, a01 = default, a10 = default, a11 = default,
            a20 = default, a21 = default, a30 = default, a31 = default;
        ref var p = ref MemoryMarshal.GetArrayDataReference(panel);
        ref var x = ref MemoryMarshal.GetArrayDataReference(a);
        for (var k = 0; k < width; k++)
        {
            var offset = (nuint)(at + k * 8);
            var u0 = Vector256.LoadUnsafe(ref p, offset);
            var u1 = Vector256.LoadUnsafe(ref p, offset + 4);
            var e0 = Vector256.Create(Unsafe.Add(ref x, (nint)(first + k)));
            var e1 = Vector256.Create(Unsafe.Add(ref x, (nint)(first + stride + k)));
            var e2 = Vector256.Create(Unsafe.Add(ref x, (nint)(first + 2 * stride + k)));
            var e3 = Vector256.Create(Unsafe.Add(ref x, (nint)(first + 3 * stride + k)));
            a00 = Vector256.FusedMultiplyAdd(e0, u0, a00);
            a01 = Vector256.FusedMultiplyAdd(e0, u1, a01);
            a10 = Vector256.FusedMultiplyAdd(e1, u0, a10);
            a11 = Vector256.FusedMultiplyAdd(e1, u1, a11);
            a20 = Vector256.FusedMultiplyAdd(e2, u0, a20);
            a21 = Vector256.FusedMultiplyAdd(e2, u1, a21);
            a30 = Vector256.FusedMultiplyAdd(e3, u0, a30);
            a31 = Vector256.FusedMultiplyAdd(e3, u1, a31);
        }
        a00.CopyTo(acc); a01.CopyTo(acc[4..]);
        a10.CopyTo(acc[8..]); a11.CopyTo(acc[12..]);
        a20.CopyTo(acc[16..]); a21.CopyTo(acc[20..]);
        a30.CopyTo(acc[24..]); a31.CopyTo(acc[28..]);
    }

    private static ParallelOptions Options(int threads) =>
        new() { MaxDegreeOfParallelism = threads > 0 ? threads : Environment.ProcessorCount };
}
