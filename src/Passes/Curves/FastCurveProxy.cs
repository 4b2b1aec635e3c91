using OnnxQuant.Passes.Quantization;

namespace OnnxQuant.Passes.Curves;

/// <summary>
/// The fast curve model: the squared error a unit's quantized weight adds to its layer's output, from the calibrated
/// second moments of the layer's input channels, <c>P_u(b) = sum_i (w_i - Q_b(w_i))^2 * E[x_c(i)^2]</c> where c(i)
/// is the input channel weight i multiplies (the diagonal of the input covariance; cross terms are dropped). The
/// curve is then <c>D_u(b) = k_u * P_u(b)</c> with the sensitivity <c>k_u = D_u(b_ref) / P_u(b_ref)</c> measured
/// exactly at one width, so it costs one measured point per unit instead of one per candidate width.
/// </summary>
public static class FastCurveProxy
{
    /// <summary>P_u(b) for every width in <paramref name="bits"/>.</summary>
    /// <param name="weight">The float weight (layer or full tensor; only <paramref name="mask"/> elements count).</param>
    /// <param name="inputChannel">For every weight element, the index into <paramref name="secondMoments"/>.</param>
    /// <param name="mask">Flat element indices that belong to the unit; null = all.</param>
    public static double[] Proxy(float[] weight, WeightLayout layout, int[] inputChannel, double[] secondMoments,
        IReadOnlyList<int> bits, int[]? mask = null)
    {
        var result = new double[bits.Count];
        for (var k = 0; k < bits.Count; k++)
        {
            var q = QuantMath.FakeQuantizeWeight(weight, layout, bits[k]);
            double sum = 0;
            if (mask is null)
            {
                for (var i = 0; i < weight.Length; i++)
                {
                    var d = weight[i] - q[i];
                    sum += d * d * secondMoments[inputChannel[i]];
                }
            }
            else
            {
                foreach (var i in mask)
                {
                    var d = weight[i] - q[i];
                    sum += d * d * secondMoments[inputChannel[i]];
                }
            }
            result[k] = sum;
        }
        return result;
    }

    /// <summary>Scales a proxy curve so it passes through the measured point (bits[refIndex], measured).</summary>
    public static double[] Calibrate(double[] proxy, int refIndex, double measured)
    {
        var k = proxy[refIndex] > 0 ? measured / proxy[refIndex] : 0;
        return proxy.Select(p => p * k).ToArray();
    }

    /// <summary>Spearman rank correlation of two equally long sequences (ties get their mean rank).</summary>
    public static double RankCorrelation(IReadOnlyList<double> a, IReadOnlyList<double> b)
    {
        if (a.Count != b.Count || a.Count < 2)
            return double.NaN;
        var ra = Ranks(a);
        var rb = Ranks(b);
        double ma = ra.Average(), mb = rb.Average(), num = 0, da = 0, db = 0;
        for (var i = 0; i < ra.Length; i++)
        {
            num += (ra[i] - ma) * (rb[i] - mb);
            da += (ra[i] - ma) * (ra[i] - ma);
            db += (rb[i] - mb) * (rb[i] - mb);
        }
        return da == 0 || db == 0 ? double.NaN : num / Math.Sqrt(da * db);
    }

    private static double[] Ranks(IReadOnlyList<double> values)
    {
        var order = Enumerable.Range(0, values.Count).OrderBy(i => values[i]).ToArray();
        var ranks = new double[values.Count];
        for (var i = 0; i < order.Length;)
        {
            var j = i;
            while (j + 1 < order.Length && values[order[j + 1]] == values[order[i]])
                j++;
            for (var k = i; k <= j; k++)
                ranks[order[k]] = (i + j) / 2.0;
            i = j + 1;
        }
        return ranks;
    }
}
