using OnnxQuant.Frontend;
using OnnxQuant.Passes.Compile;
using OnnxQuant.Passes.Curves;
using OnnxQuant.Passes.Quantization;
using OnnxQuant.Passes.Pipeline;
using OnnxQuant.Passes.Rewrite;
using OnnxQuant.Passes.Units;
using OnnxQuant.Runtime;

namespace OnnxQuant.Passes.Tests.Curves;

public class GainCurveTests
{
    private static readonly int[] Bits = [2, 3, 4, 8];

    /// <summary>
    /// The closed form tr(dW S dW^T) per sample, from sampled input rows, against ||z_q - z||^2 measured in ONNX Runtime
    /// on the same samples with the float and the fake-quantized weight. Rows are drawn with replacement, so with 400
    /// rows per sample the estimate is within a few percent: tolerance 6 %.
    /// </summary>
    [Theory]
    [InlineData("conv")]
    [InlineData("grouped-conv")]
    [InlineData("conv-same-lower")]
    [InlineData("conv1d")]
    [InlineData("conv3d")]
    [InlineData("deconv")]
    [InlineData("deconv1d")]
    [InlineData("matmul")]
    [InlineData("gemm")]
    public void ClosedFormLocalErrorMatchesTheMeasuredLayerOutputError(string kind)
    {
        var (model, inputShape) = SingleLayerNets.Build(kind, seed: 3);
        var features = new[] { model.Graph.Outputs[0].Name };
        var discovered = UnitDiscovery.Discover(model, features, new UnitOptions());
        Assert.True(discovered.Layers.Count == 1, string.Join("; ", discovered.Skipped.Select(s => s.Name + ": " + s.Reason)));
        var layer = discovered.Layers[0];
        var node = model.Graph.FindInitializer(layer.WeightName)!.Uses[0].Node;
        var rows = new LayerInputRows(layer, node, rowsPerSample: 400, seed: 1);
        var weight = model.Graph.FindInitializer(layer.WeightName)!.Initializer!.ToFloatArray();
        var layout = layer.Layout(WeightFormat.Qdq, 32);

        const int samples = 8;
        var n = (int)inputShape.Aggregate(1L, (a, b) => a * b);
        var inputs = Enumerable.Range(0, samples).Select(s => Net.RandomData(n, 100 + s).Select(v => v + 0.3f).ToArray()).ToList();
        for (var s = 0; s < samples; s++)
            rows.Add(inputs[s], inputShape, s, 1);
        var predicted = rows.ChannelErrors(weight, layout, Bits, threads: 1).Select(c => c.Sum()).ToArray();

        // Spilled to a file once calibration is over, the rows give the same errors and statistics to the bit. A
        // deconvolution's rows (its input positions' channels) serve the closed form only: it is rounded to nearest.
        var before = rows.Statistics();
        Assert.Equal(kind.StartsWith("deconv", StringComparison.Ordinal), before is null);
        var path = Path.Combine(Path.GetTempPath(), $"onnxquant-rows-{Guid.NewGuid():N}.bin");
        try
        {
            var count = rows.RowCount;
            rows.Spill(path);
            Assert.Equal(count, rows.RowCount);
            Assert.Equal(predicted, rows.ChannelErrors(weight, layout, Bits, threads: 1).Select(c => c.Sum()).ToArray());
            var after = rows.Statistics();
            Assert.Equal(before?.Mean, after?.Mean);
            Assert.Equal(before?.Second, after?.Second);
            Assert.Throws<InvalidOperationException>(() => rows.Add(inputs[0], inputShape, 0, 1));
        }
        finally
        {
            File.Delete(path);
        }

        // Direct: the model with the weight as an input, run with the float and the quantized weights.
        var measuredModel = CurveMeasurer.BuildCurveModel(model, [layer], features);
        using var session = InferenceSession.Create(ModelIO.ToBytes(measuredModel), SessionOptions.Calibration);
        float[] Run(float[] x, float[] w) => session.Run([new NamedTensor("x", TensorData.FromFloats(x, inputShape)),
            new NamedTensor(layer.WeightName, TensorData.FromFloats(w, layer.WeightShape))])[0].Data.ToFloats();
        for (var k = 0; k < Bits.Length; k++)
        {
            var q = QuantMath.FakeQuantizeWeight(weight, layout, Bits[k]);
            var measured = inputs.Average(x => OnnxQuant.Passes.Measurement.FeatureMetric.SquaredDistance(Run(x, q), Run(x, weight)));
            Assert.True(measured > 0);
            Assert.InRange(predicted[k] / measured, 0.94, 1.06);
        }
    }

