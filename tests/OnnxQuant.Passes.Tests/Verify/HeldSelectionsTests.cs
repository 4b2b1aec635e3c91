using OnnxQuant.Data;
using OnnxQuant.Frontend;
using OnnxQuant.Passes.Compile;
using OnnxQuant.Passes.Verify;
using OnnxQuant.Passes.Pipeline;
using OnnxQuant.Runtime;
using Attribute = OnnxQuant.Frontend.Attribute;

namespace OnnxQuant.Passes.Tests.Verify;

/// <summary>
/// A choice the graph makes from the data (a two-stage DETR's query selection: TopK over per-position scores, then a
/// Gather of the chosen positions) is held at the float model's choice while the compile measures, and the artifact
/// keeps its own.
/// </summary>
public sealed class HeldSelectionsTests : IDisposable
{
    private readonly string _root = Path.Combine(Path.GetTempPath(), $"onnxquant-held-{Guid.NewGuid():N}");
    private const int Positions = 32, Channels = 16, Chosen = 8, Calib = 16, Verify = 6;

    public void Dispose()
    {
        if (Directory.Exists(_root))
            Directory.Delete(_root, true);
    }

    /// <summary>
    /// x [1, 32, 16] -> encoder MatMul + Relu -> per-position score (MatMul to one column) -> TopK 8 -> Gather of the
    /// chosen positions -> output MatMul ("queries"). The scores are close together, so the quantized model's choices
    /// differ from the float model's.
    /// </summary>
    private static Net TwoStage()
    {
        var net = new Net(seed: 11);
        var x = net.Input("x", 1, Positions, Channels);
        var encoded = net.Op("Relu", [net.Op("Add", [net.Op("MatMul", [x, net.Random("w_enc", [Channels, Channels], 0.5f)]), net.Random("b_enc", [Channels], 0.1f, 0.3f)])]);
        encoded.Name = "encoded";
        var scores = net.Op("Squeeze", [net.Op("MatMul", [encoded, net.Random("w_score", [Channels, 1], 0.1f)]), net.Ints("axis2", 2)]);
        scores.Name = "scores";
        var topk = net.OpMulti("TopK", [scores, net.Ints("k", Chosen)], 2, Attribute.FromInt("axis", 1));
        topk[1].Name = "chosen";
        var positions = net.Op("Squeeze", [topk[1], net.Ints("axis0", 0)]);
        var gathered = net.Op("Gather", [encoded, positions], Attribute.FromInt("axis", 1));
        var queries = net.Op("MatMul", [gathered, net.Random("w_out", [Channels, 8], 0.5f)]);
        queries.Name = "queries";
        net.Output(queries);
        return net;
    }

    private (string Model, string Calib, string Verify) Write(Model model)
    {
        Directory.CreateDirectory(_root);
        var modelPath = Path.Combine(_root, "two_stage.onnx");
        ModelIO.Save(model, modelPath);
        string Data(string name, int samples, int seed)
        {
            var path = Path.Combine(_root, name);
            Npz.Write(path, [new NamedArray("x", NpyArray.FromFloats(Net.RandomData(samples * Positions * Channels, seed), samples, Positions, Channels))]);
            return path;
        }
        return (modelPath, Data("calib.npz", Calib, 3), Data("verify.npz", Verify, 4));
    }

    /// <summary>The named tensors (inner ones made outputs) of one run in ONNX Runtime.</summary>
    private static IReadOnlyList<TensorData> Outputs(Model model, IReadOnlyList<NamedTensor> inputs, IReadOnlyList<string> names)
    {
        var clone = model.Clone();
        foreach (var name in names)
            if (clone.Graph.FindValue(name) is { IsGraphOutput: false } v)
            {
                ElementTypeInference.EnsureTyped(v);
                clone.Graph.AddOutput(v);
            }
        using var session = InferenceSession.Create(ModelIO.ToBytes(clone), SessionOptions.Default);
        return session.Run(inputs, names).Select(o => o.Data).ToList();
    }

    private static float[][] Run(Model model, IReadOnlyList<NamedTensor> inputs, IReadOnlyList<string> outputs) =>
        Outputs(model, inputs, outputs).Select(t => t.ToFloats()).ToArray();

    private static float[][] Concat(IEnumerable<float[][]> perSample) =>
        perSample.Aggregate((a, b) => a.Zip(b, (x, y) => x.Concat(y).ToArray()).ToArray());

