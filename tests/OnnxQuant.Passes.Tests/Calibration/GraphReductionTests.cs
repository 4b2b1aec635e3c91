using OnnxQuant.Frontend;
using OnnxQuant.Passes.Calibration;
using OnnxQuant.Passes.Curves;
using OnnxQuant.Passes.Rewrite;
using OnnxQuant.Passes.Units;
using OnnxQuant.Runtime;

namespace OnnxQuant.Passes.Tests.Calibration;

/// <summary>
/// A min/max calibration reads most samples as scalars that the graph reduces itself (ReduceMin, ReduceMax,
/// ReduceSum); only the samples a tap observes return the layer inputs whole.
/// </summary>
public class GraphReductionTests
{
    private const int Samples = 12;

    /// <summary>The input of every Conv, Gemm and MatMul that is computed in the graph.</summary>
    private static List<CalibrationTarget> LayerInputs(Model model) =>
        model.Graph.Nodes.Where(n => n.OpType is "Conv" or "Gemm" or "MatMul")
            .Select(n => n.Inputs[0]!).Where(v => v.Producer is not null).Select(v => v.Name).Distinct()
            .Select(t => new CalibrationTarget(t, null)).ToList();

    /// <summary>Records which tensors and samples it was handed; observes the samples it is given.</summary>
    private sealed class RecordingTap(IReadOnlySet<int> observed) : ICalibrationTap
    {
        public List<(string Tensor, int Sample, int Count)> Seen { get; } = [];
        public IReadOnlyCollection<string> ExtraTensors => [];
        public IReadOnlySet<int> ObservedSamples => observed;
        public void Observe(string tensor, int firstSample, int count, float[] values, long[] shape) => Seen.Add((tensor, firstSample, count));
        public int LeadingSamples => 0;
        public IReadOnlyCollection<string> CapturedTensors => [];
        public int? CaptureElements(string tensor) => null;
        public void Capture(string tensor, int sample, TensorData value) { }
    }

    /// <summary>
    /// Float runs requested from calibration (the verification's float features) come from calibration's own session:
    /// the model's outputs on other inputs, equal to a plain session's within float rounding (the sessions may fuse
    /// differently: 1e-5 relative), and nothing is run when a requested tensor is not an output of that session.
    /// </summary>
    [Fact]
    public void FloatRunsThroughCalibrationsSessionGiveTheModelsOutputs()
    {
        var model = TestModels.Detector();
        var data = TestCalibration.Single("images", TestModels.Images(Samples, 5), 3, 16, 16);
        var other = TestCalibration.Single("images", TestModels.Images(3, 9), 3, 16, 16);
        var outputs = model.Graph.Outputs.Select(v => v.Name).ToList();
        var runs = new List<float[][]>();
        var request = new FloatRunRequest(outputs, run =>
        {
            foreach (var (_, _, inputs) in other.Runs(0, 3, 1))
                runs.Add(run(inputs.Select(b => b.ToNamedTensor()).ToList()).Select(o => o.Data.ToFloats()).ToArray());
        });
        Calibrator.Run(model, data, Samples, LayerInputs(model), CalibrationMethod.MinMax, 8, SessionOptions.Calibration, 4, floatRuns: request);
        Assert.Equal(3, runs.Count);
        using var plain = InferenceSession.Create(ModelIO.ToBytes(model));
        var k = 0;
        foreach (var (_, _, inputs) in other.Runs(0, 3, 1))
        {
            var expected = plain.Run(inputs.Select(b => b.ToNamedTensor()).ToList(), outputs);
            for (var o = 0; o < outputs.Count; o++)
            {
                var e = expected[o].Data.ToFloats();
                var scale = Math.Max(1e-6, e.Max(v => Math.Abs(v)));
                Assert.Equal(e.Length, runs[k][o].Length);
                Assert.All(e.Zip(runs[k][o]), p => Assert.True(Math.Abs(p.First - p.Second) <= 1e-5 * scale, $"{p.First} vs {p.Second}"));
            }
            k++;
        }

        // A tensor the calibration graph does not output: the caller is not called and builds its own session.
        var called = false;
        Calibrator.Run(model, data, Samples, LayerInputs(model), CalibrationMethod.MinMax, 8, SessionOptions.Calibration, 4,
            floatRuns: new FloatRunRequest([LayerInputs(model)[0].Tensor], _ => called = true));
        Assert.False(called);
    }

