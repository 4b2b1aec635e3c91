using System.Globalization;
using OnnxQuant.Data;
using OnnxQuant.Evaluation;
using OnnxQuant.Frontend;
using OnnxQuant.Runtime;

namespace OnnxQuant.Passes.Measurement;

/// <summary>One detection output's weight in the metric and the box AP that noise in it cost.</summary>
public sealed record FeatureWeight(string Feature, double Weight, double ApDrop);

/// <summary>
/// How the detection outputs were weighed (<see cref="TaskWeights"/>): on how many images, the float model's box AP
/// there, the noise, and per output the mean AP drop and the weight. <see cref="Note"/> says why the weights are
/// equal when no output's noise cost AP.
/// </summary>
public sealed record TaskWeighting(int Images, double FloatAp, double Noise, int Trials, IReadOnlyList<FeatureWeight> Weights, string? Note)
{
    /// <summary>One line for the notes: the weights and what noise in each output cost.</summary>
    public string Describe() =>
        $"task weights on {Images} images (float box AP {FloatAp.ToString("0.000", CultureInfo.InvariantCulture)}, noise of " +
        $"{Noise.ToString(CultureInfo.InvariantCulture)} of each output's variation): " +
        string.Join(", ", Weights.Select(w => $"{w.Feature} {w.Weight.ToString("R", CultureInfo.InvariantCulture)} (noise cost {(w.ApDrop * 100).ToString("0.00", CultureInfo.InvariantCulture)} AP)")) +
        (Note is { } note ? "; " + note : "");
}

/// <summary>
/// Weights for the distortion metric from what a detector's task reads. The metric sums each feature's squared error
/// relative to its variation, so every feature counts the same however much the detections depend on it: a DETR's
/// logits and boxes (and any side output) weigh alike, although box AP at high IoU thresholds reads the boxes' last
/// digits and the class scores only through their ranking. Here each output the detection decoder reads gets Gaussian
/// noise of <see cref="Noise"/> times its variation (exactly that contribution to the metric), the outputs are decoded
/// and scored against the annotations, and the mean AP lost over <see cref="Trials"/> seeds becomes the output's
/// weight, so that the metric approximates the AP a perturbation costs to first order. The model runs once; the
/// noise is added to its kept outputs.
/// </summary>
public static class TaskWeights
{
    /// <summary>The noise's energy relative to each output's variation: about the measured distortion of a 3- to
    /// 4-bit compile, where the allocation's choices decide the accuracy.</summary>
    public const double Noise = 0.01;

    /// <summary>Noise draws per output; AP is a step function of the detections, so one draw is too coarse.</summary>
    public const int Trials = 8;

    /// <summary>The smallest weight, against the largest: an output whose noise cost no AP on these images still
    /// counts a little, so that its layers are not priced at nothing.</summary>
    public const double Floor = 0.02;

    /// <summary>The float model's box AP below which its losses are noise, not a measure of what the outputs are worth:
    /// the outputs then weigh alike.</summary>
    public const double MinFloatAp = 0.05;

    /// <summary>Significant digits the weights keep, so that AP differences in the last digits between machines'
    /// kernels do not move the allocation.</summary>
    public const int Digits = 2;

    /// <summary>The value of <c>--task-annotations</c> that asks for <see cref="ComputeSelf"/>.</summary>
    public const string Self = "self";

    /// <summary>Score from which the float model's own detections stand in for annotations (<see cref="ComputeSelf"/>).</summary>
    public const double SelfScore = 0.5;

    /// <summary>
    /// The weighing <paramref name="features"/> asks for: its task data (else the calibration data) and annotations
    /// (or <see cref="Self"/>), on at most <paramref name="samples"/> images, the first ones: one float pass over them,
    /// like calibration's.
    /// </summary>
    public static TaskWeighting Run(Model model, Units.FeatureOptions features, string calibPath, int samples, SessionOptions options)
    {
        var data = Npz.Read(features.TaskData ?? calibPath);
        var images = data.Where(a => a.Name != "image_ids").Select(a => a.Array.Shape.Length > 0 ? a.Array.Shape[0] : 0).DefaultIfEmpty(0).Min();
        var cut = images > samples;
        if (cut)
            data = data.Select(a => a.Array.Shape.Length > 0 && a.Array.Shape[0] == images ? a with { Array = a.Array.SliceFirstAxis(0, samples) } : a).ToList();
        if (features.TaskAnnotations == Self)
            return ComputeSelf(model, data, options);
        var truth = CocoDataset.Load(features.TaskAnnotations!);
        // Without image ids, sample i is the annotations' i-th image: the first ones go with the first samples.
        if (cut && data.All(a => a.Name != "image_ids") && truth.Images.Count == images)
        {
            var kept = truth.Images.Take(samples).ToList();
            var ids = kept.Select(i => i.Id).ToHashSet();
            truth = new CocoDataset(kept, truth.Categories, truth.Annotations.Where(a => ids.Contains(a.ImageId)).ToList());
        }
        return Compute(model, data, truth, options);
    }

    /// <exception cref="CompileException">The model's outputs are not fixed-size detections, or the data and the
    /// annotations do not fit it.</exception>
    public static TaskWeighting Compute(Model model, IReadOnlyList<NamedArray> data, CocoDataset truth, SessionOptions options) =>
        Weigh(Collect(model, data, truth, options), null);

