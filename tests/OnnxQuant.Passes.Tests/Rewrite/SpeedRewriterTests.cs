using System.Text.Json;
using OnnxQuant.Frontend;
using OnnxQuant.Passes.Calibration;
using OnnxQuant.Passes.Compile;
using OnnxQuant.Passes.Curves;
using OnnxQuant.Passes.Pipeline;
using OnnxQuant.Passes.Quantization;
using OnnxQuant.Passes.Rewrite;
using OnnxQuant.Passes.Units;
using OnnxQuant.Passes.Verify;
using OnnxQuant.Runtime;
using Attribute = OnnxQuant.Frontend.Attribute;

namespace OnnxQuant.Passes.Tests.Rewrite;

public class SpeedRewriterTests
{
    private const int Samples = 24;

    /// <summary>
    /// A small conv + matmul network: Conv(bias) -> Relu -> MaxPool -> Conv(bias) -> Add(skip) -> Relu ->
    /// GlobalAveragePool -> Flatten -> MatMul -> Add(bias) -> Relu -> Gemm(bias, transB) -> "logits".
    /// </summary>
    private static Model ConvMatMul()
    {
        var net = new Net(opset: 17, seed: 3);
        var x = net.BatchInput("x", 3, 16, 16);
        var pads = Attribute.FromInts("pads", [1, 1, 1, 1]);
        var c1 = net.Op("Relu", [net.Op("Conv", [x, net.Random("c1.w", [16, 3, 3, 3], 0.3f), net.Random("c1.b", [16], 0.1f)], pads)]);
        var pooled = net.Op("MaxPool", [c1], Attribute.FromInts("kernel_shape", [2, 2]), Attribute.FromInts("strides", [2, 2]));
        var c2 = net.Op("Conv", [pooled, net.Random("c2.w", [16, 16, 3, 3], 0.15f), net.Random("c2.b", [16], 0.1f)], pads);
        var res = net.Op("Relu", [net.Op("Add", [c2, pooled])]);
        var flat = net.Op("Flatten", [net.Op("GlobalAveragePool", [res])]);
        var hidden = net.Op("Relu", [net.Op("Add", [net.Random("fc1.b", [64], 0.1f), net.Op("MatMul", [flat, net.Random("fc1.w", [16, 64], 0.4f)])])]);
        var logits = net.Op("Gemm", [hidden, net.Random("fc2.w", [10, 64], 0.2f), net.Random("fc2.b", [10], 0.1f)], Attribute.FromInt("transB", 1));
        logits.Name = "logits";
        net.Output(logits);
        return net.Model;
    }

    private static (Model Model, IReadOnlyList<QuantLayer> Layers, CalibrationTable Calibration, float[] Data) Prepared() =>
        Prepared(ConvMatMul(), "logits");

    /// <summary>The model's layers and the calibrated ranges of every tensor the speed target may quantize, from
    /// seeded random input [Samples, 3, 16, 16].</summary>
    private static (Model Model, IReadOnlyList<QuantLayer> Layers, CalibrationTable Calibration, float[] Data) Prepared(Model model, string output)
    {
        // As compile finds them for --deploy speed: only layers with an integer kernel.
        var layers = UnitDiscovery.Discover(model, [output], new UnitOptions { IntegerKernelsOnly = true }).Layers;
        var data = Net.RandomData(Samples * 3 * 16 * 16, 9, 1.5f);
        var set = TestCalibration.Single("x", data, 3, 16, 16);
        var tensors = SpeedRewriter.CalibrationTensors(model, layers);
        var calibration = Calibrator.Run(model, set, Samples, tensors.Select(t => new CalibrationTarget(t, null)).ToList(),
            CalibrationMethod.MinMax, 8, SessionOptions.Calibration, runBatch: 8);
        return (model, layers, calibration, data);
    }

    private static double RelativeError(Model reference, Model quantized, float[] data)
    {
        var shape = new long[] { Samples, 3, 16, 16 };
        using var a = InferenceSession.Create(ModelIO.ToBytes(reference));
        using var b = InferenceSession.Create(ModelIO.ToBytes(quantized));
        var input = new[] { new NamedTensor("x", TensorData.FromFloats(data, shape)) };
        var y = a.Run(input)[0].Data.ToFloats();
        var q = b.Run(input)[0].Data.ToFloats();
        double num = 0, den = 0;
        for (var i = 0; i < y.Length; i++)
        {
            num += (q[i] - y[i]) * (double)(q[i] - y[i]);
            den += y[i] * (double)y[i];
        }
        return num / den;
    }

