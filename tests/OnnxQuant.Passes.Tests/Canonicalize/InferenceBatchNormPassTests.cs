using OnnxQuant.Frontend;
using OnnxQuant.Passes.Canonicalize;
using Attribute = OnnxQuant.Frontend.Attribute;

namespace OnnxQuant.Passes.Tests.Canonicalize;

public class InferenceBatchNormPassTests
{
    /// <summary>x -> Conv -> BatchNormalization (with <paramref name="outputs"/> outputs) -> Relu; the same seed gives
    /// the same weights and statistics whatever the form.</summary>
    private static (Net Net, Value[] Bn) ConvBn(long opset, int outputs, bool trainingMode, bool readMean = false)
    {
        var net = new Net(opset, seed: 3);
        var x = net.Input("x", 2, 3, 8, 8);
        var conv = net.Op("Conv", [x, net.Random("w", [4, 3, 3, 3], 0.5f)], Attribute.FromInts("pads", [1, 1, 1, 1]));
        Attribute[] attributes = trainingMode ? [Attribute.FromFloat("epsilon", 1e-3f), Attribute.FromInt("training_mode", 1)] : [Attribute.FromFloat("epsilon", 1e-3f)];
        var bn = net.OpMulti("BatchNormalization", [conv, net.Random("gamma", [4], 0.5f, 1f), net.Random("beta", [4], 0.3f),
            net.Random("mean", [4], 0.2f), net.Random("var", [4], 0.3f, 0.6f)], outputs, attributes);
        net.Output(net.Op("Relu", [bn[0]]));
        if (readMean)
            net.Output(bn[1]);
        return (net, bn);
    }

    private static readonly (string, long[], float[]) Input = ("x", [2, 3, 8, 8], Net.RandomData(384, 9));

    [Theory]
    [InlineData(13, 5, false)]  // training mode by its outputs
    [InlineData(15, 3, true)]   // training mode by its attribute
    public void ATrainingModeBatchNormComputesItsInferenceForm(long opset, int outputs, bool attribute)
    {
        var (net, _) = ConvBn(opset, outputs, attribute);
        var training = Net.Run(net.Model, Input)[0];
        var (inferenceNet, _) = ConvBn(opset, 1, false);
        var inference = Net.Run(inferenceNet.Model, Input)[0];
        // ONNX Runtime does normalize the training form by the batch's statistics: it computes something else.
        Assert.True(training.Zip(inference).Max(p => MathF.Abs(p.First - p.Second)) > 0.1f);
        Assert.Equal(1, InferenceBatchNormPass.Count(net.Model));
        Assert.Contains(Intake.Notes(net.Model), n => n.Contains("training mode", StringComparison.Ordinal));
        Assert.True(new InferenceBatchNormPass().Run(net.Model).Modified);
        var bn = net.Graph.Nodes.Single(n => n.OpType == "BatchNormalization");
        Assert.Single(bn.Outputs);
        Assert.Null(bn.GetAttribute("training_mode"));
        Net.AssertClose(inference, Net.Run(net.Model, Input)[0], 1e-6f);
        // Now it folds into the convolution like any inference BatchNormalization.
        Assert.True(new FoldBatchNormPass().Run(net.Model).Modified);
        Assert.Equal(0, InferenceBatchNormPass.Count(net.Model));
    }

    /// <summary>Before opset 7 the mode is also the is_test attribute (default training): the inference form sets it.</summary>
    [Fact]
    public void AnOpset6TrainingBatchNormGetsIsTest()
    {
        var (net, _) = ConvBn(6, 5, false);
        Assert.True(new InferenceBatchNormPass().Run(net.Model).Modified);
        var bn = net.Graph.Nodes.Single(n => n.OpType == "BatchNormalization");
        Assert.Single(bn.Outputs);
        Assert.Equal(1, bn.GetInt("is_test", 0));
        Assert.Equal(1e-3f, bn.GetFloat("epsilon", 0));
    }

    [Fact]
    public void ABatchNormWhoseRunningMeanIsReadStaysAsItIs()
    {
        var (net, _) = ConvBn(13, 5, false, readMean: true);
        Assert.False(new InferenceBatchNormPass().Run(net.Model).Modified);
        Assert.Equal(5, net.Graph.Nodes.Single(n => n.OpType == "BatchNormalization").Outputs.Count);
        Assert.DoesNotContain(Intake.Notes(net.Model), n => n.Contains("training mode", StringComparison.Ordinal));
    }
}