    [Fact]
    public void ReducedRangesEqualTheRangesOfTheWholeTensors()
    {
        var model = TestModels.Detector();
        var data = TestCalibration.Single("images", TestModels.Images(Samples, 5), 3, 16, 16);
        var targets = LayerInputs(model);
        Assert.True(targets.Count >= 4);

        // Every target is reduced in the graph (none falls back to whole outputs).
        var probe = model.Clone();
        foreach (var t in targets)
            ElementTypeInference.EnsureTyped(probe.Graph.FindValue(t.Tensor)!);
        Assert.Equal(targets.Count, Calibrator.AddReductions(probe.Graph, targets.Select(t => t.Tensor)).Count);

        var none = new RecordingTap(new HashSet<int>());
        var reduced = Calibrator.Run(model, data, Samples, targets, CalibrationMethod.MinMax, 8, SessionOptions.Calibration, 4, tap: none);
        var all = new RecordingTap(Enumerable.Range(0, Samples).ToHashSet());
        var whole = Calibrator.Run(model, data, Samples, targets, CalibrationMethod.MinMax, 8, SessionOptions.Calibration, 4, tap: all);

        // Min and max are exact in any order, so the two are equal to the bit.
        Assert.Equal(whole.Ranges, reduced.Ranges);
        Assert.Empty(none.Seen);
        Assert.Equal(targets.Count * Samples, all.Seen.Count);
        Assert.All(all.Seen, s => Assert.Equal(1, s.Count)); // observed samples run alone

        // Independently: every target as a plain output of the model, min and max taken here (tolerance 1e-5
        // relative: another session, and the ranges are rounded to stable digits).
        var plain = TestCalibration.WithWeightAndOutputs(model, null, null, targets.Select(t => t.Tensor).ToList());
        using var session = InferenceSession.Create(ModelIO.ToBytes(plain), SessionOptions.Calibration);
        var min = new float[targets.Count];
        var max = new float[targets.Count];
        Array.Fill(min, float.PositiveInfinity);
        Array.Fill(max, float.NegativeInfinity);
        for (var s = 0; s < Samples; s++)
        {
            var input = data.Batch(s, 1)[0].ToNamedTensor();
            var outputs = session.Run([input], targets.Select(t => t.Tensor).ToList());
            for (var i = 0; i < targets.Count; i++)
            {
                min[i] = MathF.Min(min[i], outputs[i].Data.AsFloats().Min());
                max[i] = MathF.Max(max[i], outputs[i].Data.AsFloats().Max());
            }
        }
        for (var i = 0; i < targets.Count; i++)
        {
            var range = reduced.Find(targets[i].Tensor)!;
            Assert.Equal(MathF.Min(min[i], 0), range.Min, 1e-5f * MathF.Abs(min[i]) + 1e-7f);
            Assert.Equal(MathF.Max(max[i], 0), range.Max, 1e-5f * MathF.Abs(max[i]) + 1e-7f);
        }
    }

    [Fact]
    public void NaNOnAReducedRunIsReportedWithItsSample()
    {
        var net = new Net(17, seed: 3);
        var x = net.BatchInput("x", 4);
        var log = net.Op("Log", [x]);
        var y = net.Op("MatMul", [log, net.Random("w", [4, 2], 0.5f)]);
        net.Output(y);
        var data = new float[Samples * 4];
        for (var i = 0; i < data.Length; i++)
            data[i] = 1 + i % 5;
        data[5 * 4 + 2] = -1; // log(-1) = NaN on sample 5 only
        var set = TestCalibration.Single("x", data, 4);
        var error = Assert.Throws<CompileException>(() => Calibrator.Run(net.Model, set, Samples, [new CalibrationTarget(log.Name, null)],
            CalibrationMethod.MinMax, 8, SessionOptions.Calibration, 1));
        Assert.Contains("NaN on calibration sample 5", error.Message);
    }

