using OnnxQuant.Frontend;

namespace OnnxQuant.Runtime.Tests;

/// <summary>
/// Low-bit weight formats the compiler emits, run in ONNX Runtime and compared with an fp32 reference computed here
/// from the same integers: DequantizeLinear -> MatMul with int8 (opset 13), int4/uint4 (opset 21) and int2/uint2
/// (opset 25), per-axis and blocked; and com.microsoft MatMulNBits with 2, 4 and 8 bits.
/// </summary>
public class LowBitTests
{
    private const int M = 3, K = 256, N = 8;

    /// <summary>Exact kernels: ORT would otherwise fuse DQ -> MatMul into int8-activation MatMulNBits (accuracy level 4).</summary>
    private static readonly SessionOptions Exact =
        NodeModels.Options.WithConfig(SessionConfigKeys.QdqMatMulNBitsAccuracyLevel, "0");

    private static float[] RandomFloats(Random rng, int n, float scale = 1f) =>
        Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 2 - 1) * scale).ToArray();

    private static (int Min, int Max) Range(DataType type)
    {
        var bits = DataTypes.BitWidth(type);
        return type is DataType.Int8 or DataType.Int4 or DataType.Int2
            ? (-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
            : (0, (1 << bits) - 1);
    }

    /// <summary>Integers stored as <paramref name="type"/>: one byte each for 8-bit types, packed low bits first below.</summary>
    private static Tensor Pack(string name, DataType type, long[] dims, int[] values)
    {
        var raw = new byte[DataTypes.ByteCount(type, values.Length)];
        for (var i = 0; i < values.Length; i++)
        {
            if (DataTypes.IsSubByte(type))
                SubByte.Set(raw, type, i, values[i]);
            else
                raw[i] = unchecked((byte)values[i]);
        }
        return Tensor.FromRaw(name, type, dims, raw);
    }

    private static float[] MatMulReference(float[] x, Func<int, int, double> w)
    {
        var y = new float[M * N];
        for (var m = 0; m < M; m++)
            for (var n = 0; n < N; n++)
            {
                double sum = 0;
                for (var k = 0; k < K; k++)
                    sum += x[m * K + k] * w(k, n);
                y[m * N + n] = (float)sum;
            }
        return y;
    }

    private static void AssertClose(float[] expected, float[] actual, double relativeToMax)
    {
        Assert.Equal(expected.Length, actual.Length);
        var tolerance = relativeToMax * expected.Max(v => Math.Abs(v)) + 1e-5;
        for (var i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(expected[i] - actual[i]) <= tolerance,
                $"element {i}: {actual[i]} vs reference {expected[i]} (tolerance {tolerance:G3})");
    }

    [Theory]
    [InlineData(DataType.Int8, 13, 7, 0)]
    [InlineData(DataType.Int8, 21, 10, 32)]
    [InlineData(DataType.Int4, 21, 10, 0)]
    [InlineData(DataType.Int4, 21, 10, 32)]
    [InlineData(DataType.Int4, 21, 10, 128)]
    [InlineData(DataType.UInt4, 21, 10, 0)]
    [InlineData(DataType.UInt4, 21, 10, 32)]
    [InlineData(DataType.Int2, 25, 12, 0)]
    [InlineData(DataType.Int2, 25, 12, 32)]
    [InlineData(DataType.UInt2, 25, 12, 16)]
    public void DequantizeLinearMatMulMatchesTheFloatReference(DataType type, int opset, int irVersion, int blockSize)
    {
        var rng = new Random(opset * 1000 + (int)type * 10 + blockSize);
        var (qmin, qmax) = Range(type);
        var blocked = blockSize > 0;
        var scaleRows = blocked ? K / blockSize : 1;
        var q = Enumerable.Range(0, K * N).Select(_ => rng.Next(qmin, qmax + 1)).ToArray();
        var zp = Enumerable.Range(0, scaleRows * N).Select(_ => rng.Next(qmin, qmax + 1)).ToArray();
        var scales = Enumerable.Range(0, scaleRows * N).Select(_ => 0.01f + 0.05f * (float)rng.NextDouble()).ToArray();
        var x = RandomFloats(rng, M * K);

        var g = new Graph("dq_matmul");
        var input = new Value("x", new TensorType(DataType.Float, new Shape([Dim.Symbolic("batch"), K])));
        g.AddInput(input);
        long[] paramDims = blocked ? [scaleRows, N] : [N];
        var w = g.AddInitializer("w", Pack("w", type, [K, N], q));
        var s = g.AddInitializer("w_scale", Tensor.FromFloats("w_scale", paramDims, scales));
        var z = g.AddInitializer("w_zero_point", Pack("w_zero_point", type, paramDims, zp));
        List<Frontend.Attribute> attributes = blocked
            ? [Frontend.Attribute.FromInt("axis", 0), Frontend.Attribute.FromInt("block_size", blockSize)]
            : [Frontend.Attribute.FromInt("axis", 1)];
        var dq = new Node("DequantizeLinear", [w, s, z], ["w_dq"], name: "dq", attributes: attributes);
        g.AddNode(dq);
        var matmul = new Node("MatMul", [input, dq.Outputs[0]], ["y"], name: "matmul");
        g.AddNode(matmul);
        matmul.Outputs[0].Type = new TensorType(DataType.Float, new Shape([Dim.Symbolic("batch"), N]));
        g.AddOutput(matmul.Outputs[0]);
        var model = new Model(g) { IrVersion = irVersion, ProducerName = "runtime-tests" };
        model.OpsetImports.Default = opset;
        var bytes = ModelIO.ToBytes(model);

        var expected = MatMulReference(x, (k, n) =>
        {
            var p = (blocked ? k / blockSize : 0) * N + n;
            return (q[k * N + n] - zp[p]) * (double)scales[p];
        });
        var feed = new NamedTensor[] { new("x", TensorData.FromFloats(x, [M, K])) };
        foreach (var options in new[] { Exact, Exact with { Optimization = GraphOptimization.Disabled } })
        {
            using var session = InferenceSession.Create(bytes, options);
            Assert.Equal([-1L, K], session.Inputs[0].Dims);
            Assert.Equal("batch", session.Inputs[0].SymbolicDims[0]);
            var y = Assert.Single(session.Run(feed)).Data;
            Assert.Equal([(long)M, N], y.Shape);
            AssertClose(expected, y.GetArray<float>(), 1e-5);
        }
    }

    [Theory]
    [InlineData(2, 16, true)]
    [InlineData(2, 64, false)]
    [InlineData(4, 32, true)]
    [InlineData(4, 128, false)]
    [InlineData(8, 32, true)]
    [InlineData(8, 64, false)]
    public void MatMulNBitsMatchesTheFloatReference(int bits, int blockSize, bool withZeroPoints)
    {
        var rng = new Random(bits * 1000 + blockSize);
        var kBlocks = K / blockSize;
        var blob = blockSize * bits / 8;
        var q = Enumerable.Range(0, N * K).Select(_ => rng.Next(0, 1 << bits)).ToArray(); // [N, K]
        var scales = Enumerable.Range(0, N * kBlocks).Select(_ => 0.01f + 0.05f * (float)rng.NextDouble()).ToArray();
        var zp = Enumerable.Range(0, N * kBlocks).Select(_ => withZeroPoints ? rng.Next(0, 1 << bits) : 1 << (bits - 1)).ToArray();
        var x = RandomFloats(rng, M * K);

        // B is [N, k_blocks, blob]: each block's values packed least-significant bits first.
        var packed = new byte[N * kBlocks * blob];
        for (var n = 0; n < N; n++)
            for (var k = 0; k < K; k++)
            {
                var bit = (n * kBlocks * blob * 8) + k * bits;
                packed[bit / 8] |= (byte)(q[n * K + k] << (bit % 8));
            }
        var zpBytesPerRow = (kBlocks * bits + 7) / 8;
        var zpPacked = new byte[N * zpBytesPerRow];
        for (var n = 0; n < N; n++)
            for (var b = 0; b < kBlocks; b++)
            {
                var bit = b * bits;
                zpPacked[n * zpBytesPerRow + bit / 8] |= (byte)(zp[n * kBlocks + b] << (bit % 8));
            }

        var g = new Graph("matmul_nbits");
        var input = new Value("a", new TensorType(DataType.Float, Shape.Of(M, K)));
        g.AddInput(input);
        var bValue = g.AddInitializer("b", Tensor.FromRaw("b", DataType.UInt8, [N, kBlocks, blob], packed));
        var sValue = g.AddInitializer("scales", Tensor.FromFloats("scales", [N * kBlocks], scales));
        List<Value?> inputs = [input, bValue, sValue];
        if (withZeroPoints)
            inputs.Add(g.AddInitializer("zero_points", Tensor.FromRaw("zero_points", DataType.UInt8, [N * zpBytesPerRow], zpPacked)));
        var node = new Node("MatMulNBits", inputs, ["y"], domain: "com.microsoft", name: "mmnb", attributes:
        [
            Frontend.Attribute.FromInt("K", K), Frontend.Attribute.FromInt("N", N),
            Frontend.Attribute.FromInt("bits", bits), Frontend.Attribute.FromInt("block_size", blockSize),
        ]);
        g.AddNode(node);
        node.Outputs[0].Type = new TensorType(DataType.Float, Shape.Of(M, N));
        g.AddOutput(node.Outputs[0]);
        var model = new Model(g) { IrVersion = 10, ProducerName = "runtime-tests" };
        model.OpsetImports.Default = 21;
        model.OpsetImports["com.microsoft"] = 1;

        var expected = MatMulReference(x, (k, n) =>
            (q[n * K + k] - zp[n * kBlocks + k / blockSize]) * (double)scales[n * kBlocks + k / blockSize]);
        using var session = InferenceSession.Create(ModelIO.ToBytes(model), Exact);
        var y = Assert.Single(session.Run([new("a", TensorData.FromFloats(x, [M, K]))])).Data;
        AssertClose(expected, y.GetArray<float>(), 1e-5);
    }

    [Fact]
    public void DefaultOptimizationFusesInt4IntoInt8ActivationKernels()
    {
        // Documents the pitfall the exact options avoid: at ORT's defaults the fused kernel quantizes activations
        // to int8, so results move by a fraction of a percent, well beyond fp32 rounding.
        var rng = new Random(7);
        var (qmin, qmax) = Range(DataType.Int4);
        var q = Enumerable.Range(0, K * N).Select(_ => rng.Next(qmin, qmax + 1)).ToArray();
        var scales = Enumerable.Range(0, K / 32 * N).Select(_ => 0.02f).ToArray();
        var x = RandomFloats(rng, M * K);
        var g = new Graph("dq_matmul");
        var input = new Value("x", new TensorType(DataType.Float, Shape.Of(M, K)));
        g.AddInput(input);
        var w = g.AddInitializer("w", Pack("w", DataType.Int4, [K, N], q));
        var s = g.AddInitializer("s", Tensor.FromFloats("s", [K / 32, N], scales));
        var dq = new Node("DequantizeLinear", [w, s], ["w_dq"], name: "dq",
            attributes: [Frontend.Attribute.FromInt("axis", 0), Frontend.Attribute.FromInt("block_size", 32)]);
        g.AddNode(dq);
        var mm = new Node("MatMul", [input, dq.Outputs[0]], ["y"], name: "mm");
        g.AddNode(mm);
        mm.Outputs[0].Type = new TensorType(DataType.Float, Shape.Of(M, N));
        g.AddOutput(mm.Outputs[0]);
        var model = new Model(g) { IrVersion = 10 };
        model.OpsetImports.Default = 21;
        var bytes = ModelIO.ToBytes(model);
        var expected = MatMulReference(x, (k, n) => q[k * N + n] * 0.02);
        var feed = new NamedTensor[] { new("x", TensorData.FromFloats(x, [M, K])) };

        using var fused = InferenceSession.Create(bytes, NodeModels.Options);
        var approx = fused.Run(feed)[0].Data.GetArray<float>();
        AssertClose(expected, approx, 0.02);
        using var exact = InferenceSession.Create(bytes, Exact);
        AssertClose(expected, exact.Run(feed)[0].Data.GetArray<float>(), 1e-5);
        var maxError = expected.Zip(approx, (e, a) => Math.Abs(e - a)).Max() / expected.Max(v => Math.Abs(v));
        Assert.True(maxError > 1e-5, $"expected the int8-activation kernel to differ from fp32, max relative error {maxError:G3}");
    }
}
