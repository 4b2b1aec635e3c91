namespace OnnxQuant.Passes.Calibration;

/// <summary>
/// A histogram with a fixed number of equal-width bins whose range grows as data arrives: when a value falls outside,
/// adjacent bins are merged in pairs (doubling the width) and the range extended toward the value, so memory stays
/// <see cref="BinCount"/> counters however many samples stream through. Exact minimum and maximum are kept beside it.
/// NaN values are ignored by <see cref="Add"/>; callers reject NaN data before calibration.
/// </summary>
public sealed class StreamingHistogram
{
    private readonly double[] _counts;
    private double _low;
    private double _width;

    public StreamingHistogram(int binCount = 2048)
    {
        if (binCount < 16 || binCount % 2 != 0)
            throw new ArgumentOutOfRangeException(nameof(binCount), binCount, "need an even bin count of at least 16");
        _counts = new double[binCount];
    }

    public int BinCount => _counts.Length;
    public double Low => _low;
    public double BinWidth => _width;
    public double High => _low + _width * _counts.Length;
    public float Min { get; private set; } = float.PositiveInfinity;
    public float Max { get; private set; } = float.NegativeInfinity;
    public long Count { get; private set; }
    public ReadOnlySpan<double> Counts => _counts;

    /// <summary>Center of bin i.</summary>
    public double BinCenter(int i) => _low + (i + 0.5) * _width;

    public void Add(ReadOnlySpan<float> values)
    {
        var min = float.PositiveInfinity;
        var max = float.NegativeInfinity;
        foreach (var v in values)
        {
            if (v < min) min = v;
            if (v > max) max = v;
        }
        if (min > max)
            return; // empty or all NaN
        if (Count == 0)
        {
            // First data: span its range with some headroom so a few later batches fit without merging.
            var span = Math.Max(max - min, 1e-6f * Math.Max(1f, Math.Max(Math.Abs(min), Math.Abs(max))));
            _width = span * 1.25 / _counts.Length;
            _low = min - span * 0.125;
        }
        Grow(min, max);
        Min = Math.Min(Min, min);
        Max = Math.Max(Max, max);
        var inverse = 1.0 / _width;
        var last = _counts.Length - 1;
        foreach (var v in values)
        {
            if (float.IsNaN(v))
                continue;
            var bin = (int)((v - _low) * inverse);
            _counts[Math.Clamp(bin, 0, last)] += 1;
            Count++;
        }
    }

    private void Grow(double min, double max)
    {
        while (min < _low || max >= High)
        {
            var n = _counts.Length;
            var half = n / 2;
            var merged = new double[half];
            for (var i = 0; i < half; i++)
                merged[i] = _counts[2 * i] + _counts[2 * i + 1];
            Array.Clear(_counts);
            if (min < _low)
            {
                // Extend to the left: the old range becomes the right half.
                merged.CopyTo(_counts, half);
                _low -= _width * n;
            }
            else
            {
                merged.CopyTo(_counts, 0);
            }
            _width *= 2;
        }
    }
}
