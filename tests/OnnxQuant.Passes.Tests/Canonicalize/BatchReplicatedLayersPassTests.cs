using OnnxQuant.Frontend;
using OnnxQuant.Passes.Canonicalize;
using OnnxQuant.Passes.Pipeline;
using OnnxQuant.Runtime;
using Attribute = OnnxQuant.Frontend.Attribute;

namespace OnnxQuant.Passes.Tests.Canonicalize;

/// <summary>
/// A DETR export with a symbolic batch repeats its learned queries to the input's batch; the layers over them compute
/// one batch-1 value repeated, which becomes a constant tiled to the running batch, with the float model's outputs at
/// every batch size.
/// </summary>
public sealed class BatchReplicatedLayersPassTests
{
    private const int Queries = 4, Width = 16, Tokens = 8;

    /// <summary>
    /// memory [N, 8, 16]; queries [1, 4, 16] repeated to N (Tile by multiples from the memory's Shape), a zero target
    /// (ConstantOfShape of their shape) added to them, a projection ("self.q", the layer over the batch size alone),
    /// then cross-attention to the memory and an output projection ("out"). <paramref name="scaleByBatch"/> multiplies
    /// the queries by the batch size first (a value that depends on the batch but is no repetition of batch 1);
    /// <paramref name="sharedWithMemory"/> applies the projection's weight to the memory too.
    /// </summary>
    private static Net Decoder(bool scaleByBatch = false, bool sharedWithMemory = false)
    {
        var net = new Net(seed: 17);
        var memory = net.BatchInput("memory", Tokens, Width);
        var batch = net.Op("Slice", [net.Op("Shape", [memory]), net.Ints("start", 0), net.Ints("end", 1)]);
        var multiples = net.Op("Concat", [batch, net.Ints("ones", 1, 1)], Attribute.FromInt("axis", 0));
        Value queries = net.Op("Tile", [net.Random("query_embed", [1, Queries, Width]), multiples]);
        if (scaleByBatch)
            queries = net.Op("Mul", [queries, net.Op("Cast", [batch], Attribute.FromInt("to", (long)DataType.Float))]);
        var target = net.Op("ConstantOfShape", [net.Op("Shape", [queries])]);
        var weight = net.Random("self.q.weight", [Width, Width], 0.4f);
        var projected = net.Op("MatMul", [net.Op("Add", [target, queries]), weight]);
        projected.Producer!.Name = "self.q";
        var keys = sharedWithMemory ? net.Op("MatMul", [memory, weight]) : memory;
        var scores = net.Op("MatMul", [projected, net.Op("Transpose", [keys], Attribute.FromInts("perm", [0, 2, 1]))]);
        var attended = net.Op("MatMul", [net.Op("Softmax", [scores], Attribute.FromInt("axis", -1)), memory]);
        var output = net.Op("MatMul", [attended, net.Random("out.weight", [Width, Width], 0.4f)]);
        output.Producer!.Name = "out";
        output.Name = "decoded";
        net.Output(output);
        return net;
    }

    private static float[] Run(Model model, int batch) =>
        Net.Run(model, ("memory", [batch, Tokens, Width], Net.RandomData(batch * Tokens * Width, 5 + batch)))[0];

    [Fact]
    public void TheLayerOverRepeatedQueriesBecomesItsBatchOneValueTiledWithTheSameOutputsAtEveryBatch()
    {
        var net = Decoder();
        var before = new[] { 1, 3 }.Select(b => Run(net.Model, b)).ToArray();
        var records = new PassManager(Canonicalization.Passes()).Run(net.Model);

        var removed = Assert.Single(Canonicalization.RemovedLayers(records));
        Assert.Equal("self.q", removed.Name);
        Assert.Contains("batch-1 value", removed.Reason);
        Assert.DoesNotContain(net.Graph.Nodes, n => n.Name == "self.q");
        Assert.Contains(net.Graph.Nodes, n => n.Name == "out");
        var tile = Assert.Single(net.Graph.Nodes, n => n.OpType == "Tile");
        Assert.Equal([1L, Queries, Width], tile.Inputs[0]!.Initializer!.Dims);
        foreach (var (batch, i) in new[] { (1, 0), (3, 1) })
            Net.AssertClose(before[i], Run(net.Model, batch), 1e-5f);
        // Once folded, a second run finds nothing more.
        Assert.False(new BatchReplicatedLayersPass().Run(net.Model).Modified);
    }

    [Fact]
    public void AValueThatDependsOnTheBatchSizeOtherwiseThanByRepetitionStaysComputed()
    {
        var net = Decoder(scaleByBatch: true);
        var before = Run(net.Model, 3);
        Assert.False(new BatchReplicatedLayersPass().Run(net.Model).Modified);
        Assert.Contains(net.Graph.Nodes, n => n.Name == "self.q");
        Net.AssertClose(before, Run(net.Model, 3), 1e-6f);
    }

    [Fact]
    public void AWeightAlsoAppliedToTheInputStaysALayer()
    {
        var net = Decoder(sharedWithMemory: true);
        Assert.False(new BatchReplicatedLayersPass().Run(net.Model).Modified);
        Assert.Contains(net.Graph.Nodes, n => n.Name == "self.q");
    }

    [Fact]
    public void TheShapeOfAValueTheDataSizesIsNoBatchSize()
    {
        // Zeros shaped like the positive scores (NonZero), projected: their count is the data's, whatever the batch.
        var net = new Net(seed: 9);
        var memory = net.BatchInput("memory", Tokens, Width);
        var positive = net.Op("NonZero", [net.Op("Greater", [memory, net.Init("zero", [], [0f])])]);
        var zeros = net.Op("ConstantOfShape", [net.Op("Shape", [net.Op("Transpose", [positive], Attribute.FromInts("perm", [1, 0]))])]);
        var projected = net.Op("MatMul", [net.Op("Cast", [zeros], Attribute.FromInt("to", (long)DataType.Float)), net.Random("w", [3, Width])]);
        net.Output(net.Op("ReduceSum", [net.Op("Add", [net.Op("ReduceSum", [memory, net.Ints("axes", 1)], Attribute.FromInt("keepdims", 0)),
            net.Op("ReduceSum", [projected, net.Ints("axes0", 0)], Attribute.FromInt("keepdims", 0))]), net.Ints("all", 0)], Attribute.FromInt("keepdims", 0)));
        Assert.False(new BatchReplicatedLayersPass().Run(net.Model).Modified);
    }

    [Fact]
    public void AFixedBatchModelIsLeftToTheConstantFolds()
    {
        var net = new Net(seed: 3);
        var x = net.Input("x", 1, Tokens, Width);
        var queries = net.Op("Expand", [net.Random("q", [1, Queries, Width]), net.Op("Shape", [net.Op("ReduceSum", [x, net.Ints("axes", 1)],
            Attribute.FromInt("keepdims", 1))])]);
        net.Output(net.Op("MatMul", [net.Op("MatMul", [queries, net.Random("w", [Width, Width])]), net.Op("Transpose", [x], Attribute.FromInts("perm", [0, 2, 1]))]));
        Assert.False(new BatchReplicatedLayersPass().Run(net.Model).Modified);
    }
}