    [Fact]
    public void RowSamplesAreEvenlySpacedFromTheFirst()
    {
        Assert.Equal([0, 8, 16, 24, 32, 40, 48, 56], CutCurveMeasurer.RowSampleSet(64, 8).Order());
        Assert.Equal([0, 1, 2], CutCurveMeasurer.RowSampleSet(3, 8).Order());
        Assert.Equal([0, 3, 6], CutCurveMeasurer.RowSampleSet(10, 3).Order());
        Assert.Equal([0], CutCurveMeasurer.RowSampleSet(5, 0).Order());
    }

    [Fact]
    public void InputRowsComeOnlyFromTheRowSamples()
    {
        var model = TestModels.Detector();
        var units = UnitDiscovery.Discover(model, ["scores", "boxes"], new UnitOptions()).Units;
        var settings = GainSettings.Default with { RowSamples = 3 };
        // A layer whose input is computed (the graph input is read from the data, not from a run).
        var layer = units.Select(u => u.Layer).First(l => model.Graph.FindValue(l.Activation)!.Producer is not null);
        var images = TestModels.Images(Samples, 5);
        // The same row samples (0, 4, 8), every other sample different.
        var changed = TestModels.Images(Samples, 6);
        foreach (var s in new[] { 0, 4, 8 })
            Array.Copy(images, s * 768, changed, s * 768, 768);
        double[] Second(float[] data)
        {
            using var tap = new CutCurveMeasurer(model, units, ["scores", "boxes"], Samples, new CurveOptions(),
                new RewriteOptions { Compensation = OnnxQuant.Passes.Quantization.Compensation.All }, 1, settings, measure: false);
            Assert.Equal([0, 4, 8], tap.ObservedSamples.Order());
            Calibrator.Run(model, TestCalibration.Single("images", data, 3, 16, 16), Samples, LayerInputs(model),
                CalibrationMethod.MinMax, 8, SessionOptions.Calibration, 4, tap: tap);
            var statistics = tap.Statistics(layer.Name)!;
            Assert.Equal(3 * ((GainSettings.Default.LocalRows + 2) / 3), statistics.Rows); // rows per sample rounded up

            return statistics.Second;
        }
        var first = Second(images);
        Assert.Equal(first, Second(changed));
        Assert.NotEqual(first, Second(TestModels.Images(Samples, 7)));
    }
    /// <summary>
    /// A calibration that gathers input rows (the curves' tap) reports each gathered layer input's shape for one sample,
    /// batched runs notwithstanding (runs of 4 here): the shape ONNX Runtime gives that tensor when the model runs one
    /// sample with it as an output. The speed rewrite reads the rows per sample from it.
    /// </summary>
    [Fact]
    public void GatheredLayerInputsReportTheirShapeForOneSample()
    {
        var model = TestModels.Detector();
        var units = UnitDiscovery.Discover(model, ["scores", "boxes"], new UnitOptions()).Units;
        var data = TestCalibration.Single("images", TestModels.Images(Samples, 5), 3, 16, 16);
        using var tap = new CutCurveMeasurer(model, units, ["scores", "boxes"], Samples, new CurveOptions(),
            new RewriteOptions { Compensation = OnnxQuant.Passes.Quantization.Compensation.All }, 1, GainSettings.Default, measure: false);
        var table = Calibrator.Run(model, data, Samples, LayerInputs(model), CalibrationMethod.MinMax, 8, SessionOptions.Calibration, 4, tap: tap);

        var computed = units.Select(u => u.Layer.Activation).Where(a => model.Graph.FindValue(a)!.Producer is not null).Distinct().ToList();
        Assert.NotEmpty(computed);
        var withOutputs = model.Clone();
        foreach (var name in computed)
        {
            var value = withOutputs.Graph.FindValue(name)!;
            ElementTypeInference.EnsureTyped(value);
            withOutputs.Graph.AddOutput(value);
        }
        using var session = InferenceSession.Create(ModelIO.ToBytes(withOutputs));
        var (_, _, one) = data.Runs(0, 1, 1).First();
        var expected = session.Run(one.Select(b => b.ToNamedTensor()).ToList(), computed);
        foreach (var (name, output) in computed.Zip(expected))
        {
            Assert.True(table.SampleShapes.TryGetValue(name, out var shape), $"no shape for '{name}'");
            Assert.Equal(output.Data.Shape, shape);
        }
    }

