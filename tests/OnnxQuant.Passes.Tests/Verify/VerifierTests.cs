using OnnxQuant.Frontend;
using OnnxQuant.Passes.Calibration;
using OnnxQuant.Passes.Verify;
using OnnxQuant.Runtime;

namespace OnnxQuant.Passes.Tests.Verify;

/// <summary>
/// The verifier's measured distortion on models whose error is known in closed form: scaling a weight by 1 + e
/// scales a linear (or Relu-homogeneous) feature by 1 + e, so ||e y||^2 / ||y||^2 = e^2.
/// </summary>
public class VerifierTests
{
    private const int Samples = 20;
    // Weights scaled by 1.01 in float are off by one rounding (6e-8 relative): about 1e-9 on a 1e-4 distortion.
    private const double Tolerance = 1e-6;

    /// <summary>x[N,24] -> MatMul fc1 [24,16] "hidden" -> Relu -> MatMul fc2 [16,10] "y" (output).</summary>
    private static Model TwoLayers()
    {
        var net = new Net(opset: 17, seed: 13);
        var x = net.BatchInput("x", 24);
        var hidden = net.Op("MatMul", [x, net.Random("w1", [24, 16], 0.4f)]);
        hidden.Name = "hidden";
        var relu = net.Op("Relu", [hidden]);
        var y = net.Op("MatMul", [relu, net.Random("w2", [16, 10], 0.3f)]);
        y.Name = "y";
        net.Output(y);
        return net.Model;
    }

    private static CalibrationSet Data(int seed) => TestCalibration.Single("x", Net.RandomData(Samples * 24, seed), 24);

    private static Model Scaled(Model model, string weight, double factor)
    {
        var clone = model.Clone();
        var init = clone.Graph.FindInitializer(weight)!;
        var values = init.Initializer!.ToFloatArray().Select(v => (float)(v * factor)).ToArray();
        clone.Graph.SetInitializer(init, Tensor.FromFloats(weight, init.Initializer.GetDims(), values));
        return clone;
    }

    private static Verifier Verifier(Model model, string[] features, int start = 0, int count = Samples, int runBatch = 8) =>
        new(model, features, Data(41), start, count, SessionOptions.Calibration, runBatch);

    [Fact]
    public void FloatModelMeasuresZero()
    {
        var model = TwoLayers();
        var verifier = Verifier(model, ["hidden", "y"]);
        Assert.Equal(Samples, verifier.Samples);
        Assert.Equal(0.0, verifier.Measure(model));
        Assert.Equal(0.0, verifier.Measure(model.Clone()));
    }

    [Fact]
    public void SingleLinearLayerScaledByOnePercentMeasuresOneInTenThousand()
    {
        var net = new Net(opset: 17, seed: 14);
        var x = net.BatchInput("x", 24);
        var y = net.Op("MatMul", [x, net.Random("w", [24, 10], 0.5f)]);
        net.Output(y);
        var verifier = Verifier(net.Model, [y.Name]);
        var measured = verifier.Measure(Scaled(net.Model, "w", 1.01));
        Assert.True(Math.Abs(measured - 1e-4) <= Tolerance, $"measured {measured:R}, expected 1e-4");
        // e = -0.05: 2.5e-3.
        var shrunk = verifier.Measure(Scaled(net.Model, "w", 0.95));
        Assert.True(Math.Abs(shrunk - 2.5e-3) <= Tolerance, $"measured {shrunk:R}, expected 2.5e-3");
    }

    [Fact]
    public void AnOffsetOnTheFeatureDoesNotChangeTheMeasuredDistortion()
    {
        // y = x W + 5: scaling W by 1.01 moves y by 0.01 x W whatever the offset, and the offset is no variation, so
        // the measure is the offset-free model's (an uncentered norm would divide it by about 25 / ||x W||^2 + 1).
        Model Linear(float offset)
        {
            var net = new Net(opset: 17, seed: 14);
            var x = net.BatchInput("x", 24);
            var y = net.Op("Add", [net.Op("MatMul", [x, net.Random("w", [24, 10], 0.5f)]), net.Init("offset", [1], [offset])]);
            y.Name = "y";
            net.Output(y);
            return net.Model;
        }
        var plain = Verifier(Linear(0), ["y"]).Measure(Scaled(Linear(0), "w", 1.01));
        var shifted = Verifier(Linear(5), ["y"]).Measure(Scaled(Linear(5), "w", 1.01));
        Assert.InRange(plain, 0.9e-4, 1.1e-4);
        // float32 features around 5 carry about 5e-7 absolute rounding: 1e-3 relative of a 1e-4 measure.
        Assert.True(Math.Abs(shifted - plain) <= 1e-3 * plain, $"offset 5: {shifted:R}, no offset: {plain:R}");
    }

