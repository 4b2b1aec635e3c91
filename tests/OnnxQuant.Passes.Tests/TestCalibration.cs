using OnnxQuant.Data;
using OnnxQuant.Frontend;
using OnnxQuant.Passes.Calibration;

namespace OnnxQuant.Passes.Tests;

/// <summary>Calibration sets from arrays in memory, written to a temporary .npz and loaded as the compiler loads them.</summary>
internal static class TestCalibration
{
    /// <summary>
    /// One float input with a symbolic batch axis: <paramref name="data"/> holds the samples one after another, each of
    /// shape <paramref name="sampleShape"/>.
    /// </summary>
    public static CalibrationSet Single(string input, float[] data, params long[] sampleShape)
    {
        var perSample = sampleShape.Aggregate(1L, (a, b) => a * b);
        var samples = data.Length / perSample;
        var path = Path.Combine(Path.GetTempPath(), $"onnxquant-test-calib-{Guid.NewGuid():N}.npz");
        try
        {
            Npz.Write(path, [new NamedArray(input, NpyArray.FromFloats(data, [samples, .. sampleShape]))]);
            return CalibrationSet.Load(path, [new InputSpec(input, DataType.Float, [null, .. sampleShape.Select(d => (long?)d)])]);
        }
        finally
        {
            File.Delete(path);
        }
    }

    /// <summary>
    /// <paramref name="model"/> with its weight <paramref name="weightName"/> replaced by <paramref name="values"/>
    /// (none when null) and <paramref name="outputs"/> as its only outputs, in that order.
    /// </summary>
    public static Model WithWeightAndOutputs(Model model, string? weightName, float[]? values, IReadOnlyList<string> outputs)
    {
        var clone = model.Clone();
        var graph = clone.Graph;
        if (weightName is not null)
        {
            var init = graph.FindInitializer(weightName)!;
            graph.SetInitializer(init, Tensor.FromFloats(weightName, init.Initializer!.GetDims(), values!));
        }
        while (graph.Outputs.Count > 0)
            graph.RemoveOutput(graph.Outputs.Count - 1);
        foreach (var name in outputs)
        {
            var value = graph.FindValue(name)!;
            value.Type ??= new TensorType(DataType.Float, null);
            graph.AddOutput(value);
        }
        return clone;
    }

    /// <summary>The compiler's metric computed independently in double: sum over features of ||q - f||^2 / ||f - mean(f)||^2.</summary>
    public static double RelativeError(float[][] reference, float[][] perturbed)
    {
        double total = 0;
        for (var f = 0; f < reference.Length; f++)
        {
            // Two passes (mean, then squared deviations), not the compiler's running sums.
            var mean = reference[f].Average(v => (double)v);
            double error = 0, variation = 0;
            for (var i = 0; i < reference[f].Length; i++)
            {
                var d = (double)perturbed[f][i] - reference[f][i];
                error += d * d;
                variation += (reference[f][i] - mean) * (reference[f][i] - mean);
            }
            total += error / variation;
        }
        return total;
    }
}