    /// <summary>Captures the given tensors on the leading samples, sampled to the given number of elements where one is set.</summary>
    private sealed class CapturingTap(IReadOnlyDictionary<string, int?> captured, int leading) : ICalibrationTap
    {
        public Dictionary<(string Tensor, int Sample), TensorData> Captured { get; } = [];
        public IReadOnlyCollection<string> ExtraTensors => [];
        public IReadOnlySet<int> ObservedSamples => new HashSet<int>();
        public void Observe(string tensor, int firstSample, int count, float[] values, long[] shape) { }
        public int LeadingSamples => leading;
        public IReadOnlyCollection<string> CapturedTensors => captured.Keys.ToList();
        public int? CaptureElements(string tensor) => captured[tensor];
        public void Capture(string tensor, int sample, TensorData value) => Captured.Add((tensor, sample), value);
    }

    [Fact]
    public void SampledCapturesAreEveryStrideThElementOfTheWholeTensor()
    {
        var model = TestModels.Detector();
        var data = TestCalibration.Single("images", TestModels.Images(Samples, 5), 3, 16, 16);
        var inner = LayerInputs(model).Select(t => t.Tensor).ToList();
        Assert.True(inner.Count >= 3);
        // One tensor sampled to 100 elements, one to more elements than it has (kept whole, flattened), one whole.
        var wanted = new Dictionary<string, int?> { [inner[0]] = 100, [inner[1]] = 1 << 20, [inner[2]] = null };
        var tap = new CapturingTap(wanted, 2);
        Calibrator.Run(model, data, Samples, [], CalibrationMethod.MinMax, 8, SessionOptions.Calibration, 4, tap: tap);
        Assert.Equal(3 * 2, tap.Captured.Count);

        var plain = TestCalibration.WithWeightAndOutputs(model, null, null, inner.Take(3).ToList());
        using var session = InferenceSession.Create(ModelIO.ToBytes(plain), SessionOptions.Calibration);
        for (var s = 0; s < 2; s++)
        {
            var outputs = session.Run([data.Batch(s, 1)[0].ToNamedTensor()], inner.Take(3).ToList());
            for (var i = 0; i < 3; i++)
            {
                var whole = outputs[i].Data.AsFloats();
                var got = tap.Captured[(inner[i], s)];
                if (wanted[inner[i]] is not { } elements)
                {
                    Assert.Equal(outputs[i].Data.Shape, got.Shape);
                    Assert.Equal(whole, got.AsFloats());
                    continue;
                }
                var stride = Math.Max(1, (whole.Length + elements - 1) / elements);
                var expected = Enumerable.Range(0, (whole.Length + stride - 1) / stride).Select(k => whole[k * stride]).ToArray();
                Assert.Equal(i == 0, stride > 1); // the first one really is thinned, the second is not
                Assert.Equal([expected.Length], got.Shape);
                Assert.Equal(expected, got.AsFloats()); // the same values, bit for bit
            }
        }
    }
    /// <summary>Passes everything to another tap and counts the selections handed over.</summary>
    private sealed class CountingTap(ICalibrationTap inner) : ICalibrationTap
    {
        public int Selections { get; private set; }
        public IReadOnlyCollection<string> ExtraTensors => inner.ExtraTensors;
        public IReadOnlySet<int> ObservedSamples => inner.ObservedSamples;
        public void Observe(string tensor, int firstSample, int count, float[] values, long[] shape) => inner.Observe(tensor, firstSample, count, values, shape);
        public int LeadingSamples => inner.LeadingSamples;
        public IReadOnlyCollection<string> CapturedTensors => inner.CapturedTensors;
        public int? CaptureElements(string tensor) => inner.CaptureElements(tensor);
        public void Capture(string tensor, int sample, TensorData value) => inner.Capture(tensor, sample, value);
        public IReadOnlyCollection<string> SelectableTensors => inner.SelectableTensors;
        public long[]? Selection(string tensor, int sample, long[] shape) => inner.Selection(tensor, sample, shape);