    /// <summary>
    /// Weights without annotations: the float model's own detections of score at least <see cref="SelfScore"/> on the
    /// images stand in for them, so the weights say how much noise in each output changes the detections the model
    /// makes (box AP against itself), not how much it costs against the truth. Classes are the model's own indices.
    /// </summary>
    public static TaskWeighting ComputeSelf(Model model, IReadOnlyList<NamedArray> data, SessionOptions options)
    {
        data = data.Where(a => a.Name != "image_ids").ToList();
        var count = data.Count > 0 && data[0].Array.Shape.Length > 0 ? (int)data[0].Array.Shape[0] : 0;
        var shape = data.FirstOrDefault(a => a.Array.Shape.Length >= 4)?.Array.Shape;
        int height = shape is null ? 1 : (int)shape[^2], width = shape is null ? 1 : (int)shape[^1];
        var images = Enumerable.Range(1, count).Select(i => new CocoImage(i, width, height, $"sample {i}")).ToList();
        // One placeholder category: the decoder then names each class by its index.
        var outputs = Collect(model, data, new CocoDataset(images, [new CocoCategory(0, "class 0")], []), options);
        var detections = outputs.Detections();
        var kept = detections.Where(d => d.Score >= SelfScore).ToList();
        var categories = detections.Select(d => d.CategoryId).Distinct().Order().Select(id => new CocoCategory(id, $"class {id}")).ToList();
        var annotations = kept.Select((d, k) => new CocoAnnotation(k + 1, d.ImageId, d.CategoryId, d.Box, d.Box.Area, false, null)).ToList();
        return Weigh(outputs.Against(new CocoDataset(images, categories, annotations)),
            kept.Count == 0 ? $"the float model makes no detection of score {SelfScore.ToString(CultureInfo.InvariantCulture)} or more on these {count} images: the outputs weigh alike" : null);
    }

    private static DetectionOutputs Collect(Model model, IReadOnlyList<NamedArray> data, CocoDataset truth, SessionOptions options)
    {
        using var session = InferenceSession.Create(ModelIO.ToBytes(model), options);
        try
        {
            return DetectionEvaluator.Collect(session, data, truth);
        }
        catch (EvaluationException ex)
        {
            throw new CompileException($"--task-annotations: {ex.Message}");
        }
    }

    /// <param name="noScore">What to say when the float model scores nothing (null: the annotations' wording).</param>
    private static TaskWeighting Weigh(DetectionOutputs outputs, string? noScore)
    {
        var names = outputs.OutputNames;
        var floatAp = outputs.Score().Bbox.AP ?? 0;
        var drops = new double[names.Count];
        for (var k = 0; k < names.Count; k++)
        {
            var energy = new FeatureEnergy();
            long elements = 0;
            foreach (var values in outputs.Values(k))
            {
                energy.Add(values, 1);
                elements += values.Length;
            }
            var sigma = Math.Sqrt(Noise * energy.Total / Math.Max(1, elements));
            double lost = 0;
            for (var t = 0; t < Trials; t++)
            {
                var output = k;
                var trial = t;
                var ap = outputs.Score((o, run, values) => o == output ? Noised(values, sigma, Seed(output, trial, run)) : values).Bbox.AP ?? 0;
                lost += floatAp - ap;
            }
            drops[k] = lost / Trials;
        }
        var largest = drops.Max();
        if (floatAp < MinFloatAp || !(largest > 0))
            return new TaskWeighting(outputs.ImageCount, floatAp, Noise, Trials,
                names.Select((n, k) => new FeatureWeight(n, 1, drops[k])).ToList(),
                floatAp >= MinFloatAp
                    ? $"noise of {Noise.ToString(CultureInfo.InvariantCulture)} of each output's variation cost no box AP on these {outputs.ImageCount} images: the outputs weigh alike"
                    : noScore ?? $"the float model scores box AP {floatAp.ToString("0.000", CultureInfo.InvariantCulture)} on these {outputs.ImageCount} images, too little to tell what costs it (untrained, or annotations that do not describe them): the outputs weigh alike");
        var raw = drops.Select(d => Math.Max(d, Floor * largest)).ToArray();
        var sum = raw.Sum();
        // Scaled so the weights sum to the number of outputs, as the unweighted metric's do: distortions and
        // --max-distortion keep their scale.
        var weights = raw.Select(r => Round(r * names.Count / sum)).ToArray();
        return new TaskWeighting(outputs.ImageCount, floatAp, Noise, Trials,
            names.Select((n, k) => new FeatureWeight(n, weights[k], drops[k])).ToList(), null);
    }

    private static double Round(double value)
    {
        var scale = Math.Pow(10, Digits - 1 - (int)Math.Floor(Math.Log10(value)));
        return Math.Round(value * scale) / scale;
    }

    private static int Seed(int output, int trial, int run) => unchecked(1_000_003 * output + 7_919 * trial + run + 17);

    /// <summary><paramref name="values"/> plus independent normal noise of standard deviation <paramref name="sigma"/>
    /// (Box-Muller on a seeded generator: the same draws on every machine).</summary>
    internal static float[] Noised(float[] values, double sigma, int seed)
    {
        var random = new Random(seed);
        var result = new float[values.Length];
        for (var i = 0; i < values.Length; i += 2)
        {
            var u1 = 1.0 - random.NextDouble();
            var u2 = random.NextDouble();
            var radius = sigma * Math.Sqrt(-2 * Math.Log(u1));
            result[i] = (float)(values[i] + radius * Math.Cos(2 * Math.PI * u2));
            if (i + 1 < values.Length)
                result[i + 1] = (float)(values[i + 1] + radius * Math.Sin(2 * Math.PI * u2));
        }
        return result;
    }
}
