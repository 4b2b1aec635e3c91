namespace OnnxQuant.Frontend.Tests;

public class GraphEditTests
{
    [Fact]
    public void RemoveNodeRefusesWhileOutputsAreUsedAndChangesNothing()
    {
        var model = TestModels.ConvRelu();
        var g = model.Graph;
        var conv = g.Nodes[0];
        var error = Assert.Throws<InvalidOperationException>(() => g.RemoveNode(conv));
        Assert.Contains("relu0", error.Message);
        Assert.Equal(2, g.Nodes.Count);
        Assert.Single(conv.Outputs[0].Uses);

        var relu = g.Nodes[1];
        Assert.Throws<InvalidOperationException>(() => g.RemoveNode(relu)); // its output is a graph output
        g.RemoveNode(relu, force: true);
        Assert.Empty(conv.Outputs[0].Uses);
        Assert.Null(relu.Graph);
        Assert.False(ModelValidator.Validate(model).IsValid); // the graph output now has no producer
    }

    [Fact]
    public void ReplaceAllUsesWithRewiresUsersAndRefusesGraphOutputsUnlessAsked()
    {
        var model = TestModels.ConvRelu();
        var g = model.Graph;
        var conv = g.Nodes[0];
        var relu = g.Nodes[1];
        var w2 = g.AddInitializer(g.UniqueName("w"), Tensor.FromFloats("w2", [4, 3, 3, 3], new float[108]));
        Assert.Equal("w_1", w2.Name);
        var oldW = conv.Inputs[1]!;
        g.ReplaceAllUsesWith(oldW, w2);
        Assert.Same(w2, conv.Inputs[1]);
        Assert.Empty(oldW.Uses);
        Assert.Equal(new Usage(conv, 1), w2.Uses.Single());
        g.RemoveInitializer(oldW);
        Assert.Null(g.FindInitializer("w"));

        var identity = new Node("Identity", [relu.Outputs[0]], [g.UniqueName("y")]);
        g.AddNode(identity);
        Assert.Equal("y_1", identity.Outputs[0].Name);
        Assert.Throws<InvalidOperationException>(() => g.ReplaceAllUsesWith(relu.Outputs[0], identity.Outputs[0]));
        Assert.Same(relu.Outputs[0], identity.Inputs[0]);
        Assert.True(ModelValidator.Validate(model).IsValid);
    }

    [Fact]
    public void RenamedInitializerIsWrittenUnderItsNewName()
    {
        var model = TestModels.ConvRelu();
        var w = model.Graph.FindInitializer("w")!;
        w.Name = model.Graph.UniqueName("conv0.weight");
        var back = ModelIO.Load(ModelIO.ToBytes(model));
        Assert.Same(back.Graph.FindInitializer("conv0.weight"), back.Graph.Nodes[0].Inputs[1]);
        Assert.Equal("conv0.weight", back.Graph.FindInitializer("conv0.weight")!.Initializer!.Name);
    }

    [Fact]
    public void AddOutputExposesAnIntermediateValue()
    {
        var model = TestModels.ConvRelu();
        var c = model.Graph.Nodes[0].Outputs[0];
        model.Graph.AddOutput(c);
        Assert.True(c.IsGraphOutput);
        var back = ModelIO.Load(ModelIO.ToBytes(model));
        Assert.Equal(["y", "c"], back.Graph.Outputs.Select(v => v.Name));
    }

    [Fact]
    public void TopologicalSortIsStableAndCyclesAreReported()
    {
        var g = new Graph("g");
        var x = new Value("x", new TensorType(DataType.Float, Shape.Of(2)));
        g.AddInput(x);
        var b = new Node("Neg", [null], ["b"], name: "b");
        var a = new Node("Relu", [x], ["a"], name: "a");
        var c = new Node("Abs", [x], ["c"], name: "c");
        g.AddNode(b);
        g.AddNode(a);
        g.AddNode(c);
        b.ReplaceInput(0, a.Outputs[0]);
        g.TopologicalSort();
        Assert.Equal(["a", "b", "c"], g.Nodes.Select(n => n.Name));

        a.ReplaceInput(0, b.Outputs[0]);
        var error = Assert.Throws<FrontendException>(() => g.TopologicalSort());
        Assert.Contains("cycle", error.Message);
        Assert.Equal(["a", "b", "c"], g.Nodes.Select(n => n.Name));
    }

    [Fact]
    public void SubgraphUsesOfOuterValuesAreTracked()
    {
        var model = ModelIO.Load($"{TestModels.SuiteRoot}/node/test_loop11/model.onnx");
        var loop = model.Graph.Nodes.Single(n => n.OpType == "Loop");
        var body = loop.GetAttribute("body")!.AsGraph();
        Assert.Same(loop, body.ParentNode);
        Assert.Same(model.Graph, body.OuterGraph);
        var y = model.Graph.Inputs.Single(v => v.Name == "y");
        Assert.Contains(y.Uses, u => u.Node.Graph == body || u.Node == loop);
        Assert.DoesNotContain(body.UniqueName("y"), model.Graph.AllGraphs().SelectMany(gr => gr.Nodes).SelectMany(n => n.Outputs).Select(o => o.Name));
    }

    [Fact]
    public void CloneIsDeepAndEqual()
    {
        var model = ModelIO.Load($"{TestModels.SuiteRoot}/node/test_loop11/model.onnx");
        var copy = model.Clone();
        Assert.Null(ModelComparer.FindDifference(model, copy));
        Assert.Equal(ModelIO.ToBytes(model), ModelIO.ToBytes(copy));
        copy.Graph.Nodes[0].Name = "changed";
        Assert.NotEqual("changed", model.Graph.Nodes[0].Name);
        Assert.NotSame(model.Graph.Nodes[0].GetAttribute("body")!.AsGraph(), copy.Graph.Nodes[0].GetAttribute("body")!.AsGraph());
    }

    [Fact]
    public void OpsetImportsTreatAiOnnxAsTheDefaultDomain()
    {
        var model = TestModels.ConvRelu();
        Assert.Equal(17, model.OpsetImports.Default);
        model.OpsetImports["ai.onnx"] = 21;
        Assert.Equal(21, model.OpsetImports[""]);
        model.OpsetImports["com.microsoft"] = 1;
        Assert.Equal(["", "com.microsoft"], model.OpsetImports.Select(o => o.Domain));
    }
}
