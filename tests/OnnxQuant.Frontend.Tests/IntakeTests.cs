namespace OnnxQuant.Frontend.Tests;

/// <summary>Models ONNX Runtime runs although they break a rule of the specification load, with a warning.</summary>
public class IntakeTests
{
    private static Model Small(long irVersion, bool listInitializer)
    {
        var g = new Graph("g");
        var model = new Model(g) { IrVersion = irVersion };
        model.OpsetImports[""] = 8;
        var x = new Value("x", new TensorType(DataType.Float, Shape.Of(2)));
        g.AddInput(x);
        var w = g.AddInitializer("w", Tensor.FromFloats("w", [2], [1f, 2f]));
        if (listInitializer)
            g.AddInput(w);
        var node = new Node("Add", [x, w], ["y"], name: "add");
        g.AddNode(node);
        node.Outputs[0].Type = new TensorType(DataType.Float, Shape.Of(2));
        g.AddOutput(node.Outputs[0]);
        return model;
    }

    [Fact]
    public void Ir3InitializerNotListedAsInputLoadsWithAWarning()
    {
        var bytes = ModelIO.ToBytes(Small(3, listInitializer: false));
        var model = ModelIO.Load(bytes);
        var warning = Assert.Single(ModelValidator.Validate(model).Warnings);
        Assert.Contains("not listed among the graph inputs, which IR version 3 requires", warning.Message);
        Assert.Empty(ModelValidator.Validate(Small(3, listInitializer: true)).Issues);
    }

    [Fact]
    public void NewerIrVersionLoadsWithAWarningAndKeepsItsVersion()
    {
        var model = ModelIO.Load(ModelIO.ToBytes(Small(ModelIO.NewestIrVersion + 1, listInitializer: false)));
        Assert.Equal(ModelIO.NewestIrVersion + 1, model.IrVersion);
        Assert.Contains("newer than this tool knows", Assert.Single(ModelValidator.Validate(model).Warnings).Message);
        Assert.Throws<FrontendException>(() => ModelIO.Load(ModelIO.ToBytes(Small(0, listInitializer: false))));
    }
}
