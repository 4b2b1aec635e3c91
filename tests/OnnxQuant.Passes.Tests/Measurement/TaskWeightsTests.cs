using OnnxQuant.Data;
using OnnxQuant.Evaluation;
using OnnxQuant.Frontend;
using OnnxQuant.Passes.Measurement;
using OnnxQuant.Passes.Units;
using OnnxQuant.Runtime;

namespace OnnxQuant.Passes.Tests.Measurement;

/// <summary>
/// Feature weights: named on the command line (<c>NAME=W</c>) or measured from the task's annotations
/// (<see cref="TaskWeights"/>), in the curve key only when they weigh.
/// </summary>
public class TaskWeightsTests
{
    [Fact]
    public void FeaturesParseWithAndWithoutWeights()
    {
        var plain = FeatureOptions.Parse(["a", "b"]);
        Assert.Equal(["a", "b"], plain.Features);
        Assert.Empty(plain.Weights);
        Assert.False(plain.Weighted);

        var weighted = FeatureOptions.Parse(["a=2.5", "b", "x=y"]);
        Assert.Equal(["a", "b", "x=y"], weighted.Features); // "=y" is no number: part of the name
        Assert.Equal([2.5, 1, 1], weighted.Weights);
        weighted.Validate();
        Assert.Contains("features=a,b,x=y", weighted.CurveKey());
        Assert.Contains("weights=2.5,1,1", weighted.CurveKey());
        Assert.Equal("a=2.5,b=1,x=y=1", weighted.Manifest().Single(e => e.Key == "features").Value);

        // Unweighted features keep the curve key they always had, so cached curves stay valid.
        Assert.Equal(["features=a,b", "metric=centered"], plain.CurveKey());
        Assert.Equal(["features=a,b", "metric=centered"], FeatureOptions.Parse(["a=1", "b"]).CurveKey());
    }

    [Theory]
    [InlineData(new[] { "a=0" }, null, "positive")]
    [InlineData(new[] { "a=-1" }, null, "positive")]
    [InlineData(new[] { "a=2", "a=3" }, null, "named twice")]
    [InlineData(new[] { "a" }, "t.json", "leave out --feature")]
    public void BadWeightsAndConflictsAreRefused(string[] specs, string? task, string message)
    {
        var error = Assert.Throws<CompileException>(() => FeatureOptions.Parse(specs, task).Validate());
        Assert.Contains(message, error.Message);
    }

    [Fact]
    public void TaskDataNeedsItsAnnotations() =>
        Assert.Contains("--task-annotations", Assert.Throws<CompileException>(() => FeatureOptions.Parse([], null, "x.npz").Validate()).Message);

    [Fact]
    public void NoiseHasTheAskedSpreadAndIsTheSameForASeed()
    {
        var values = new float[100_001];
        var noised = TaskWeights.Noised(values, 0.5, 7);
        Assert.Equal(noised, TaskWeights.Noised(values, 0.5, 7));
        Assert.NotEqual(noised, TaskWeights.Noised(values, 0.5, 8));
        var mean = noised.Average(v => (double)v);
        var variance = noised.Sum(v => (v - mean) * (v - mean)) / noised.Length;
        // Standard errors: 0.5 / sqrt(n) = 0.0016 for the mean, about 0.45 % for the variance.
        Assert.True(Math.Abs(mean) < 0.008, $"mean {mean}");
        Assert.True(Math.Abs(variance / 0.25 - 1) < 0.025, $"variance {variance}");
    }

