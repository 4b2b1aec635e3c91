using OnnxQuant.Frontend;
using OnnxQuant.Passes.Calibration;
using OnnxQuant.Passes.Canonicalize;
using OnnxQuant.Passes.Pipeline;
using OnnxQuant.Passes.Rewrite;
using OnnxQuant.Passes.Quantization;
using OnnxQuant.Passes.Units;
using OnnxQuant.Runtime;
using OnnxQuant.Solvers;

namespace OnnxQuant.Passes.Curves;

/// <summary>Error curves with how they were obtained.</summary>
public sealed record CurveSet(IReadOnlyList<UnitCurve> Curves, CurveMode Mode, bool FromCache, int Runs)
{
    /// <summary>Per unit, how its gain was measured (gain mode, measured now; empty otherwise).</summary>
    public IReadOnlyList<UnitGain> Gains { get; init; } = [];

    /// <summary>What the report should say about how the curves were obtained.</summary>
    public IReadOnlyList<string> Notes { get; init; } = [];

    /// <summary>Where the measuring time went (curves measured on graph cuts in this process); null otherwise.</summary>
    public CurveTiming? Timing { get; init; }
}

/// <summary>
/// Measures D_u(b) for every unit: the feature distortion when only unit u is fake-quantized at b bits. One session
/// serves every configuration: the unit weights are graph inputs (float values fed by default), the graph is pruned
/// to what the features need, and the float features are computed once. Exact mode measures every candidate width;
/// fast mode measures one reference width and scales the second-moment proxy through it.
/// </summary>
public static class CurveMeasurer
{
    public static CurveSet Measure(Model model, IReadOnlyList<QuantUnit> units, IReadOnlyList<string> features,
        CalibrationSet data, int samples, CalibrationTable? calibration, CurveOptions options, RewriteOptions storage, int runBatch,
        SessionOptions sessionOptions, IProgressSink progress, IReadOnlyList<double>? featureWeights = null)
    {
        var bits = options.CandidateBits.OrderBy(b => b).ToArray();
        var layers = units.Select(u => u.Layer).Distinct().ToList();
        var curveModel = BuildCurveModel(model, layers, features);
        var weights = layers.Select(l => new WeightInput(l.WeightName, l.WeightShape,
            model.Graph.FindInitializer(l.WeightName)!.Initializer!.ToFloatArray())).ToList();
        var weightByLayer = layers.Zip(weights).ToDictionary(p => p.First, p => p.Second.Values);
        using var distortion = new FeatureDistortion(ModelIO.ToBytes(curveModel), data, samples, features, weights, sessionOptions, runBatch, featureWeights);

        var measuredBits = options.Mode == CurveMode.Exact ? bits : [ReferenceBits(bits)];
        var runs = 0;
        var fakeCache = new Dictionary<(QuantLayer, int), float[]>();
        float[] Fake(QuantLayer layer, int b)
        {
            if (!fakeCache.TryGetValue((layer, b), out var q))
            {
                q = QuantMath.FakeQuantizeWeight(weightByLayer[layer], layer.Layout(storage.Format, storage.BlockSize), b);
                fakeCache[(layer, b)] = q;
            }
            return q;
        }

        var measured = new double[units.Count][];
        using (var stage = progress.Begin(options.Mode == CurveMode.Exact ? "curves" : "curves (fast)", units.Count * measuredBits.Length))
        {
            var outputChannels = new Dictionary<QuantLayer, int[]>();
            for (var u = 0; u < units.Count; u++)
            {
                var unit = units[u];
                var layer = unit.Layer;
                var original = weightByLayer[layer];
                measured[u] = new double[measuredBits.Length];
                for (var k = 0; k < measuredBits.Length; k++)
                {
                    var fake = Fake(layer, measuredBits[k]);
                    float[] replaced;
                    if (unit.IsWholeLayer)
                        replaced = fake;
                    else
                    {
                        if (!outputChannels.TryGetValue(layer, out var channelOf))
                            outputChannels[layer] = channelOf = layer.OutputChannelOfElements();
                        replaced = (float[])original.Clone();
                        for (var i = 0; i < replaced.Length; i++)
                            if (channelOf[i] >= unit.ChannelStart && channelOf[i] < unit.ChannelStart + unit.ChannelCount)
                                replaced[i] = fake[i];
                    }
                    measured[u][k] = StableRounding.Round(distortion.Measure(new Dictionary<string, float[]> { [layer.WeightName] = replaced }));
                    runs += distortion.RunsPerMeasurement;
                    stage.Advance();
                }
                // Layers of other units are not needed again once all their units are done.
                if (u + 1 < units.Count && units[u + 1].Layer != layer)
                    foreach (var b in bits)
                        fakeCache.Remove((layer, b));
            }
        }

        var curves = new List<UnitCurve>(units.Count);
        for (var u = 0; u < units.Count; u++)
        {
            var unit = units[u];
            double[] values;
            if (options.Mode == CurveMode.Exact)
                values = measured[u];
            else
            {
                var layer = unit.Layer;
                var moments = calibration?.FindMoments(layer.Activation)?.SecondMoments;
                var inputChannel = layer.InputChannelOfElements();
                if (moments is null || moments.Length <= inputChannel.Max())
                    throw new InvalidOperationException($"no input second moments for layer '{layer.Name}'");
                int[]? mask = null;
                if (!unit.IsWholeLayer)
                {
                    var channelOf = layer.OutputChannelOfElements();
                    mask = Enumerable.Range(0, channelOf.Length)
                        .Where(i => channelOf[i] >= unit.ChannelStart && channelOf[i] < unit.ChannelStart + unit.ChannelCount).ToArray();
                }
                var proxy = FastCurveProxy.Proxy(weightByLayer[layer], layer.Layout(storage.Format, storage.BlockSize), inputChannel, moments, bits, mask);
                values = FastCurveProxy.Calibrate(proxy, Array.IndexOf(bits, measuredBits[0]), measured[u][0]).Select(StableRounding.Round).ToArray();
            }
            curves.Add(new UnitCurve(unit.Name, unit.Size, bits, values));
        }
        return new CurveSet(curves, options.Mode, false, runs);
    }

    /// <summary>The width fast mode measures exactly: 4 bits when it is a candidate, else the middle candidate.</summary>
    public static int ReferenceBits(IReadOnlyList<int> bits) => bits.Contains(4) ? 4 : bits[bits.Count / 2];

    /// <summary>The model with the features as its only outputs, the layers' weights as graph inputs, dead nodes gone.</summary>
    internal static Model BuildCurveModel(Model model, IReadOnlyList<QuantLayer> layers, IReadOnlyList<string> features)
    {
        var clone = model.Clone();
        var graph = clone.Graph;
        while (graph.Outputs.Count > 0)
            graph.RemoveOutput(graph.Outputs.Count - 1);
        foreach (var f in features)
        {
            var value = graph.FindValue(f)!;
            ElementTypeInference.EnsureTyped(value);
            graph.AddOutput(value);
        }
        foreach (var layer in layers)
        {
            var init = graph.FindInitializer(layer.WeightName)!;
            graph.RemoveInitializer(init, force: true);
            var input = new Value(layer.WeightName, new TensorType(DataType.Float, Shape.Of(layer.WeightShape)));
            graph.AddInput(input);
            graph.ReplaceAllUsesWith(init, input);
        }
        new DeadNodeEliminationPass().Run(clone);
        return clone;
    }
}