    /// <summary>
    /// Gain curves against exact curves on the small multi-layer detector (convs, Gemm, MatMuls, LayerNorm, Softmax):
    /// at the reference width (4 bits) within 25 % per unit, at the other widths within a factor 8, and the measured
    /// distortion of the allocation at 4 bits within 25 % of the exact curves' allocation. The wide per-width
    /// bound is what one gain per unit can promise on this random, untrained model: ReLUs after BN-folded convs gate
    /// whole channels off, so the share of a width's error that reaches the feature differs between widths (the
    /// second conv's exact curve drops 30x from 4 to 5 bits, its layer-local error 5x).
    /// </summary>
    [Fact]
    public void GainCurvesFollowExactCurvesOnASmallMultiLayerGraph()
    {
        var root = Path.Combine(Path.GetTempPath(), $"onnxquant-gain-{Guid.NewGuid():N}");
        try
        {
            var (modelPath, dataPath) = TestModels.WriteDetector(Path.Combine(root, "in"));
            CompileResult Compile(string name, CurveMode mode) => Compiler.Run(modelPath, dataPath, Path.Combine(root, name),
                new CompileOptions { Allocation = new() { TargetBits = [4, 3] }, Curves = new() { Mode = mode }, Data = new() { CalibSamples = 32 } }, "test", SilentProgress.Instance);
            var exact = Compile("exact", CurveMode.Exact);
            var gain = Compile("gain", CurveMode.Gain);
            var exactCurves = exact.Targets[0].Report.Curves.ToDictionary(c => c.Name);
            var gainReport = gain.Targets[0].Report;
            Assert.Equal(CurveMode.Gain, gainReport.CurveMode);
            Assert.Equal(exactCurves.Count, gainReport.CurveGains.Count);
            foreach (var curve in gainReport.Curves)
            {
                var reference = exactCurves[curve.Name];
                for (var k = 0; k < curve.Bits.Count; k++)
                {
                    var ratio = curve.Distortion[k] / reference.Distortion[k];
                    var (low, high) = curve.Bits[k] == 4 ? (0.75, 1.25) : (0.125, 8.0);
                    Assert.True(ratio >= low && ratio <= high,
                        $"{curve.Name} at {curve.Bits[k]} bits: gain {string.Join(" ", curve.Distortion)} vs exact {string.Join(" ", reference.Distortion)}");
                }
            }
            foreach (var g in gainReport.CurveGains)
            {
                Assert.InRange(g.Samples, GainSettings.Default.MinSamples, GainSettings.Default.MaxSamples);
                Assert.Equal("full", g.Local);
                Assert.InRange(g.MeasuredOverPredicted, 0.5, 2);
            }
            // Only the 4-bit allocation is held to 25 %: at 3 bits the gain allocation of this toy model measures 0.00113
            // against the exact allocation's 0.000125 (a known shortfall of one gain per unit on channel-gated layers;
            // on the trained DETR below the two agree within 10 %).
            foreach (var (e, g) in exact.Targets.Zip(gain.Targets).Where(p => p.First.Report.TargetBits == 4))
                Assert.True(g.Report.Distortion.Measured <= 1.25 * e.Report.Distortion.Measured,
                    $"at {g.Report.TargetBits} bits: gain allocation {g.Report.Distortion.Measured}, exact {e.Report.Distortion.Measured}");
            // The calibration pass handed over every cut activation: no second float pass.
            Assert.Equal(0, gain.CurveTiming!.FillRuns);
            Assert.Equal(0, exact.CurveTiming!.FillRuns);
            // Far fewer runs than exact curves (6 widths x 32 samples per unit).
            Assert.True(gain.CurveRuns * 10 < exact.CurveRuns, $"{gain.CurveRuns} gain runs vs {exact.CurveRuns} exact");
        }
        finally
        {
            Directory.Delete(root, true);
        }
    }