    [Fact]
    public void TheMeasuredDistortionIsTheQuantizedModelsWithTheFloatChoiceAndTheArtifactMakesItsOwn()
    {
        var net = TwoStage();
        var (modelPath, calibPath, verifyPath) = Write(net.Model);
        var result = Compiler.Run(modelPath, calibPath, Path.Combine(_root, "out"), new CompileOptions
        {
            Allocation = new() { TargetBits = [4] },
            Data = new() { CalibSamples = Calib, VerifyData = verifyPath, VerifySamples = Verify },
            Curves = new() { CacheDir = Path.Combine(_root, "cache") },
        }, "test", SilentProgress.Instance);
        var report = result.Targets[0].Report;

        // The scores the choice is made on are measured as a feature beside the output.
        Assert.Equal(["queries", "scores"], report.Features);
        var selection = Assert.IsType<SelectionReport>(report.Selection);
        var held = Assert.Single(selection.Selections);
        Assert.Equal(("TopK", "chosen", "scores", (long)Verify * Chosen), (held.OpType, held.Indices, held.Scores, held.Chosen));
        Assert.InRange(held.Agreement, 0, 1);

        // The page shows the artifact's own choices beside the held measurement.
        var page = File.ReadAllText(Path.Combine(_root, "out", "report.html"));
        Assert.Contains("held at the float model's while measuring", page);
        Assert.Contains($"{(held.Agreement * 100).ToString("0.0", System.Globalization.CultureInfo.InvariantCulture)} % of {Verify * Chosen}", page);

        // The artifact takes the model's own input only and makes its own choice.
        var artifact = ModelIO.Load(result.Targets[0].ModelPath);
        Assert.Equal(["x"], artifact.Graph.Inputs.Where(v => !v.IsInitializer).Select(v => v.Name));
        Assert.Equal(["queries"], artifact.Graph.Outputs.Select(v => v.Name));
        var topk = Assert.Single(artifact.Graph.Nodes, n => n.OpType == "TopK");
        Assert.Contains(topk.Outputs[1].Uses, u => u.Node.OpType == "Squeeze");

        // Independently: the float model's choices on each verification sample, fed to the artifact in place of its own.
        using var verifyData = NpyArray.FromFloats(Npz.Read(verifyPath).Single().Array.ToFloats(), Verify, 1, Positions, Channels);
        IReadOnlyList<NamedTensor> Sample(int s) => [new NamedTensor("x", TensorData.FromFloats(verifyData.SliceFirstAxis(s, 1).ToFloats(), [1, Positions, Channels]))];
        var features = new[] { "queries", "scores" };
        var reference = new List<float[][]>();
        var forced = new List<float[][]>();
        var free = new List<float[][]>();
        var agree = 0L;
        for (var s = 0; s < Verify; s++)
        {
            reference.Add(Run(net.Model, Sample(s), features));
            var floatChoice = Outputs(net.Model, Sample(s), ["chosen"])[0];
            var frozen = artifact.Clone();
            HeldSelections.Freeze(frozen, [new HeldSelection(topk.Name, "TopK", "chosen", "chosen_float", "scores", true)]);
            forced.Add(Run(frozen, [.. Sample(s), new NamedTensor("chosen_float", floatChoice)], features));
            free.Add(Run(artifact, Sample(s), features));
            var own = Outputs(artifact, Sample(s), ["chosen"])[0].GetArray<long>();
            agree += own.Count(floatChoice.GetArray<long>().Contains);
        }
        var expectedHeld = TestCalibration.RelativeError(Concat(reference), Concat(forced));
        var expectedFree = TestCalibration.RelativeError(Concat(reference), Concat(free));
        // The compiler sums in float chunks, the reference in double: a relative 1e-4.
        Assert.Equal(expectedHeld, report.Distortion.Measured, expectedHeld * 1e-4);
        var measuredFree = Assert.NotNull(selection.MeasuredFree);
        Assert.Equal(expectedFree, measuredFree, expectedFree * 1e-4);
        Assert.Equal(agree / (double)(Verify * Chosen), held.Agreement, 1e-6);
        // These scores lie close together: the artifact picks other positions than the float model on some samples,
        // which costs far more than the held measurement shows.
        Assert.True(held.Agreement < 1, $"agreement {held.Agreement}");
        Assert.True(measuredFree > 2 * report.Distortion.Measured, $"free {measuredFree}, held {report.Distortion.Measured}");
        Assert.InRange(Assert.NotNull(selection.MeasuredMatched), report.Distortion.Measured, measuredFree);
    }