    /// <summary>
    /// <paramref name="rows"/>: the rows per sample calibration observed at the MatMul's and the Gemm's inputs (0: none
    /// observed, as from a calibration that gathered no rows). A layer at 4 bits or fewer becomes MatMulNBits only with
    /// a known count of at most <see cref="SpeedRewriter.NBitsMaxRows"/>.
    /// </summary>
    [Theory]
    [InlineData(8, 1, 0)] // W8A8: every layer on QLinearConv / QLinearMatMul / QGemm
    [InlineData(4, 1, 2)] // W4, one row per sample: the MatMul and the Gemm become MatMulNBits (int8 compute), the convs stay INT8
    [InlineData(4, 64, 0)] // W4, 64 rows: INT8 as at 8 bits, with the 4-bit values
    [InlineData(4, 0, 0)] // W4, rows unknown: INT8
    public void SpeedArtifactFusesIntoIntegerKernelsAndStaysClose(int bits, int rows, int nbitsLayers)
    {
        var (model, layers, calibration, data) = Prepared();
        Assert.Equal(4, layers.Count);
        if (rows > 0)
            calibration = calibration with
            {
                SampleShapes = layers.Where(l => l.OpType != "Conv").ToDictionary(l => l.Activation,
                    l => new long[] { rows, l.WeightShape[l.InputChannelAxis] }, StringComparer.Ordinal),
            };
        var plans = layers.Select(l => new LayerPlan(l, Enumerable.Repeat(bits, l.Channels).ToArray())).ToList();
        var speed = model.Clone();
        var (result, placement) = SpeedRewriter.Apply(speed, plans, calibration, new RewriteOptions { Deploy = DeployTarget.Speed });
        Assert.Equal(nbitsLayers, placement.NBitsLayers.Count);
        Assert.Equal(nbitsLayers, result.Layers.Count(l => l.Format == "matmulnbits"));
        Assert.All(result.Layers.Where(l => l.Format == "qdq"), l => Assert.Equal(DataType.Int8, l.Container));
        // The pool between the convolutions joins the integer region. With INT8 linear layers the residual Add, the
        // global pool and Flatten join too (they lead to the MatMul's quantized input); with MatMulNBits, which reads
        // float, nothing after the second convolution needs uint8, so they stay float.
        var tail = nbitsLayers == 0 ? 1 : 0;
        Assert.Equal(1, placement.IntegerOps["MaxPool"]);
        Assert.Equal(tail, placement.IntegerOps.GetValueOrDefault("Add"));
        Assert.Equal(tail, placement.IntegerOps.GetValueOrDefault("GlobalAveragePool"));
        Assert.Equal(tail, placement.IntegerOps.GetValueOrDefault("Flatten"));

        var fusion = FusionCheck.Run(speed, SessionOptions.Default);
        Assert.Equal(0, fusion.WeightDequantizeLeft);
        Assert.Equal(2, fusion.OpTypes.GetValueOrDefault("QLinearConv"));
        Assert.Equal(tail, fusion.OpTypes.GetValueOrDefault("QLinearAdd"));
        Assert.Equal(tail, fusion.OpTypes.GetValueOrDefault("QLinearGlobalAveragePool"));
        Assert.Equal(nbitsLayers, fusion.OpTypes.GetValueOrDefault("MatMulNBits"));
        Assert.False(fusion.OpTypes.ContainsKey("Conv") || fusion.OpTypes.ContainsKey("FusedConv"), "a convolution runs in float");

        // Tolerance: relative squared error of the logits against float, about 5x what this seeded net measures
        // (1.7e-4 with 8-bit weights and activations, 1.5e-2 with 4-bit weights).
        var error = RelativeError(model, speed, data);
        Assert.InRange(error, 0, bits == 8 ? 1e-3 : 7.5e-2);
    }

    /// <summary>Statistics of correlated random input rows per layer (each row = a shared part + noise), so that
    /// second-order rounding moves values away from rounding to nearest.</summary>
    private static Func<string, InputStatistics?> RandomStatistics(IReadOnlyList<QuantLayer> layers)
    {
        var random = new Random(5);
        var byName = layers.ToDictionary(l => l.Name, l =>
        {
            var reduction = (int)(l.Size / l.Channels);
            var shared = Enumerable.Range(0, reduction).Select(_ => (float)random.NextDouble() * 2 - 1).ToArray();
            var rows = Enumerable.Range(0, 4 * reduction).Select(_ =>
            {
                var t = (float)random.NextDouble() * 2 - 1;
                return shared.Select(s => s * t + 0.3f * ((float)random.NextDouble() * 2 - 1)).ToArray();
            }).ToList();
            return InputStatistics.FromRows(rows, reduction, reduction, l.Channels);
        }, StringComparer.Ordinal);
        return name => byName.GetValueOrDefault(name);
    }

    [Fact]
    public void SpeedTargetWritesTheSizeTargetsCompensatedValues()
    {
        // With compensation (GPTQ and bias correction, the command line's default), the speed target must ship the
        // weight values and corrected biases the size target ships; only their containers and the Q/DQ differ.
        var (model, layers, calibration, data) = Prepared();
        var plans = layers.Select(l => new LayerPlan(l, Enumerable.Repeat(8, l.Channels).ToArray())).ToList();
        var statistics = RandomStatistics(layers);
        var size = model.Clone();
        var sizeResult = QdqRewriter.Apply(size, plans, calibration, new RewriteOptions { Compensation = Compensation.All }, actBits: 8, statistics: statistics);
        var speed = model.Clone();
        var speedResult = QdqRewriter.Apply(speed, plans, calibration, new RewriteOptions { Compensation = Compensation.All, Deploy = DeployTarget.Speed },
            actBits: 8, statistics: statistics);
        var plain = model.Clone();
        QdqRewriter.Apply(plain, plans, calibration, new RewriteOptions { Deploy = DeployTarget.Speed }, actBits: 8);

        Assert.NotNull(speedResult.Speed);
        Assert.Equal(sizeResult.Compensated, speedResult.Compensated);
        Assert.Equal(4, speedResult.Compensated!.Count);
        Assert.All(speedResult.Compensated, c => Assert.True(c.Gptq && c.BiasCorrected, $"{c.Layer}: {c.BiasNote}"));
        var changed = 0;
        foreach (var layer in layers)
        {
            var name = layer.WeightName + "_quantized";
            var expected = size.Graph.FindInitializer(name)!.Initializer!;
            var actual = speed.Graph.FindInitializer(name)!.Initializer!;
            Assert.Equal(DataType.Int8, actual.DataType);
            Assert.Equal(expected.RawData.ToArray(), actual.RawData.ToArray());
            if (!plain.Graph.FindInitializer(name)!.Initializer!.RawData.Span.SequenceEqual(actual.RawData.Span))
                changed++;
        }
        // Not vacuous: second-order rounding changed the values of at least one layer.
        Assert.True(changed > 0, "compensation changed no weight value");

        // The convolutions' corrected float biases, as the speed target's INT32 biases: within half a step s_x * s_w.
        foreach (var bias in new[] { "c1.b", "c2.b" })
        {
            var corrected = size.Graph.FindInitializer(bias)!.Initializer!.ToFloatArray();
            var q = speed.Graph.FindInitializer(bias + "_quantized")!.Initializer!.ToInt64Array();
            var step = speed.Graph.FindInitializer(bias + "_scale")!.Initializer!.ToFloatArray();
            for (var c = 0; c < corrected.Length; c++)
                Assert.InRange(Math.Abs(q[c] * (double)step[c] - corrected[c]), 0, 0.5 * step[c] + 1e-6 * Math.Abs(corrected[c]));
        }
        Assert.Equal(0, FusionCheck.Run(speed, SessionOptions.Default).WeightDequantizeLeft);
        // Same tolerance as the uncompensated W8A8 case above: the statistics are random, not this net's inputs.
        Assert.InRange(RelativeError(model, speed, data), 0, 1e-3);
    }

