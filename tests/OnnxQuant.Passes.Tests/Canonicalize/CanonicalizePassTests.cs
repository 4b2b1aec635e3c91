using OnnxQuant.Frontend;
using OnnxQuant.Passes.Canonicalize;
using OnnxQuant.Passes.Pipeline;
using Attribute = OnnxQuant.Frontend.Attribute;

namespace OnnxQuant.Passes.Tests.Canonicalize;

public class FoldBatchNormPassTests
{
    private static Net ConvBn(bool withBias, bool shareOutput = false)
    {
        var net = new Net();
        var x = net.Input("x", 1, 3, 8, 8);
        var w = net.Random("w", [4, 3, 3, 3], 0.5f);
        Value?[] convInputs = withBias ? [x, w, net.Random("b", [4], 0.2f)] : [x, w];
        var conv = net.Op("Conv", convInputs, Attribute.FromInts("pads", [1, 1, 1, 1]));
        var bn = net.Op("BatchNormalization", [conv, net.Random("gamma", [4], 0.5f, 1f), net.Random("beta", [4], 0.3f),
            net.Random("mean", [4], 0.2f), net.Random("var", [4], 0.3f, 0.6f)], Attribute.FromFloat("epsilon", 1e-3f));
        net.Output(net.Op("Relu", [bn]));
        if (shareOutput)
            net.Output(conv);
        return net;
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void FoldsAndMatchesInOrt(bool withBias)
    {
        var net = ConvBn(withBias);
        var input = ("x", new long[] { 1, 3, 8, 8 }, Net.RandomData(192, 5));
        var before = Net.Run(net.Model, input);
        var result = new FoldBatchNormPass().Run(net.Model);
        new DeadNodeEliminationPass().Run(net.Model);
        Assert.True(result.Modified);
        Assert.Equal(0, net.Count("BatchNormalization"));
        Assert.Equal(3, net.Graph.Nodes.Single(n => n.OpType == "Conv").Inputs.Count);
        Net.AssertClose(before[0], Net.Run(net.Model, input)[0], 1e-5f);
        Assert.Equal(2, net.Graph.Initializers.Count);
    }

    [Fact]
    public void LeavesConvWithOtherUsers()
    {
        var net = ConvBn(true, shareOutput: true);
        Assert.False(new FoldBatchNormPass().Run(net.Model).Modified);
        Assert.Equal(1, net.Count("BatchNormalization"));
    }
}

public class FoldWeightTransformsPassTests
{
    [Fact]
    public void TransposedWeightBecomesConstant()
    {
        var net = new Net();
        var x = net.Input("x", 2, 6);
        var wt = net.Random("w_t", [5, 6]);
        var w = net.Op("Transpose", [wt], Attribute.FromInts("perm", [1, 0]));
        var r = net.Op("Reshape", [net.Random("b", [5]), net.Ints("shape", 1, -1)]);
        net.Output(net.Op("Add", [net.Op("MatMul", [x, w]), r]));
        var input = ("x", new long[] { 2, 6 }, Net.RandomData(12, 3));
        var before = Net.Run(net.Model, input);
        var result = new FoldWeightTransformsPass().Run(net.Model);
        new DeadNodeEliminationPass().Run(net.Model);
        Assert.Equal(2, result.Rewrites);
        Assert.Equal(["MatMul", "Add"], net.Graph.Nodes.Select(n => n.OpType));
        var matmul = net.Graph.Nodes[0];
        Assert.True(matmul.Inputs[1]!.IsInitializer);
        Assert.Equal([6L, 5L], matmul.Inputs[1]!.Initializer!.Dims);
        Net.AssertClose(before[0], Net.Run(net.Model, input)[0], 1e-6f);
    }

    [Fact]
    public void ConstantNodeAndUnsqueezeFold()
    {
        var net = new Net();
        var x = net.Input("x", 3, 4);
        var c = net.Op("Constant", [], Attribute.FromTensor("value", Tensor.FromFloats("c", [4], [1, 2, 3, 4])));
        var u = net.Op("Unsqueeze", [c, net.Ints("axes", 0)]);
        net.Output(net.Op("Mul", [x, u]));
        var input = ("x", new long[] { 3, 4 }, Net.RandomData(12, 4));
        var before = Net.Run(net.Model, input);
        var result = new PassManager([new FoldWeightTransformsPass(), new DeadNodeEliminationPass()]).Run(net.Model);
        Assert.Equal(["Mul"], net.Graph.Nodes.Select(n => n.OpType));
        Net.AssertClose(before[0], Net.Run(net.Model, input)[0], 0f);
    }