    /// <summary>
    /// Exact curves run their samples through one-thread sessions side by side (one per thread): with one thread and
    /// with two, every curve value and every artifact byte is the same, and the run count is units x widths x samples.
    /// </summary>
    [Fact]
    public void ExactCurvesAreTheSameWithOneAndTwoThreads()
    {
        var root = Path.Combine(Path.GetTempPath(), $"onnxquant-exact-threads-{Guid.NewGuid():N}");
        try
        {
            var (modelPath, dataPath) = TestModels.WriteDetector(Path.Combine(root, "in"));
            CompileResult Compile(int threads) => Compiler.Run(modelPath, dataPath, Path.Combine(root, $"t{threads}"),
                new CompileOptions
                {
                    Allocation = new() { TargetBits = [4] }, Curves = new() { Mode = CurveMode.Exact }, Data = new() { CalibSamples = 7 },
                    Execution = new() { Threads = threads },
                }, "test", SilentProgress.Instance);
            var one = Compile(1);
            var two = Compile(2);
            var curves = one.Targets[0].Report.Curves;
            Assert.NotEmpty(curves);
            Assert.Equal(curves.Count * curves[0].Bits.Count * 7, one.CurveRuns);
            Assert.Equal(one.CurveRuns, two.CurveRuns);
            foreach (var (a, b) in curves.Zip(two.Targets[0].Report.Curves))
            {
                Assert.Equal(a.Name, b.Name);
                Assert.Equal(a.Distortion, b.Distortion);
                Assert.All(a.Distortion, d => Assert.True(d >= 0));
            }
            Assert.Equal(File.ReadAllBytes(one.Targets[0].ModelPath), File.ReadAllBytes(two.Targets[0].ModelPath));
        }
        finally
        {
            Directory.Delete(root, true);
        }
    }

    /// <summary>
    /// Cut activations spilled to disk (an in-memory budget of 0 bytes) give the same curves, gains and artifact bytes
    /// as activations held in memory: the spill is raw bytes, read back once per segment and sample.
    /// </summary>
    [Fact]
    public void SpilledCutActivationsAndSamplesGiveTheSameCurvesAndArtifact()
    {
        var root = Path.Combine(Path.GetTempPath(), $"onnxquant-spill-{Guid.NewGuid():N}");
        try
        {
            var (modelPath, dataPath) = TestModels.WriteDetector(Path.Combine(root, "in"));
            CompileResult Compile(string name, long budget) => Compiler.Run(modelPath, dataPath, Path.Combine(root, name),
                new CompileOptions
                {
                    Allocation = new() { TargetBits = [4] },
                    Curves = new() { Gain = GainSettings.Default with { CacheMemoryBytes = budget } },
                    // The calibration samples wait in a temporary file too.
                    Data = new() { CalibSamples = 16, MemoryBytes = budget },
                }, "test", SilentProgress.Instance);
            var memory = Compile("memory", 1L << 30);
            var spilled = Compile("spilled", 0);
            var a = memory.Targets[0].Report;
            var b = spilled.Targets[0].Report;
            Assert.Equal(a.Curves.Count, b.Curves.Count);
            foreach (var (x, y) in a.Curves.Zip(b.Curves))
            {
                Assert.Equal(x.Name, y.Name);
                Assert.Equal(x.Distortion, y.Distortion);
            }
            Assert.Equal(a.CurveGains.Select(g => g.Gain), b.CurveGains.Select(g => g.Gain));
            Assert.Contains(b.Notes, n => n.Contains("0 MiB in memory", StringComparison.Ordinal));
            Assert.Equal(File.ReadAllBytes(Path.Combine(root, "memory", "model.onnx")), File.ReadAllBytes(Path.Combine(root, "spilled", "model.onnx")));
        }
        finally
        {
            if (Directory.Exists(root))
                Directory.Delete(root, true);
        }
    }