    [Fact]
    public void TheCheckFindsTheWeightDequantizeOfTheSizeTarget()
    {
        // Negative case: the size target's Q/DQ only in front of layers leaves weight DequantizeLinear nodes unfused
        // (outputs are not quantized), which is what the speed target's check must catch.
        var (model, layers, calibration, _) = Prepared();
        var plans = layers.Select(l => new LayerPlan(l, Enumerable.Repeat(8, l.Channels).ToArray())).ToList();
        var size = model.Clone();
        QdqRewriter.Apply(size, plans, calibration, new RewriteOptions(), actBits: 8);
        var fusion = FusionCheck.Run(size, SessionOptions.Default);
        Assert.True(fusion.WeightDequantizeLeft >= 2, $"expected the convolutions' weight DQ left, found {fusion.WeightDequantizeLeft}");
        Assert.Contains(fusion.Offenders, o => o.Contains("Conv", StringComparison.Ordinal));

        // The compile's check keeps such a model and its list for a report, and lets the compile go on.
        var debug = Path.Combine(Path.GetTempPath(), $"onnxquant-unfused-{Guid.NewGuid():N}");
        try
        {
            var (report, kept) = VerifyStage.CheckFusion(size, SessionOptions.Default, debug, "bits-8");
            Assert.Equal(fusion.WeightDequantizeLeft, report.WeightDequantizeLeft);
            Assert.Equal(Path.Combine(debug, "bits-8"), kept);
            Assert.True(File.Exists(Path.Combine(kept!, "model.onnx")));
            Assert.Contains("Conv", File.ReadAllText(Path.Combine(kept!, "unfused.txt")), StringComparison.Ordinal);
            Assert.StartsWith($"{report.WeightDequantizeLeft} DequantizeLinear node(s) left", VerifyStage.FusionGap(report), StringComparison.Ordinal);
        }
        finally
        {
            if (Directory.Exists(debug))
                Directory.Delete(debug, true);
        }
    }

