namespace OnnxQuant.Frontend.Tests;

public class CoreTests
{
    [Fact]
    public void BuiltModelRoundTripsThroughBytes()
    {
        var model = TestModels.ConvRelu();
        var bytes = ModelIO.ToBytes(model);
        var back = ModelIO.Load(bytes);
        Assert.Null(ModelComparer.FindDifference(model, back));
        Assert.Equal(bytes, ModelIO.ToBytes(back));
        var conv = back.Graph.Nodes[0];
        Assert.Equal("Conv", conv.OpType);
        Assert.Equal([1L, 1, 1, 1], conv.GetInts("pads"));
        Assert.Same(back.Graph.FindInitializer("w"), conv.Inputs[1]);
        Assert.Equal(new Usage(conv, 1), conv.Inputs[1]!.Uses.Single());
        Assert.Equal(108, conv.Inputs[1]!.Initializer!.ToFloatArray().Length);
        Assert.Equal(0.07f, conv.Inputs[1]!.Initializer!.ToFloatArray()[7]);
        Assert.Equal("N", back.Graph.Inputs[0].Type!.Shape![0].Param);
    }

    [Fact]
    public void SuiteModelsLoad()
    {
        foreach (var path in TestModels.Suite.Take(50))
        {
            var model = ModelIO.Load(path);
            Assert.NotEmpty(model.Graph.Nodes);
        }
    }
}