    [Fact]
    public void FeatureEnergyIsTheVariationWithFallbacksForConstantFeatures()
    {
        var values = Net.RandomData(1000, seed: 9).Select(v => v + 1000f).ToArray();
        var mean = values.Average(v => (double)v);
        var expected = values.Sum(v => (v - mean) * (v - mean));
        var energy = new OnnxQuant.Passes.Measurement.FeatureEnergy();
        energy.Add(values.AsSpan(0, 400), 2);
        energy.Add(values.AsSpan(400), 3);
        Assert.Equal(5, energy.Samples);
        // An offset of 1000 on a spread of about 1: the running sums lose about 1e-10 relative in double.
        Assert.True(Math.Abs(energy.Total - expected) <= 1e-6 * expected, $"{energy.Total:R} against {expected:R}");
        Assert.Equal(energy.Total / 5, energy.PerSample, 12);
        var constant = new OnnxQuant.Passes.Measurement.FeatureEnergy();
        constant.Add(Enumerable.Repeat(3f, 50).ToArray(), 1);
        Assert.Equal(450.0, constant.Total, 9);
        var zero = new OnnxQuant.Passes.Measurement.FeatureEnergy();
        zero.Add(new float[50], 1);
        Assert.Equal(1.0, zero.Total);
    }

    [Fact]
    public void IntermediateTensorsAreMeasuredAsFeatures()
    {
        var model = TwoLayers();
        // "hidden" is not a graph output; scaling fc1 scales it and (Relu is positively homogeneous) y alike.
        var hiddenOnly = Verifier(model, ["hidden"]).Measure(Scaled(model, "w1", 1.01));
        Assert.True(Math.Abs(hiddenOnly - 1e-4) <= Tolerance, $"hidden: {hiddenOnly:R}, expected 1e-4");
        var both = Verifier(model, ["hidden", "y"]);
        var firstLayer = both.Measure(Scaled(model, "w1", 1.01));
        Assert.True(Math.Abs(firstLayer - 2e-4) <= Tolerance, $"hidden + y with fc1 scaled: {firstLayer:R}, expected 2e-4");
        // fc2 does not touch "hidden": only y's 1e-4 counts.
        var secondLayer = both.Measure(Scaled(model, "w2", 1.01));
        Assert.True(Math.Abs(secondLayer - 1e-4) <= Tolerance, $"hidden + y with fc2 scaled: {secondLayer:R}, expected 1e-4");
        // The model measured keeps its own outputs: the feature is added, not swapped in.
        Assert.Equal(["y"], model.Graph.Outputs.Select(o => o.Name));
    }

    [Fact]
    public void WeightedFeaturesCountTheirWeightTimes()
    {
        var model = TwoLayers();
        // fc1 scaled by 1.01 puts 1e-4 on each feature (see above): weights 3 and 0.5 make it 3.5e-4.
        var weighted = new Verifier(model, ["hidden", "y"], Data(41), 0, Samples, SessionOptions.Calibration, 8, [3.0, 0.5]);
        var measured = weighted.Measure(Scaled(model, "w1", 1.01));
        Assert.True(Math.Abs(measured - 3.5e-4) <= 4 * Tolerance, $"weighted: {measured:R}, expected 3.5e-4");
        // fc2 leaves "hidden" alone: only y's 1e-4 counts, half of it.
        var second = weighted.Measure(Scaled(model, "w2", 1.01));
        Assert.True(Math.Abs(second - 0.5e-4) <= Tolerance, $"weighted, fc2 scaled: {second:R}, expected 5e-5");
    }

    [Fact]
    public void ArbitraryPerturbationEqualsIndependentMetricOnTheVerificationWindow()
    {
        var model = TwoLayers();
        var init = model.Graph.FindInitializer("w1")!.Initializer!;
        var noise = Net.RandomData(24 * 16, seed: 3, scale: 0.02f);
        var perturbedWeight = init.ToFloatArray().Zip(noise, (w, n) => w + n).ToArray();
        var perturbed = TestCalibration.WithWeightAndOutputs(model, "w1", perturbedWeight, ["y"]);
        string[] features = ["hidden", "y"];
        // Samples [5, 17) only, in runs of 1 and of 5.
        var one = Verifier(model, features, start: 5, count: 12, runBatch: 1);
        var five = Verifier(model, features, start: 5, count: 12, runBatch: 5);
        Assert.Equal(12, one.Samples);
        var a = one.Measure(perturbed);
        var b = five.Measure(perturbed);
        var window = Net.RandomData(Samples * 24, 41).Skip(5 * 24).Take(12 * 24).ToArray();
        var reference = Net.Run(TestCalibration.WithWeightAndOutputs(model, null, null, features), ("x", [12, 24], window));
        var quantized = Net.Run(TestCalibration.WithWeightAndOutputs(model, "w1", perturbedWeight, features), ("x", [12, 24], window));
        var expected = TestCalibration.RelativeError(reference, quantized);
        Assert.True(expected > 1e-4, $"the perturbation is too small to test: {expected}");
        Assert.True(Math.Abs(a - expected) <= 1e-6 * expected, $"runs of 1: {a:R}, independent {expected:R}");
        Assert.True(Math.Abs(b - expected) <= 1e-6 * expected, $"runs of 5: {b:R}, independent {expected:R}");
    }

    [Fact]
    public void FeatureMissingFromTheMeasuredModelIsReported()
    {
        var model = TwoLayers();
        var verifier = Verifier(model, ["hidden"]);
        var renamed = model.Clone();
        renamed.Graph.FindValue("hidden")!.Name = "renamed";
        var error = Assert.Throws<InvalidOperationException>(() => verifier.Measure(renamed));
        Assert.Contains("'hidden'", error.Message);
    }
}