    [Fact]
    public void CompileWithDeploySpeedRecordsTheTargetAndItsCost()
    {
        var root = Path.Combine(Path.GetTempPath(), $"onnxquant-speed-{Guid.NewGuid():N}");
        try
        {
            var (modelPath, dataPath) = TestModels.WriteDetector(Path.Combine(root, "in"), samples: 40);
            var options = new CompileOptions
            {
                Data = new() { CalibSamples = 24, VerifySamples = 16 },
                Curves = new() { Mode = CurveMode.Fast, CacheDir = null },
                Allocation = new() { TargetBits = [8] },
                Rewrite = new() { Deploy = DeployTarget.Speed },
            };
            var result = Compiler.Run(modelPath, dataPath, Path.Combine(root, "out"), options, "test", SilentProgress.Instance);
            var report = result.Targets.Single().Report;
            var deploy = report.Deploy!;
            Assert.Equal(0, deploy.WeightDequantizeLeft);
            Assert.True(deploy.IntegerKernels >= report.Layers.Count, $"{deploy.IntegerKernels} integer kernels for {report.Layers.Count} layers");
            // The cost is the speed artifact's measured distortion minus the size target's, both on the same samples.
            Assert.Equal(report.Distortion.Measured - deploy.SizeMeasured, deploy.ActivationCost(report.Distortion.Measured), 12);
            // The detector measures 7.6e-4 for the size target and 8.6e-4 for the speed target, which adds its activation
            // quantization (against each feature's variation; its box-like outputs carry large offsets).
            Assert.InRange(deploy.SizeMeasured, 0, 5e-3);
            Assert.InRange(report.Distortion.Measured, 0, 1e-2);

            using var manifest = JsonDocument.Parse(File.ReadAllText(Path.Combine(root, "out", "manifest.json")));
            var entries = manifest.RootElement.GetProperty("options");
            Assert.Equal("speed", entries.GetProperty("deploy").GetString());
            using var written = JsonDocument.Parse(File.ReadAllText(Path.Combine(root, "out", "report.json")));
            Assert.Equal(0, written.RootElement.GetProperty("deploy").GetProperty("weight_dequantize_left").GetInt32());

            // The written artifact loads and runs, and fuses the same way when read back from disk.
            Assert.Equal(0, FusionCheck.Run(ModelIO.Load(Path.Combine(root, "out", "model.onnx")), SessionOptions.Default).WeightDequantizeLeft);
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
    }

    /// <summary>
    /// Conv(bias) -> Relu -> ConvTranspose(stride 2) -> Relu -> Conv(bias) -> "y": an upsampling layer the compiler does
    /// not quantize between two that it does (Mask-RCNN's feature pyramid and mask head have this shape).
    /// </summary>
    private static Model ConvTransposeBetweenConvs()
    {
        var net = new Net(opset: 17, seed: 4);
        var x = net.BatchInput("x", 3, 16, 16);
        var pads = Attribute.FromInts("pads", [1, 1, 1, 1]);
        var c1 = net.Op("Relu", [net.Op("Conv", [x, net.Random("c1.w", [8, 3, 3, 3], 0.3f), net.Random("c1.b", [8], 0.1f)], pads)]);
        var up = net.Op("Relu", [net.Op("ConvTranspose", [c1, net.Random("up.w", [8, 4, 2, 2], 0.3f), net.Random("up.b", [4], 0.1f)],
            Attribute.FromInts("strides", [2, 2]))]);
        var y = net.Op("Conv", [up, net.Random("c2.w", [6, 4, 3, 3], 0.2f), net.Random("c2.b", [6], 0.1f)], pads);
        y.Name = "y";
        net.Output(y);
        return net.Model;
    }

    [Fact]
    public void AnUnquantizedLayerBetweenIntegerLayersLeavesNoWeightDequantize()
    {
        var (model, layers, calibration, data) = Prepared(ConvTransposeBetweenConvs(), "y");
        Assert.Equal(2, layers.Count); // the ConvTranspose is not a unit of a speed artifact (no integer kernel)
        var plans = layers.Select(l => new LayerPlan(l, Enumerable.Repeat(8, l.Channels).ToArray())).ToList();
        var speed = model.Clone();
        SpeedRewriter.Apply(speed, plans, calibration, new RewriteOptions { Deploy = DeployTarget.Speed });
        var fusion = FusionCheck.Run(speed, SessionOptions.Default);
        Assert.Equal(0, fusion.WeightDequantizeLeft);
        Assert.Equal(2, fusion.OpTypes.GetValueOrDefault("QLinearConv"));
        // The upsampling layer stays a float ConvTranspose on its own float weights (not re-quantized by the runtime).
        Assert.Equal(1, fusion.OpTypes.GetValueOrDefault("ConvTranspose"));
        var upsampling = speed.Graph.Nodes.Single(n => n.OpType == "ConvTranspose");
        Assert.Equal("up.w", upsampling.Inputs[1]!.Name);
        Assert.Equal("DequantizeLinear", upsampling.Inputs[0]!.Producer!.OpType);
        Assert.Equal(1, upsampling.Inputs[0]!.Producer!.GetInt("axis", -1));

        // Tolerance: about 4x the relative squared error of the output this seeded net measures at W8A8 (2.4e-4).
        Assert.InRange(RelativeError(model, speed, data), 0, 1e-3);
    }

    /// <summary>The input x [B, 3, 16, 16] as 48 tokens of 16 channels.</summary>
    private static (Net Net, Value Tokens) Tokens(int seed)
    {
        var net = new Net(opset: 17, seed: seed);
        var x = net.BatchInput("x", 3, 16, 16);
        return (net, net.Op("Reshape", [x, net.Ints("tokens_shape", -1, 48, 16)]));
    }

    /// <summary>Every layer at 8 bits through the speed rewrite, and what ONNX Runtime fused the result into.</summary>
    private static (Model Speed, SpeedPlacement Placement, FusionReport Fusion) W8Speed(Model model, IReadOnlyList<QuantLayer> layers, CalibrationTable calibration)
    {
        var plans = layers.Select(l => new LayerPlan(l, Enumerable.Repeat(8, l.Channels).ToArray())).ToList();
        var speed = model.Clone();
        var (_, placement) = SpeedRewriter.Apply(speed, plans, calibration, new RewriteOptions { Deploy = DeployTarget.Speed });
        return (speed, placement, FusionCheck.Run(speed, SessionOptions.Default));
    }

    /// <summary>The speed artifact's output "y" is [B, 48, 16] for inputs of batch 1 and 3.</summary>
    private static void AssertTokenShapeAtBatchesOneAndThree(Model speed, float[] data)
    {
        using var session = InferenceSession.Create(ModelIO.ToBytes(speed));
        foreach (var batch in new[] { 1, 3 })
        {
            var input = data.AsSpan(0, batch * 3 * 16 * 16).ToArray();
            var output = session.Run([new NamedTensor("x", TensorData.FromFloats(input, [batch, 3, 16, 16]))])[0].Data;
            Assert.Equal(new long[] { batch, 48, 16 }, output.Shape);
        }
    }

    /// <summary>
    /// Tokens as exporters write a transformer's feed-forward block: x [B, 3, 16, 16] -> Reshape [B, 48, 16] ->
    /// MatMul [16, 32] -> Add(bias) -> Relu -> MatMul [32, 16] -> Add(bias) -> Add(residual) -> "y" [B, 48, 16].
    /// </summary>
    private static Model TokenFeedForward()
    {
        var (net, tokens) = Tokens(seed: 6);
        var hidden = net.Op("Relu", [net.Op("Add", [net.Op("MatMul", [tokens, net.Random("ff1.w", [16, 32], 0.3f)]), net.Random("ff1.b", [32], 0.1f)])]);
        var projected = net.Op("Add", [net.Random("ff2.b", [16], 0.1f), net.Op("MatMul", [hidden, net.Random("ff2.w", [32, 16], 0.3f)])]);
        var y = net.Op("Add", [projected, tokens]);
        y.Name = "y";
        net.Output(y);
        return net.Model;
    }

    [Fact]
    public void TokenLinearsWithABiasAddRunAsQGemmAndKeepTheirShape()
    {
        var (model, layers, calibration, data) = Prepared(TokenFeedForward(), "y");
        Assert.Equal(2, layers.Count);
        var (speed, placement, fusion) = W8Speed(model, layers, calibration);
        // Each MatMul and its bias Add became one Gemm; the Relu between them runs on the 2-D rows.
        Assert.DoesNotContain(speed.Graph.Nodes, n => n.OpType == "MatMul");
        Assert.Equal(2, speed.Graph.Nodes.Count(n => n.OpType == "Gemm"));
        // Quantized: the first linear's rows in and (through the Relu) out, the second's rows in. The second linear's
        // output only reaches the float residual Add and the graph output, so QGemm writes it as float: no Q/DQ there,
        // and its Reshape back moves float values.
        Assert.Equal(3, placement.IntegerOps["Reshape"]);
        Assert.False(placement.IntegerOps.ContainsKey("Add"));
        // Of the fold's four Reshapes two are left: the first linear's rows are read from x itself (the tokens Reshape
        // stays for the residual), the hidden rows go from one Gemm to the next as they are, and only the output is
        // given its 3-D shape back (from the leading dimensions the first unflatten had).
        Assert.Equal(3, speed.Graph.Nodes.Count(n => n.OpType == "Reshape"));
        Assert.DoesNotContain(speed.Graph.Nodes, n => n.OpType == "QuantizeLinear" && n.Inputs[0]?.Producer?.OpType == "DequantizeLinear");

        Assert.Equal(0, fusion.WeightDequantizeLeft);
        Assert.Equal(2, fusion.OpTypes.GetValueOrDefault("QGemm"));
        Assert.False(fusion.OpTypes.ContainsKey("QLinearMatMul"), "a linear still runs as QLinearMatMul with a float bias Add");
        Assert.False(fusion.OpTypes.ContainsKey("QLinearAdd"));
        // One QuantizeLinear left, the input's: the first QGemm writes the hidden rows as uint8 itself.
        Assert.Equal(1, fusion.OpTypes.GetValueOrDefault("QuantizeLinear"));

        // The output has the float model's shape at any batch (the symbolic batch goes through the Shape-based Reshape).
        AssertTokenShapeAtBatchesOneAndThree(speed, data);
        // Tolerance: about 4x the relative squared error this seeded block measures at W8A8 (8.8e-5).
        Assert.InRange(RelativeError(model, speed, data), 0, 3.5e-4);
    }

    /// <summary>
    /// One attention head over 48 tokens: x [B, 3, 16, 16] -> Reshape [B, 48, 16]; q, k, v = tokens W + b;
    /// scores = q k^T; y = Softmax(scores) v -> "y" [B, 48, 16].
    /// </summary>
    private static Model TokenAttention(string? scaling = null)
    {
        var (net, tokens) = Tokens(seed: 8);
        Value Projection(string name) =>
            net.Op("Add", [net.Op("MatMul", [tokens, net.Random(name + ".w", [16, 16], 0.3f)]), net.Random(name + ".b", [16], 0.1f)]);
        var keys = net.Op("Transpose", [Projection("k")], Attribute.FromInts("perm", [0, 2, 1]));
        var scores = net.Op("MatMul", [Projection("q"), keys]);
        // 1/sqrt(16) as exporters write it: a Mul by the constant, or a Div by its inverse.
        if (scaling is not null)
            scores = net.Op(scaling, [scores, net.Init("scale", [], [scaling == "Mul" ? 0.25f : 4f])]);
        var y = net.Op("MatMul", [net.Op("Softmax", [scores], Attribute.FromInt("axis", -1)), Projection("v")]);
        y.Name = "y";
        net.Output(y);
        return net.Model;
    }

    [Theory]
    [InlineData(null)]
    [InlineData("Mul")]
    [InlineData("Div")]
    public void AttentionProductsOfTwoActivationsRunOnIntegers(string? scaling)
    {
        var (model, layers, calibration, data) = Prepared(TokenAttention(scaling), "y");
        Assert.Equal(3, layers.Count);
        var (speed, _, fusion) = W8Speed(model, layers, calibration);
        Assert.Equal(0, fusion.WeightDequantizeLeft);
        // The scores' scaling moved into the keys' DequantizeLinear scale: no node of its own in either graph.
        Assert.DoesNotContain(speed.Graph.Nodes, n => n.OpType is "Mul" or "Div");
        Assert.False(fusion.OpTypes.ContainsKey("Mul") || fusion.OpTypes.ContainsKey("Div"), string.Join(", ", fusion.OpTypes));
        Assert.Equal(3, fusion.OpTypes.GetValueOrDefault("QGemm"));
        // q k^T and Softmax(.) v: both operands quantized (the keys through their Transpose, the probabilities with their
        // own range), the products integer; nothing downstream reads them quantized, so they write float.
        Assert.Equal(2, fusion.OpTypes.GetValueOrDefault("MatMulIntegerToFloat"));
        Assert.False(fusion.OpTypes.ContainsKey("MatMul") || fusion.OpTypes.ContainsKey("FusedMatMul"), "an attention product runs in float");
        // Tolerance: about 4x the relative squared error this seeded head measures at W8A8 (4.9e-4).
        Assert.InRange(RelativeError(model, speed, data), 0, 2e-3);
    }

    /// <summary>
    /// Two heads as exporters write them: q = tokens W + b -> Reshape [B, 48, 2, 8] -> Transpose -> (per head) ->
    /// Transpose -> Reshape [B, 48, 16] -> out = . W_o + b_o -> "y". The fold's unflatten of q and flatten of the merged
    /// heads sit back to back with the model's own Reshapes.
    /// </summary>
    [Fact]
    public void AFoldedLinearsUnflattenInFrontOfTheHeadsSplitIsRemoved()
    {
        var (net, tokens) = Tokens(seed: 10);
        var q = net.Op("Add", [net.Op("MatMul", [tokens, net.Random("q.w", [16, 16], 0.3f)]), net.Random("q.b", [16], 0.1f)]);
        var heads = net.Op("Transpose", [net.Op("Reshape", [q, net.Ints("split", -1, 48, 2, 8)])], Attribute.FromInts("perm", [0, 2, 1, 3]));
        var merged = net.Op("Reshape", [net.Op("Transpose", [net.Op("Relu", [heads])], Attribute.FromInts("perm", [0, 2, 1, 3])), net.Ints("merge", -1, 48, 16)]);
        var y = net.Op("Add", [net.Op("MatMul", [merged, net.Random("o.w", [16, 16], 0.3f)]), net.Random("o.b", [16], 0.1f)]);
        y.Name = "y";
        net.Output(y);
        var (model, layers, calibration, data) = Prepared(net.Model, "y");
        Assert.Equal(2, layers.Count);
        var (speed, _, fusion) = W8Speed(model, layers, calibration);
        Assert.Equal(0, fusion.WeightDequantizeLeft);
        Assert.Equal(2, fusion.OpTypes.GetValueOrDefault("QGemm"));
        // The heads' split reads the first Gemm's rows: the fold's unflatten in front of it is gone. The other Reshapes
        // stay: the flattens read tensors quantized after a float op (the Q/DQ pair between the Reshapes rounds them),
        // and the merged heads' shape gives the output its leading dimensions at any batch.
        var split = speed.Graph.Nodes.Single(n => n.OpType == "Reshape" && n.Inputs[1]!.Name == "split");
        Assert.Equal("Gemm", split.Inputs[0]!.Producer?.OpType);
        Assert.Equal(6, speed.Graph.Nodes.Count(n => n.OpType == "Reshape"));
        Assert.DoesNotContain(speed.Graph.Nodes, n => n.OpType == "QuantizeLinear" && n.Inputs[0]?.Producer?.OpType == "DequantizeLinear");
        AssertTokenShapeAtBatchesOneAndThree(speed, data);
        // Tolerance: 4x the relative squared error this seeded block measures at W8A8 (6.2e-5).
        Assert.InRange(RelativeError(model, speed, data), 0, 2.5e-4);
    }

    /// <summary>
    /// A post-norm block: n = LayerNormalization(tokens) is both a graph output and the residual of
    /// y = Add(Relu(n W1 + b1) W2 + b2, n). The linears read n quantized; the residual Add and the output do not need it.
    /// </summary>
    [Fact]
    public void FloatReadersOfATensorAFloatOpComputesKeepItsExactValue()
    {
        var (net, tokens) = Tokens(seed: 12);
        var n = net.Op("LayerNormalization", [tokens, net.Random("ln.g", [16], 0.2f, 1f), net.Random("ln.b", [16], 0.1f)], Attribute.FromInt("axis", -1));
        var hidden = net.Op("Relu", [net.Op("Add", [net.Op("MatMul", [n, net.Random("ff1.w", [16, 32], 0.3f)]), net.Random("ff1.b", [32], 0.1f)])]);
        var projected = net.Op("Add", [net.Op("MatMul", [hidden, net.Random("ff2.w", [32, 16], 0.3f)]), net.Random("ff2.b", [16], 0.1f)]);
        var y = net.Op("Add", [projected, n]);
        y.Name = "y";
        net.Output(y);
        n.Name = "n";
        net.Output(n);
        var (model, layers, calibration, data) = Prepared(net.Model, "y");
        Assert.Equal(2, layers.Count);
        var (speed, _, fusion) = W8Speed(model, layers, calibration);
        Assert.Equal(0, fusion.WeightDequantizeLeft);
        Assert.Equal(2, fusion.OpTypes.GetValueOrDefault("QGemm"));
        // n is quantized once, for the first linear; the residual Add and the graph output read the LayerNormalization.
        var norm = speed.Graph.Nodes.Single(node => node.OpType == "LayerNormalization");
        var residual = speed.Graph.Nodes.Single(node => node.OpType == "Add" && node.Outputs[0].Name == "y");
        Assert.Contains(residual.Inputs, v => ReferenceEquals(v?.Producer, norm));
        Assert.Same(norm, speed.Graph.Outputs.Single(o => o.Name == "n").Producer);
        Assert.Equal(1, speed.Graph.Nodes.Count(node => node.OpType == "QuantizeLinear" && ReferenceEquals(node.Inputs[0]?.Producer, norm)));
        // Only the linears' DequantizeLinear-QGemm units read n's DequantizeLinear: none is left in ONNX Runtime's graph.
        Assert.False(fusion.OpTypes.ContainsKey("DequantizeLinear"), string.Join(", ", fusion.OpTypes));

        var shape = new long[] { Samples, 3, 16, 16 };
        using var a = InferenceSession.Create(ModelIO.ToBytes(model));
        using var b = InferenceSession.Create(ModelIO.ToBytes(speed));
        var input = new[] { new NamedTensor("x", TensorData.FromFloats(data, shape)) };
        var floatNorm = a.Run(input).Single(t => t.Name == "n").Data.ToFloats();
        var speedNorm = b.Run(input).Single(t => t.Name == "n").Data.ToFloats();
        // The same float kernel on the same input: equal up to float rounding (1e-6 of values around 1).
        Assert.Equal(floatNorm.Length, speedNorm.Length);
        Assert.All(Enumerable.Range(0, floatNorm.Length), i => Assert.Equal(floatNorm[i], speedNorm[i], 1e-6f));
        // Tolerance: about 4x the relative squared error this seeded block measures at W8A8 (1.6e-5).
        Assert.InRange(RelativeError(model, speed, data), 0, 6.5e-5);
    }

    /// <summary>
    /// tokens * 1e-5 -> MatMul [16, 8] -> Add(bias about 1) -> "y": the linear's input scale (about 1e-7) times its weight
    /// scale (about 2e-3) makes a product step of about 3e-10, so a bias of 1 would be 3e9 steps, past INT32.
    /// </summary>
    [Fact]
    public void ABiasThatDoesNotFitInt32GetsACoarserWeightScaleInsteadOfSaturating()
    {
        var (net, tokens) = Tokens(seed: 14);
        var small = net.Op("Mul", [tokens, net.Init("tiny", [], [1e-5f])]);
        var y = net.Op("Add", [net.Op("MatMul", [small, net.Random("p.w", [16, 8], 0.3f)]), net.Random("p.b", [8], 0.5f, 1f)]);
        y.Name = "y";
        net.Output(y);
        var (model, layers, calibration, data) = Prepared(net.Model, "y");
        var layer = Assert.Single(layers);
        var plans = layers.Select(l => new LayerPlan(l, Enumerable.Repeat(8, l.Channels).ToArray())).ToList();
        var speed = model.Clone();
        var (_, placement) = SpeedRewriter.Apply(speed, plans, calibration, new RewriteOptions { Deploy = DeployTarget.Speed });
        var fit = Assert.Single(placement.BiasFits);
        Assert.Equal(layer.Name, fit.Layer);
        Assert.InRange(fit.Channels, 1, layer.Channels); // the channels whose weight scale is too fine for their bias
        Assert.True(fit.Largest > 1, $"{fit.Largest}");
        var fusion = FusionCheck.Run(speed, SessionOptions.Default);
        Assert.Equal(0, fusion.WeightDequantizeLeft);
        Assert.Equal(1, fusion.OpTypes.GetValueOrDefault("QGemm"));

        var shape = new long[] { Samples, 3, 16, 16 };
        using var a = InferenceSession.Create(ModelIO.ToBytes(model));
        using var b = InferenceSession.Create(ModelIO.ToBytes(speed));
        var input = new[] { new NamedTensor("x", TensorData.FromFloats(data, shape)) };
        var expected = a.Run(input)[0].Data.ToFloats();
        var actual = b.Run(input)[0].Data.ToFloats();
        // A saturated bias would be off by about 0.4 (2^31 product steps of 3e-10 against biases of 0.5 to 1.5); the
        // products are about 1e-5 and their rounding about 1e-7. Tolerance 1e-5 absolute.
        Assert.All(Enumerable.Range(0, expected.Length), i => Assert.Equal(expected[i], actual[i], 1e-5f));
    }

    /// <summary>
    /// Conv -> SiLU (x * Sigmoid(x), as exporters write EfficientNet's activation) -> Conv -> "y": the Sigmoid and the Mul
    /// get their own calibrated output ranges, so ONNX Runtime runs them as QLinearSigmoid and QLinearMul between the
    /// QLinearConvs instead of dequantizing and quantizing around float ops on every call.
    /// </summary>
    [Fact]
    public void ASiluBetweenIntegerConvolutionsRunsOnIntegers()
    {
        var net = new Net(opset: 17, seed: 15);
        var x = net.BatchInput("x", 3, 16, 16);
        var pads = Attribute.FromInts("pads", [1, 1, 1, 1]);
        var c1 = net.Op("Conv", [x, net.Random("c1.w", [8, 3, 3, 3], 0.3f), net.Random("c1.b", [8], 0.1f)], pads);
        var silu = net.Op("Mul", [c1, net.Op("Sigmoid", [c1])]);
        var y = net.Op("Conv", [silu, net.Random("c2.w", [8, 8, 3, 3], 0.2f), net.Random("c2.b", [8], 0.1f)], pads);
        y.Name = "y";
        net.Output(y);
        var (model, layers, calibration, data) = Prepared(net.Model, "y");
        Assert.Equal(2, layers.Count);
        var (speed, placement, fusion) = W8Speed(model, layers, calibration);
        Assert.Equal(1, placement.IntegerOps.GetValueOrDefault("Sigmoid"));
        Assert.Equal(1, placement.IntegerOps.GetValueOrDefault("Mul"));
        Assert.Equal(0, fusion.WeightDequantizeLeft);
        Assert.Equal(2, fusion.OpTypes.GetValueOrDefault("QLinearConv"));
        Assert.Equal(1, fusion.OpTypes.GetValueOrDefault("QLinearSigmoid"));
        Assert.Equal(1, fusion.OpTypes.GetValueOrDefault("QLinearMul"));
        Assert.False(fusion.OpTypes.ContainsKey("Sigmoid") || fusion.OpTypes.ContainsKey("Mul"), string.Join(", ", fusion.OpTypes));
        // One QuantizeLinear (the input's) and one DequantizeLinear (the output's, which QLinearConv writes as uint8).
        Assert.Equal(1, fusion.OpTypes.GetValueOrDefault("QuantizeLinear"));
        Assert.Equal(1, fusion.OpTypes.GetValueOrDefault("DequantizeLinear"));
        // Tolerance: about 4x the relative squared error this seeded net measures at W8A8 (3.1e-4).
        Assert.InRange(RelativeError(model, speed, data), 0, 1.25e-3);
    }

    [Theory]
    [InlineData("Sigmoid")]
    [InlineData("Relu")]
    public void ALinearWithoutBiasThatOnlyFloatOpsReadRunsAsMatMulIntegerToFloat(string activation)
    {
        // tokens -> MatMul (no bias) -> activation -> "y": no Gemm to fold into, and nothing integer reads the product,
        // so it gets no QuantizeLinear and ONNX Runtime must still take the weight into an integer kernel.
        var (net, tokens) = Tokens(seed: 9);
        var y = net.Op(activation, [net.Op("MatMul", [tokens, net.Random("p.w", [16, 24], 0.3f)])]);
        y.Name = "y";
        net.Output(y);
        // Tolerance: about 4x the relative squared error this seeded net measures at W8A8 (2.0e-6 through the
        // sigmoid, 2.9e-5 through the ReLU).
        AssertOneLayerOnOneIntegerKernel(net.Model, "MatMulIntegerToFloat", activation == "Relu" ? 1.2e-4 : 8e-6);
    }

    /// <summary>The one layer of <paramref name="model"/> (output "y") runs on one <paramref name="kernel"/> in its W8A8
    /// speed artifact, with no weight DequantizeLinear left, within <paramref name="tolerance"/> of the float output.</summary>
    private static void AssertOneLayerOnOneIntegerKernel(Model model, string kernel, double tolerance)
    {
        var (prepared, layers, calibration, data) = Prepared(model, "y");
        Assert.Single(layers);
        var (speed, _, fusion) = W8Speed(prepared, layers, calibration);
        Assert.Equal(0, fusion.WeightDequantizeLeft);
        Assert.Equal(1, fusion.OpTypes.GetValueOrDefault(kernel));
        Assert.InRange(RelativeError(prepared, speed, data), 0, tolerance);
    }

    [Theory]
    [InlineData(true, "Relu")]
    [InlineData(false, "Relu")]
    [InlineData(false, "Sigmoid")]
    [InlineData(true, "Tanh")]
    public void ALinearWhoseActivationOnlyFloatOpsReadStillRunsOnIntegers(bool tokens3d, string activation)
    {
        // Linear + bias -> activation -> ReduceMean -> "y": nothing integer reads the activation. ONNX Runtime fuses a
        // Gemm and the activation that alone reads it into FusedGemm before it looks for QDQ kernels; the weight's
        // DequantizeLinear must not be left feeding that float kernel. (On 3-D tokens the Gemm's reader is the Reshape
        // back to tokens, unless the activation is a Relu, which moves in front of it.)
        var (net, t) = Tokens(seed: 10);
        var x = tokens3d ? t : net.Op("Reshape", [t, net.Ints("rows_shape", -1, 16)]);
        var linear = tokens3d
            ? net.Op("Add", [net.Op("MatMul", [x, net.Random("p.w", [16, 24], 0.3f)]), net.Random("p.b", [24], 0.1f)])
            : net.Op("Gemm", [x, net.Random("p.w", [24, 16], 0.3f), net.Random("p.b", [24], 0.1f)], Attribute.FromInt("transB", 1));
        var y = net.Op("ReduceMean", [net.Op(activation, [linear])], Attribute.FromInts("axes", [-1]));
        y.Name = "y";
        net.Output(y);
        // Tolerance: about 4x the relative squared error this seeded net measures at W8A8 (sigmoid 3.6e-7, ReLU 6.9e-6
        // on rows and on tokens, tanh 2.6e-5).
        AssertOneLayerOnOneIntegerKernel(net.Model, "QGemm", activation switch { "Sigmoid" => 1.5e-6, "Relu" => 2.8e-5, _ => 1.1e-4 });
    }

    [Fact]
    public void ALayerOnnxRuntimeLeavesOnAFloatKernelWritesItsOutputQuantized()
    {
        // tokens -> MatMul (no bias) -> Relu -> ReduceMean -> "y": ONNX Runtime does not take this MatMul into
        // MatMulIntegerToFloat (a Relu that only a reduction reads); the rewrite sees the weight DequantizeLinear
        // left after its optimizations and quantizes the layer's output, so that QLinearMatMul computes it.
        var (net, tokens) = Tokens(seed: 11);
        var product = net.Op("MatMul", [tokens, net.Random("p.w", [16, 24], 0.3f)]);
        product.Producer!.Name = "p";
        var y = net.Op("ReduceMean", [net.Op("Relu", [product])], Attribute.FromInts("axes", [1]));
        y.Name = "y";
        net.Output(y);
        var (model, layers, calibration, data) = Prepared(net.Model, "y");
        var plans = layers.Select(l => new LayerPlan(l, Enumerable.Repeat(8, l.Channels).ToArray())).ToList();
        var speed = RewriteStage.Run(model, plans, calibration, new RewriteOptions { Deploy = DeployTarget.Speed }, actBits: 8);
        Assert.Equal(["p"], speed.Result.Speed!.QuantizedOutputs);
        var fusion = FusionCheck.Run(speed.Model, SessionOptions.Default);
        Assert.Equal(0, fusion.WeightDequantizeLeft);
        Assert.Equal(1, fusion.OpTypes.GetValueOrDefault("QLinearMatMul"));
        // Tolerance: about 4x the relative squared error this seeded net measures at W8A8 (3.8e-6).
        Assert.InRange(RelativeError(model, speed.Model, data), 0, 1.6e-5);
    }

    [Fact]
    public void SpeedNeedsEightBitActivations()
    {
        var options = new CompileOptions { Calibration = new() { ActBits = 16 }, Rewrite = new() { Deploy = DeployTarget.Speed } };
        var error = Assert.Throws<CompileException>(options.Validate);
        Assert.Contains("--deploy speed", error.Message);
    }
}
