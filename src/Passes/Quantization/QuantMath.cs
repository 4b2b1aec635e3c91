using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Numerics.Tensors;

namespace OnnxQuant.Passes.Quantization;

/// <summary>
/// The quantization maths every pass shares. One convention throughout: a real value r is represented by an integer
/// q as <c>r = s * (q - z)</c>.
/// <list type="bullet">
/// <item>Weights: symmetric signed, <c>z = 0</c>, <c>q = clamp(round(w / s), -2^(b-1), 2^(b-1) - 1)</c>, one scale
/// per output channel (or per channel and block of <c>blockSize</c> consecutive elements along the reduction axis).
/// The scale is <c>s = r * max|w| / (2^(b-1) - 1)</c> with the clipping ratio r chosen from <see cref="ClipRatios"/>
/// to minimise the squared weight error. A channel that is all zero gets <c>s = 1</c> so dequantization is exact.</item>
/// <item>Activations: asymmetric unsigned, range widened to contain 0 so that <c>qmin &lt;= z &lt;= qmax</c> and 0
/// is exactly representable; <c>s = (max - min) / (qmax - qmin)</c>, <c>z = round(qmin - min / s)</c>.</item>
/// <item>Rounding is round-half-to-even (as ONNX QuantizeLinear), so fake quantization here matches ORT's Q/DQ.</item>
/// </list>
/// NaN in weights is rejected by the callers (the frontend validates initializers); here NaN propagates.
/// </summary>
public static class QuantMath
{
    /// <summary>Candidate bit widths for weights when the user names none.</summary>
    public static readonly IReadOnlyList<int> DefaultCandidateBits = [2, 3, 4, 5, 6, 8];

    /// <summary>Clipping ratios tried by the MSE search: 1.0 down to 0.335 in steps of 0.035 (20 candidates).</summary>
    public static readonly float[] ClipRatios = Enumerable.Range(0, 20).Select(k => 1f - 0.035f * k).ToArray();

    /// <summary>Smallest signed value of a b-bit two's-complement integer: -2^(b-1).</summary>
    public static int SignedMin(int bits) { CheckBits(bits); return -(1 << (bits - 1)); }

    /// <summary>Largest signed value of a b-bit two's-complement integer: 2^(b-1) - 1.</summary>
    public static int SignedMax(int bits) { CheckBits(bits); return (1 << (bits - 1)) - 1; }

    /// <summary>Largest unsigned value of a b-bit integer: 2^b - 1.</summary>
    public static int UnsignedMax(int bits) { CheckBits(bits); return (1 << bits) - 1; }

    private static void CheckBits(int bits)
    {
        if (bits is < 2 or > 16)
            throw new ArgumentOutOfRangeException(nameof(bits), bits, "bit width must be between 2 and 16");
    }

    /// <summary>
    /// Finds the symmetric scale of one channel (or block) at <paramref name="bits"/> bits that minimises
    /// <c>sum (w - s * clamp(round(w / s)))^2</c> over the clipping ratios. Returns 1 for an all-zero span.
    /// </summary>
    public static float MseOptimalScale(ReadOnlySpan<float> values, int bits)
    {
        var qmax = SignedMax(bits);
        var qmin = SignedMin(bits);
        var maxAbs = values.Length == 0 ? 0f : TensorPrimitives.MaxMagnitude(values);
        maxAbs = MathF.Abs(maxAbs);
        if (maxAbs == 0f || !float.IsFinite(maxAbs))
            return maxAbs == 0f ? 1f : maxAbs / qmax;
        var bestScale = maxAbs / qmax;
        var bestError = double.PositiveInfinity;
        foreach (var ratio in ClipRatios)
        {
            var scale = ratio * maxAbs / qmax;
            var error = SquaredError(values, scale, qmin, qmax);
            if (error < bestError)
            {
                bestError = error;
                bestScale = scale;
            }
        }
        return bestScale;
    }