    /// <summary>
    /// The bundled small DETR and the annotations of its 64 calibration images: noise of 1 % of the variation costs
    /// many box AP points in the boxes (IoU at 0.5-0.95 reads their last digits) and none in the logits (a small
    /// change of class scores rarely reorders the detections). Measured: boxes 14.6 points, logits -0.03.
    /// </summary>
    [Fact]
    public void BoxesOutweighLogitsOnTheBundledDetr()
    {
        var model = ModelIO.Load(RepoPaths.File("models/fixtures/detr_small.onnx"));
        var data = Npz.Read(RepoPaths.File("models/data/calib.npz"));
        var truth = CocoDataset.Load(RepoPaths.File("models/data/calib.json"));
        var options = new SessionOptions { IntraOpThreads = 1 };
        var weighting = TaskWeights.Compute(model, data, truth, options);

        Assert.Equal(64, weighting.Images);
        Assert.Null(weighting.Note);
        Assert.Equal(["pred_logits", "pred_boxes"], weighting.Weights.Select(w => w.Feature));
        var (logits, boxes) = (weighting.Weights[0], weighting.Weights[1]);
        Assert.True(boxes.ApDrop > 0.05, $"box noise cost {boxes.ApDrop} AP");
        Assert.True(Math.Abs(logits.ApDrop) < 0.01, $"logit noise cost {logits.ApDrop} AP");
        // The weights sum to the number of outputs (rounded to two digits), the logits held at the floor.
        Assert.Equal(2.0, weighting.Weights.Sum(w => w.Weight), 0.05);
        Assert.True(boxes.Weight > 20 * logits.Weight);
        Assert.Equal(TaskWeights.Floor * 2 / (1 + TaskWeights.Floor), logits.Weight, 0.002);
        Assert.True(weighting.FloatAp > 0.6);

        // Deterministic: the same weights again.
        var again = TaskWeights.Compute(model, data, truth, options);
        Assert.Equal(weighting.Weights, again.Weights);
    }

    /// <summary>
    /// Without annotations, the float model's own detections of score 0.5 or more stand in for them: against itself
    /// the float model scores AP 1, and the noise costs more AP than against the truth (34.9 box points, 0.5 logit
    /// points measured) but ranks the outputs alike, so the rounded weights are the annotated ones.
    /// </summary>
    [Fact]
    public void SelfWeightsNeedNoAnnotationsAndAgreeWithThemOnTheBundledDetr()
    {
        var model = ModelIO.Load(RepoPaths.File("models/fixtures/detr_small.onnx"));
        var data = Npz.Read(RepoPaths.File("models/data/calib.npz"));
        var options = new SessionOptions { IntraOpThreads = 1 };
        var self = TaskWeights.ComputeSelf(model, data, options);
        Assert.Equal(1.0, self.FloatAp, 9);
        Assert.Equal(64, self.Images);
        Assert.Null(self.Note);
        Assert.True(self.Weights[1].ApDrop > self.Weights[0].ApDrop * 10);
        var annotated = TaskWeights.Compute(model, data, CocoDataset.Load(RepoPaths.File("models/data/calib.json")), options);
        Assert.Equal(annotated.Weights.Select(w => (w.Feature, w.Weight)), self.Weights.Select(w => (w.Feature, w.Weight)));
    }

    [Fact]
    public void AModelThatScoresNothingWeighsItsOutputsAlikeAndSaysWhy()
    {
        var model = ModelIO.Load(RepoPaths.File("models/fixtures/detr_small.onnx"));
        var data = Npz.Read(RepoPaths.File("models/data/calib.npz"));
        var truth = CocoDataset.Load(RepoPaths.File("models/data/calib.json"));
        // The same images without a single object: no AP to lose, whatever the noise.
        var empty = new CocoDataset(truth.Images, truth.Categories, []);
        var weighting = TaskWeights.Compute(model, data, empty, new SessionOptions { IntraOpThreads = 1 });
        Assert.Equal(0, weighting.FloatAp);
        Assert.All(weighting.Weights, w => Assert.Equal(1, w.Weight));
        Assert.Contains("scores box AP 0.000", weighting.Note);
    }

    [Fact]
    public void OutputsThatFollowTheDetectionsCannotBeWeighed()
    {
        var model = ModelIO.Load(RepoPaths.File("models/fixtures/maskrcnn_swin_small.onnx"));
        var data = Npz.Read(RepoPaths.File("models/data/calib.npz"));
        var truth = CocoDataset.Load(RepoPaths.File("models/data/calib.json"));
        var error = Assert.Throws<CompileException>(() => TaskWeights.Compute(model, data, truth, new SessionOptions { IntraOpThreads = 1 }));
        Assert.StartsWith("--task-annotations:", error.Message);
    }
}