    [Fact]
    public void OnlyChoicesThatReachAFeatureAndThatOtherNodesReadAreHeld()
    {
        var net = TwoStage();
        Assert.Equal("chosen", Assert.Single(HeldSelections.Find(net.Model, ["queries"])).Indices);
        // A feature before the choice: nothing after it is measured, so nothing is held.
        Assert.Empty(HeldSelections.Find(net.Model, ["encoded"]));
        // An ArgMax whose indices are only an output (a segmentation map) is the model's result, not a choice it acts on.
        var seg = new Net(seed: 2);
        var x = seg.Input("x", 1, 4, 6);
        var logits = seg.Op("MatMul", [x, seg.Random("w", [6, 3])]);
        seg.Output(logits);
        var label = seg.Op("ArgMax", [logits], Attribute.FromInt("axis", 2));
        seg.Graph.AddOutput(label);
        Assert.Empty(HeldSelections.Find(seg.Model, [logits.Name]));
    }

    [Fact]
    public void ChoicesWhoseCountChangesWithTheDataAreNamedAsNotHeld()
    {
        // Positions whose score is positive (NonZero), gathered: how many follows the data.
        var net = new Net(seed: 3);
        var x = net.Input("x", 1, Positions, Channels);
        var scores = net.Op("Squeeze", [net.Op("MatMul", [x, net.Random("w_score", [Channels, 1])]), net.Ints("axis2", 2)]);
        var flat = net.Op("Squeeze", [scores, net.Ints("axis0", 0)]);
        var positive = net.Op("NonZero", [net.Op("Greater", [flat, net.Init("zero", [], [0f])])]);
        positive.Producer!.Name = "positive";
        var kept = net.Op("Gather", [x, net.Op("Squeeze", [positive, net.Ints("first", 0)])], Attribute.FromInt("axis", 1));
        net.Output(kept);
        Assert.Empty(HeldSelections.Find(net.Model, [kept.Name]));
        Assert.Equal(["NonZero 'positive'"], HeldSelections.Unheld(net.Model, [kept.Name]));
        Assert.Empty(HeldSelections.Unheld(net.Model, [scores.Name]));
        // What the choice is made from is measured instead: the scores behind the mask (the input itself never changes).
        Assert.Equal([flat.Name], HeldSelections.FeaturesBefore(net.Model, [kept.Name]));
        Assert.Empty(HeldSelections.FeaturesBefore(net.Model, [scores.Name]));
    }

    [Fact]
    public void FreezeAndThawRestoreTheGraph()
    {
        var net = TwoStage();
        var held = HeldSelections.Find(net.Model, ["queries"]);
        // Freezing types the index tensor (a graph input needs a type); otherwise the thawed graph is the original.
        ElementTypeInference.EnsureTyped(net.Graph.FindValue("chosen")!);
        var before = ModelIO.ToBytes(net.Model);
        HeldSelections.Freeze(net.Model, held);
        Assert.Contains(net.Graph.Inputs, v => v.Name == held[0].Held);
        Assert.Contains(net.Graph.Outputs, v => v.Name == "chosen");
        var thawed = HeldSelections.Thawed(net.Model, held);
        Assert.Equal(before, ModelIO.ToBytes(thawed));
    }

    [Fact]
    public void TopKChoicesCompareAsSetsAndAlignInTheFloatOrder()
    {
        // Two rows of k = 4 along axis 1 (shape [2, 4]).
        long[] reference = [5, 3, 9, 1, 0, 2, 4, 6];
        long[] deployed = [3, 5, 1, 7, 6, 4, 2, 0];
        Assert.Equal((7L, 8L), HeldSelections.Compare(reference, deployed, [2, 4], 1));
        // Element by element (ArgMax): only equal positions agree.
        Assert.Equal((0L, 8L), HeldSelections.Compare(reference, deployed, [2, 4], null));
        // Each index both chose keeps the float place; 7, chosen instead of 9, takes 9's place.
        Assert.Equal([5, 3, 7, 1, 0, 2, 4, 6], HeldSelections.Align(reference, deployed, [2, 4], 1));
        // Along axis 0 of a [4, 2] tensor: columns are the rows of the choice.
        long[] columns = [5, 0, 3, 2, 9, 4, 1, 6];
        long[] deployedColumns = [3, 6, 5, 4, 1, 2, 8, 0];
        Assert.Equal((7L, 8L), HeldSelections.Compare(columns, deployedColumns, [4, 2], 0));
        Assert.Equal([5, 0, 3, 2, 8, 4, 1, 6], HeldSelections.Align(columns, deployedColumns, [4, 2], 0));
    }
}