    /// <summary>
    /// Sum of squared errors of fake-quantizing <paramref name="values"/> with a symmetric scale. Eight values at a time
    /// in a fixed order (256-bit vectors, squares summed in double), so the sum is the same on every x86-64 machine.
    /// </summary>
    public static double SquaredError(ReadOnlySpan<float> values, float scale, int qmin, int qmax)
    {
        var inverse = 1f / scale;
        var i = 0;
        double sum = 0;
        if (Vector256.IsHardwareAccelerated && values.Length >= Vector256<float>.Count)
        {
            var vectors = MemoryMarshal.Cast<float, Vector256<float>>(values);
            var vInverse = Vector256.Create(inverse);
            var vScale = Vector256.Create(scale);
            var vMin = Vector256.Create((float)qmin);
            var vMax = Vector256.Create((float)qmax);
            Vector256<double> lower = Vector256<double>.Zero, upper = Vector256<double>.Zero;
            foreach (var v in vectors)
            {
                // Round is round-half-to-even, as MathF.Round with MidpointRounding.ToEven.
                var q = Vector256.Min(Vector256.Max(Vector256.Round(v * vInverse), vMin), vMax);
                var d = v - q * vScale;
                var (lo, hi) = Vector256.Widen(d * d);
                lower += lo;
                upper += hi;
            }
            var total = lower + upper;
            sum = total[0] + total[1] + (total[2] + total[3]);
            i = vectors.Length * Vector256<float>.Count;
        }
        for (; i < values.Length; i++)
        {
            var v = values[i];
            var q = Math.Clamp(MathF.Round(v * inverse, MidpointRounding.ToEven), qmin, qmax);
            var d = v - q * scale;
            sum += d * d;
        }
        return sum;
    }

    /// <summary>
    /// Quantizes a weight symmetrically. <paramref name="layout"/> says which axis holds the output channels and, for
    /// blocked formats, the block size along the reduction axis. The result's <see cref="WeightQuantization.Values"/>
    /// has the weight's shape and element order; scales are [channels] or [channels, blocks] (channel-major).
    /// </summary>
    public static WeightQuantization QuantizeWeight(ReadOnlySpan<float> weight, WeightLayout layout, int bits)
    {
        if (weight.Length != layout.ElementCount)
            throw new ArgumentException($"weight has {weight.Length} elements, its layout {layout.ElementCount}", nameof(weight));
        var qmin = SignedMin(bits);
        var qmax = SignedMax(bits);
        var values = new sbyte[weight.Length];
        var scales = new float[layout.Channels * layout.BlocksPerChannel];
        var buffer = new float[layout.BlockLength];
        var indices = new int[layout.BlockLength];
        for (var c = 0; c < layout.Channels; c++)
        {
            for (var blk = 0; blk < layout.BlocksPerChannel; blk++)
            {
                var count = layout.GatherBlock(weight, c, blk, buffer, indices);
                var span = buffer.AsSpan(0, count);
                var scale = MseOptimalScale(span, bits);
                scales[c * layout.BlocksPerChannel + blk] = scale;
                var inverse = 1f / scale;
                for (var i = 0; i < count; i++)
                    values[indices[i]] = (sbyte)Math.Clamp(MathF.Round(span[i] * inverse, MidpointRounding.ToEven), qmin, qmax);
            }
        }
        return new WeightQuantization(bits, layout, values, scales);
    }

    /// <summary>
    /// Fake quantization of a weight: quantize then dequantize, returning floats in the weight's shape. Equal to what
    /// DequantizeLinear computes from <see cref="QuantizeWeight"/>'s output.
    /// </summary>
    public static float[] FakeQuantizeWeight(ReadOnlySpan<float> weight, WeightLayout layout, int bits) =>
        QuantizeWeight(weight, layout, bits).Dequantize();