    [Fact]
    public void RatioEstimatorStandardError()
    {
        var (g, rel) = CutCurveMeasurer.RatioEstimate([2, 4, 6], [1, 2, 3]);
        Assert.Equal(2, g, 12);
        Assert.Equal(0, rel, 12);
        (g, rel) = CutCurveMeasurer.RatioEstimate([1, 3], [1, 1]);
        Assert.Equal(2, g, 12);
        // residuals -1, +1: sqrt(2 / (2 * 1)) / mean(l) = 1, relative 0.5
        Assert.Equal(0.5, rel, 12);
        Assert.True(double.IsNaN(CutCurveMeasurer.RatioEstimate([1], [1]).Relative));
    }

    /// <summary>
    /// The quality regression of the issue on the bundled trained DETR: the allocation from gain curves (the default)
    /// has a held-out measured distortion within 10 % of the allocation from exact curves at 4 and 3 bits, and over the
    /// budgets 8, 6, 5, 4, 3 its predicted and measured distortions rank alike (Spearman >= 0.95). Both use the first 32
    /// calibration samples (the default is 64) so the exact curves stay affordable in a test; on 16 the exact reference
    /// itself rests on few samples (gain/exact measured 1.106 at 4 bits there, 0.973 on 32, 1.031 on 64).
    /// </summary>
    [Fact]
    public void GainAllocationOnDetrSmallIsAsGoodAsExact()
    {
        var model = RepoPaths.File("models/fixtures/detr_small.onnx");
        var calib = RepoPaths.File("models/data/calib.npz");
        var eval = RepoPaths.File("models/data/eval.npz");
        var root = Path.Combine(Path.GetTempPath(), $"onnxquant-detr-gain-{Guid.NewGuid():N}");
        try
        {
            CompileResult Compile(string name, CurveMode mode, IReadOnlyList<double> targets) => Compiler.Run(model, calib, Path.Combine(root, name),
                new CompileOptions { Allocation = new() { TargetBits = targets }, Curves = new() { Mode = mode }, Data = new() { CalibSamples = 32, VerifyData = eval } }, "test", SilentProgress.Instance);
            var exact = Compile("exact", CurveMode.Exact, [4, 3]);
            var gain = Compile("gain", CurveMode.Gain, [8, 6, 5, 4, 3]);
            foreach (var target in new[] { 4.0, 3.0 })
            {
                var e = exact.Targets.Single(t => t.Report.TargetBits == target).Report.Distortion.Measured;
                var g = gain.Targets.Single(t => t.Report.TargetBits == target).Report.Distortion.Measured;
                Assert.True(g <= 1.10 * e, $"at {target} bits the gain allocation measures {g}, the exact one {e}");
            }
            var predicted = gain.Targets.Select(t => t.Report.Distortion.Predicted).ToList();
            var measured = gain.Targets.Select(t => t.Report.Distortion.Measured).ToList();
            Assert.True(FastCurveProxy.RankCorrelation(predicted, measured) >= 0.95,
                $"predicted {string.Join(", ", predicted)} vs measured {string.Join(", ", measured)}");
        }
        finally
        {
            if (Directory.Exists(root))
                Directory.Delete(root, true);
        }
    }
}