        public void ObserveSelection(string tensor, int sample, long[] shape, float[] selected)
        {
            Selections++;
            inner.ObserveSelection(tensor, sample, shape, selected);
        }
    }

    [Fact]
    public void RowsGatheredInTheGraphEqualRowsDrawnFromWholeTensors()
    {
        var model = TestModels.Detector();
        var units = UnitDiscovery.Discover(model, ["scores", "boxes"], new UnitOptions()).Units;
        var data = TestCalibration.Single("images", TestModels.Images(Samples, 5), 3, 16, 16);
        var layers = units.Select(u => u.Layer).Where(l => model.Graph.FindValue(l.Activation)!.Producer is not null).ToList();
        Assert.True(layers.Count >= 3);
        (Dictionary<string, double[]> Second, Dictionary<string, int> Rows) Collect(CalibrationMethod method, bool restrictTargets)
        {
            using var tap = new CutCurveMeasurer(model, units, ["scores", "boxes"], Samples, new CurveOptions(),
                new RewriteOptions { Compensation = OnnxQuant.Passes.Quantization.Compensation.All }, 1, GainSettings.Default, measure: false);
            Assert.Equal(Samples, tap.ObservedSamples.Count);
            // Min/max: every layer input is reduced in the graph, so its rows are gathered there on every sample (one
            // run asks for the shapes first). Percentile: no reductions, every observed sample returns its targets whole.
            var counting = new CountingTap(tap);
            Calibrator.Run(model, data, Samples, LayerInputs(model), method, 8, SessionOptions.Calibration, 4, tap: counting);
            // Every sample hands over only the gathered elements of every row tensor.
            Assert.Equal(method == CalibrationMethod.MinMax ? Samples * tap.SelectableTensors.Count(t => model.Graph.FindValue(t)!.Producer is not null) : 0, counting.Selections);
            return (layers.ToDictionary(l => l.Name, l => tap.Statistics(l.Name)!.Second), layers.ToDictionary(l => l.Name, l => tap.Statistics(l.Name)!.Rows));
        }
        var gathered = Collect(CalibrationMethod.MinMax, false);
        var whole = Collect(CalibrationMethod.Percentile, false);
        foreach (var layer in layers)
        {
            Assert.Equal(whole.Rows[layer.Name], gathered.Rows[layer.Name]);
            Assert.Equal(whole.Second[layer.Name], gathered.Second[layer.Name]); // the same rows, so the same S to the bit
        }
    }

    [Fact]
    public void SelectionPositionsReadTheSameRowsAsTheWholeInput()
    {
        // A strided, padded, dilated Conv and a Gemm: positions gathered from the flattened input give Add's rows.
        var net = new Net(17, seed: 4);
        var x = net.BatchInput("x", 3, 9, 11);
        var conv = net.Op("Conv", [x, net.Random("w", [4, 3, 3, 3], 0.5f)], Frontend.Attribute.FromInts("strides", [2, 1]),
            Frontend.Attribute.FromInts("pads", [1, 2, 0, 1]), Frontend.Attribute.FromInts("dilations", [1, 2]));
        net.Output(conv);
        var model = net.Model;
        var layer = UnitDiscovery.Discover(model, [conv.Name], new UnitOptions()).Units.Single().Layer;
        var node = model.Graph.Nodes.Single(n => n.OpType == "Conv");
        var values = TestModels.Images(1, 3).Take(3 * 9 * 11).ToArray();
        long[] shape = [1, 3, 9, 11];
        var a = new LayerInputRows(layer, node, 16, 7);
        a.Add(values, shape, 5, 1);
        var b = new LayerInputRows(layer, node, 16, 7);
        var positions = b.SelectionPositions(shape, 5)!;
        Assert.Contains(-1L, positions); // some patch elements are padding
        b.AddSelected(shape, 5, positions.Select(p => p >= 0 ? values[p] : float.NaN).ToArray());
        Assert.Equal(a.Statistics()!.Second, b.Statistics()!.Second);
        Assert.Equal(a.RowsPerSampleObserved, b.RowsPerSampleObserved);
    }
}