    /// <summary>
    /// Asymmetric activation parameters for the range [min, max] at <paramref name="bits"/> bits (unsigned container,
    /// qmin = 0, qmax = 2^b - 1). The range is first widened to contain 0; a degenerate range gets scale 1.
    /// Invariant: <c>qmin &lt;= zeroPoint &lt;= qmax</c>, and 0 dequantizes to exactly 0.
    /// </summary>
    public static ActivationQuantization ActivationParameters(float min, float max, int bits)
    {
        if (float.IsNaN(min) || float.IsNaN(max))
            throw new ArgumentException("activation range contains NaN");
        var qmax = UnsignedMax(bits);
        min = MathF.Min(min, 0f);
        max = MathF.Max(max, 0f);
        if (max - min <= 0f)
            return new ActivationQuantization(bits, 1f, 0);
        var scale = (max - min) / qmax;
        var zeroPoint = (int)Math.Clamp(MathF.Round(-min / scale, MidpointRounding.ToEven), 0, qmax);
        return new ActivationQuantization(bits, scale, zeroPoint);
    }

    /// <summary>Fake-quantizes activations in place with the given parameters (round half to even, saturating).</summary>
    public static void FakeQuantizeActivation(Span<float> values, ActivationQuantization parameters)
    {
        var qmax = UnsignedMax(parameters.Bits);
        var inverse = 1f / parameters.Scale;
        for (var i = 0; i < values.Length; i++)
        {
            var q = Math.Clamp(MathF.Round(values[i] * inverse, MidpointRounding.ToEven) + parameters.ZeroPoint, 0, qmax);
            values[i] = (q - parameters.ZeroPoint) * parameters.Scale;
        }
    }
}

/// <summary>Asymmetric activation quantization parameters: r = Scale * (q - ZeroPoint), q in [0, 2^Bits - 1].</summary>
public readonly record struct ActivationQuantization(int Bits, float Scale, int ZeroPoint);

/// <summary>
/// How a weight tensor maps to output channels and quantization blocks: the shape, the output-channel axis and,
/// for blocked formats, the block length along <see cref="BlockAxis"/> (0 = one block covering the whole channel).
/// </summary>
public sealed record WeightLayout
{
    public WeightLayout(IReadOnlyList<long> shape, int channelAxis, int blockAxis = -1, int blockSize = 0)
    {
        if (shape.Count == 0)
            throw new ArgumentException("a weight needs at least one dimension", nameof(shape));
        if (channelAxis < 0 || channelAxis >= shape.Count)
            throw new ArgumentOutOfRangeException(nameof(channelAxis), channelAxis, $"axis outside a rank-{shape.Count} weight");
        if (blockSize > 0 && (blockAxis < 0 || blockAxis >= shape.Count || blockAxis == channelAxis))
            throw new ArgumentOutOfRangeException(nameof(blockAxis), blockAxis, "blocked quantization needs a block axis other than the channel axis");
        Shape = shape.ToArray();
        ChannelAxis = channelAxis;
        BlockAxis = blockSize > 0 ? blockAxis : -1;
        BlockSize = blockSize;
        ElementCount = Shape.Aggregate(1L, (a, b) => a * b) is var n && n <= int.MaxValue ? (int)n
            : throw new ArgumentException("weight too large to quantize in one piece", nameof(shape));
        Channels = (int)Shape[channelAxis];
        var perChannel = Channels == 0 ? 0 : ElementCount / Channels;
        if (BlockSize > 0)
        {
            BlocksPerChannel = (int)((Shape[BlockAxis] + BlockSize - 1) / BlockSize);
            BlockLength = perChannel / (int)Shape[BlockAxis] * BlockSize;
        }
        else
        {
            BlocksPerChannel = 1;
            BlockLength = perChannel;
        }
    }

    public long[] Shape { get; }
    public int ChannelAxis { get; }
    public int BlockAxis { get; }
    public int BlockSize { get; }
    public int ElementCount { get; }
    public int Channels { get; }
    public int BlocksPerChannel { get; }
    /// <summary>Upper bound on the elements of one block (the last block along the axis may be shorter).</summary>
    public int BlockLength { get; }