    [Fact]
    public void ActivationTransposeIsLeftAlone()
    {
        var net = new Net();
        var x = net.Input("x", 2, 3);
        net.Output(net.Op("Transpose", [x], Attribute.FromInts("perm", [1, 0])));
        Assert.False(new FoldWeightTransformsPass().Run(net.Model).Modified);
    }
}

public class RemoveIdentityAndDropoutPassTests
{
    [Fact]
    public void IdentityChainRemovedAndOutputNameKept()
    {
        var net = new Net();
        var x = net.Input("x", 2, 3);
        var relu = net.Op("Relu", [x]);
        var id1 = net.Op("Identity", [relu]);
        var id2 = net.Op("Identity", [net.Op("Neg", [id1])]);
        id2.Name = "result";
        net.Output(id2);
        var input = ("x", new long[] { 2, 3 }, Net.RandomData(6, 1));
        var before = Net.Run(net.Model, input);
        var result = new RemoveIdentityPass().Run(net.Model);
        Assert.Equal(2, result.Rewrites);
        Assert.Equal(0, net.Count("Identity"));
        Assert.Equal("result", net.Graph.Outputs[0].Name);
        Net.AssertClose(before[0], Net.Run(net.Model, input)[0], 0f);
    }

    [Fact]
    public void IdentityOfGraphInputToOutputIsKept()
    {
        var net = new Net();
        var x = net.Input("x", 2);
        net.Output(net.Op("Identity", [x]));
        Assert.False(new RemoveIdentityPass().Run(net.Model).Modified);
    }

    [Fact]
    public void TrainingModeDropoutRemoved()
    {
        var net = new Net(opset: 13);
        var x = net.Input("x", 4, 4);
        var ratio = net.Init("ratio", [], [0f]);
        var mode = net.Graph.AddInitializer("mode", Tensor.FromRaw("mode", DataType.Bool, [], new byte[] { 1 }));
        var drop = net.Op("Dropout", [x, ratio, mode]);
        net.Output(net.Op("Relu", [drop]));
        var input = ("x", new long[] { 4, 4 }, Net.RandomData(16, 2));
        var before = Net.Run(net.Model, input);
        Assert.True(new RemoveDropoutPass().Run(net.Model).Modified);
        new DeadNodeEliminationPass().Run(net.Model);
        Assert.Equal(["Relu"], net.Graph.Nodes.Select(n => n.OpType));
        Assert.Empty(net.Graph.Initializers);
        Net.AssertClose(before[0], Net.Run(net.Model, input)[0], 0f);
    }

    [Fact]
    public void DropoutWithUsedMaskKept()
    {
        var net = new Net();
        var x = net.Input("x", 4);
        var outs = net.OpMulti("Dropout", [x], 2);
        net.Output(outs[0]);
        outs[1].Type = new TensorType(DataType.Bool, null);
        net.Graph.AddOutput(outs[1]);
        Assert.False(new RemoveDropoutPass().Run(net.Model).Modified);
    }
}

public class DeadNodeEliminationPassTests
{
    [Fact]
    public void RemovesDeadChainsAndInitializers()
    {
        var net = new Net();
        var x = net.Input("x", 3);
        var dead = net.Op("Mul", [net.Op("Exp", [x]), net.Random("unused", [3])]);
        _ = dead;
        net.Output(net.Op("Relu", [x]));
        var result = new DeadNodeEliminationPass().Run(net.Model);
        Assert.Equal(3, result.Rewrites);
        Assert.Equal(["Relu"], net.Graph.Nodes.Select(n => n.OpType));
        Assert.Empty(net.Graph.Initializers);
        Assert.False(new DeadNodeEliminationPass().Run(net.Model).Modified);
    }
}

public class PassManagerTests
{
    private sealed class Failing(Exception error) : IPass
    {
        public string Name => "failing";
        public PassResult Run(Model model) => throw error;
    }

    [Fact]
    public void NamesPassesAlreadyRun()
    {
        var net = new Net();
        net.Output(net.Op("Relu", [net.Input("x", 2)]));
        var manager = new PassManager([new RemoveIdentityPass(), new DeadNodeEliminationPass(), new Failing(new InvalidOperationException("boom"))]);
        var error = Assert.Throws<PassFailedException>(() => manager.Run(net.Model));
        Assert.Equal("pass 'failing' failed after [remove-identity, dead-node-elimination]: boom", error.Message);
        var user = Assert.Throws<CompileException>(() =>
            new PassManager([new RemoveIdentityPass(), new Failing(new CompileException("bad model"))]).Run(net.Model));
        Assert.Contains("after [remove-identity]", user.Message);
    }

    [Fact]
    public void RepeatsUntilNothingChanges()
    {
        var net = new Net();
        var x = net.Input("x", 2);
        net.Output(net.Op("Relu", [net.Op("Identity", [net.Op("Identity", [x])])]));
        var records = new PassManager([new RemoveIdentityPass(), new DeadNodeEliminationPass()]).Run(net.Model);
        Assert.Equal(4, records.Count); // one round that changes, one that confirms
        Assert.True(records[0].Result.Modified);
        Assert.All(records.Skip(2), r => Assert.False(r.Result.Modified));
    }
}