    /// <summary>Copies block <paramref name="block"/> of channel <paramref name="channel"/> into buffer, with the
    /// flat source index of each element; returns the element count.</summary>
    public int GatherBlock(ReadOnlySpan<float> weight, int channel, int block, Span<float> buffer, Span<int> indices)
    {
        if (ChannelAxis == 0 && BlockSize == 0)
        {
            // Fast path (Conv, transposed Gemm): a channel is one contiguous run.
            var start = channel * BlockLength;
            weight.Slice(start, BlockLength).CopyTo(buffer);
            for (var i = 0; i < BlockLength; i++)
                indices[i] = start + i;
            return BlockLength;
        }
        var rank = Shape.Length;
        var strides = new long[rank];
        long stride = 1;
        for (var d = rank - 1; d >= 0; d--)
        {
            strides[d] = stride;
            stride *= Shape[d];
        }
        var index = new long[rank];
        var count = 0;
        // Iterate the sub-box: channel axis fixed, block axis restricted, other axes full.
        var lo = new long[rank];
        var hi = new long[rank];
        for (var d = 0; d < rank; d++)
        {
            lo[d] = 0;
            hi[d] = Shape[d];
        }
        lo[ChannelAxis] = channel;
        hi[ChannelAxis] = channel + 1;
        if (BlockSize > 0)
        {
            lo[BlockAxis] = (long)block * BlockSize;
            hi[BlockAxis] = Math.Min(Shape[BlockAxis], lo[BlockAxis] + BlockSize);
        }
        if (hi.Where((h, d) => h <= lo[d]).Any())
            return 0;
        Array.Copy(lo, index, rank);
        while (true)
        {
            long flat = 0;
            for (var d = 0; d < rank; d++)
                flat += index[d] * strides[d];
            buffer[count] = weight[(int)flat];
            indices[count] = (int)flat;
            count++;
            var axis = rank - 1;
            while (axis >= 0)
            {
                index[axis]++;
                if (index[axis] < hi[axis])
                    break;
                index[axis] = lo[axis];
                axis--;
            }
            if (axis < 0)
                return count;
        }
    }
}

/// <summary>A quantized weight: integer values in the weight's shape (within the b-bit signed range) and scales.</summary>
public sealed record WeightQuantization(int Bits, WeightLayout Layout, sbyte[] Values, float[] Scales)
{
    /// <summary>Per output channel, <c>dW S dW^T</c> over its input slice (S the second moments of the layer's input
    /// rows), when second-order rounding computed it on the way; null otherwise.</summary>
    public double[]? OutputErrors { get; init; }

    /// <summary>How far second-order rounding's input statistics were shrunk toward their diagonal (largest over the
    /// slices; 0 when the rows outnumbered the inputs), null without second-order rounding.</summary>
    public double? Shrinkage { get; init; }

    /// <summary>s * q for every element, in the weight's shape: what DequantizeLinear computes.</summary>
    public float[] Dequantize()
    {
        var result = new float[Values.Length];
        if (Layout.ChannelAxis == 0 && Layout.BlockSize == 0)
        {
            // A channel is one contiguous run (Conv, transposed Gemm).
            var length = Layout.BlockLength;
            for (var c = 0; c < Layout.Channels; c++)
            {
                var scale = Scales[c];
                for (var i = c * length; i < (c + 1) * length; i++)
                    result[i] = Values[i] * scale;
            }
            return result;
        }
        var buffer = new float[Layout.BlockLength];
        var indices = new int[Layout.BlockLength];
        for (var c = 0; c < Layout.Channels; c++)
        {
            for (var blk = 0; blk < Layout.BlocksPerChannel; blk++)
            {
                // Only the indices are wanted: the values gathered are those of the (still empty) result.
                var count = Layout.GatherBlock(result, c, blk, buffer, indices);
                var scale = Scales[c * Layout.BlocksPerChannel + blk];
                for (var i = 0; i < count; i++)
                    result[indices[i]] = Values[indices[i]] * scale;
            }
        }
        return result;
    }
}
