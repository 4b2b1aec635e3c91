using OnnxQuant.Frontend;
using OnnxQuant.Passes.Canonicalize;
using OnnxQuant.Passes.Pipeline;
using OnnxQuant.Passes.Units;
using Attribute = OnnxQuant.Frontend.Attribute;

namespace OnnxQuant.Passes.Tests.Canonicalize;

/// <summary>
/// Layers that read learned constants only (a DETR decoder's first self-attention over its queries, a factorized
/// weight) become the constants they compute, with the float model's outputs, and are listed as left float.
/// </summary>
public sealed class InputIndependentLayersPassTests
{
    private const int Queries = 6, Width = 16, Tokens = 10;
    private static readonly long[] MemoryShape = [1, Tokens, Width];
    private static readonly float[] Memory = Net.RandomData(Tokens * Width, 21);

    private static Value Linear(Net net, Value x, string name, int inputs, int outputs)
    {
        var y = net.Op("MatMul", [x, net.Random(name + ".weight", [inputs, outputs], 0.4f)]);
        y.Producer!.Name = name;
        return net.Op("Add", [y, net.Random(name + ".bias", [outputs], 0.1f)]);
    }

    private static Value Attention(Net net, Value q, Value k, Value v)
    {
        var scores = net.Op("MatMul", [q, net.Op("Transpose", [k], Attribute.FromInts("perm", [0, 2, 1]))]);
        return net.Op("MatMul", [net.Op("Softmax", [scores], Attribute.FromInt("axis", -1)), v]);
    }

    /// <summary>A DETR decoder layer: self-attention over learned queries (the target is zero, so it reads the queries
    /// alone), then cross-attention from its output to the image memory, then a feed-forward layer.</summary>
    private static Net DecoderLayer()
    {
        var net = new Net(seed: 31);
        var memory = net.Input("memory", MemoryShape);
        var queries = net.Random("query_embed", [1, Queries, Width], 1f);
        var self = Attention(net, Linear(net, queries, "self.q", Width, Width), Linear(net, queries, "self.k", Width, Width),
            Linear(net, queries, "self.v", Width, Width));
        var target = net.Op("LayerNormalization", [Linear(net, self, "self.out", Width, Width), net.Random("norm.scale", [Width], 0.2f, 1f)],
            Attribute.FromInt("axis", -1));
        var cross = Attention(net, Linear(net, net.Op("Add", [target, queries]), "cross.q", Width, Width),
            Linear(net, memory, "cross.k", Width, Width), Linear(net, memory, "cross.v", Width, Width));
        var output = Linear(net, net.Op("Relu", [Linear(net, net.Op("Add", [cross, target]), "ffn.1", Width, 2 * Width)]), "ffn.2", 2 * Width, Width);
        output.Name = "decoded";
        net.Output(output);
        return net;
    }

    private static float[] Run(Model model) => Net.Run(model, ("memory", MemoryShape, Memory))[0];

    [Fact]
    public void ADecoderLayersSelfAttentionOverLearnedQueriesBecomesConstantsWithTheSameOutputs()
    {
        var net = DecoderLayer();
        var before = Run(net.Model);
        var records = new PassManager(Canonicalization.Passes()).Run(net.Model);

        var removed = Canonicalization.RemovedLayers(records);
        // The layers with a weight, in graph order; the attention products between them are no layers.
        Assert.Equal(["self.q", "self.k", "self.v", "self.out", "cross.q"], removed.Select(r => r.Name));
        Assert.All(removed, r => Assert.Contains("same value for every input", r.Reason));
        // What reads the image memory is left: the cross-attention's key and value, its two products, the FFN.
        var matMuls = net.Graph.Nodes.Where(n => n.OpType == "MatMul").Select(n => n.Name).ToList();
        Assert.Equal(6, matMuls.Count);
        Assert.DoesNotContain("self.q", matMuls);
        // The cross-attention's queries are one initializer now.
        var crossScores = net.Graph.Nodes.First(n => n.OpType == "MatMul" && n.Inputs[1]?.Producer?.OpType == "Transpose");
        Assert.True(crossScores.Inputs[0]!.IsInitializer);
        // Float rounding only: ONNX Runtime computed the folded values from the same graph.
        Net.AssertClose(before, Run(net.Model), 1e-5f);

        // The folded layers are listed as left float, before the layers discovery skips itself.
        var discovery = UnitDiscovery.Discover(net.Model, ["decoded"], new UnitOptions(), removed);
        Assert.Equal(["self.q", "self.k", "self.v", "self.out", "cross.q"], discovery.Skipped.Take(5).Select(s => s.Name));
        Assert.Equal(["cross.k", "cross.v", "ffn.1", "ffn.2"], discovery.Layers.Select(l => l.Name));
    }

    [Fact]
    public void InspectListsTheFoldedLayersAmongThoseKeptFloat()
    {
        var preview = UnitDiscovery.Preview(DecoderLayer().Model, out var canonicalization);
        Assert.Contains("fold-input-independent-layers", canonicalization);
        Assert.Equal(5, preview.Skipped.Count(s => s.Reason.Contains("folded into a constant")));
        Assert.Equal(4, preview.Units.Count);
    }

    [Fact]
    public void AContinuousPositionBiasMlpOverAFixedCoordinateTableBecomesTheBiasItComputes()
    {
        // SwinV2: an MLP over the log-spaced relative coordinates of a window, gathered by relative position index,
        // 16 * sigmoid, added to every window's attention logits.
        const int heads = 2, window = 4, table = 2 * window - 1;
        var net = new Net(seed: 36);
        var logits = net.Input("memory", [1, heads, window * window, window * window]);
        var coordinates = net.Random("relative_coords_table", [1, table, table, 2], 1f);
        var hidden = net.Op("Relu", [Linear(net, coordinates, "cpb_mlp.0", 2, 16)]);
        var bias = net.Op("MatMul", [hidden, net.Random("cpb_mlp.2.weight", [16, heads], 0.4f)]);
        bias.Producer!.Name = "cpb_mlp.2";
        var random = new Random(37);
        var index = Enumerable.Range(0, window * window * window * window).Select(_ => (long)random.Next(table * table)).ToArray();
        var gathered = net.Op("Gather", [net.Op("Reshape", [bias, net.Ints("flat", -1, heads)]), net.Ints("relative_position_index", index)]);
        var perHead = net.Op("Transpose", [net.Op("Reshape", [gathered, net.Ints("square", window * window, window * window, heads)])],
            Attribute.FromInts("perm", [2, 0, 1]));
        var scaled = net.Op("Mul", [net.Op("Sigmoid", [perHead]), net.Init("sixteen", [], [16f])]);
        var y = net.Op("Softmax", [net.Op("Add", [logits, scaled])], Attribute.FromInt("axis", -1));
        y.Name = "decoded";
        net.Output(y);
        long[] shape = [1, heads, window * window, window * window];
        var data = Net.RandomData(heads * window * window * window * window, 38);
        var before = Net.Run(net.Model, ("memory", shape, data))[0];
        var records = new PassManager(Canonicalization.Passes()).Run(net.Model);

        Assert.Equal(["cpb_mlp.0", "cpb_mlp.2"], Canonicalization.RemovedLayers(records).Select(r => r.Name));
        Assert.Equal(["Add", "Softmax"], net.Graph.Nodes.Select(n => n.OpType));
        Net.AssertClose(before, Net.Run(net.Model, ("memory", shape, data))[0], 1e-6f);
    }

    [Fact]
    public void AFactorizedWeightBecomesTheWeightOfTheLayerThatReadsIt()
    {
        // x @ (A @ B): a low-rank factorization kept as two learned factors; the product is the layer's weight.
        var net = new Net(seed: 32);
        var x = net.Input("memory", MemoryShape);
        var weight = net.Op("MatMul", [net.Random("lora.a", [Width, 4], 0.5f), net.Random("lora.b", [4, Width], 0.5f)]);
        weight.Producer!.Name = "lora";
        var y = net.Op("MatMul", [x, weight]);
        y.Producer!.Name = "proj";
        y.Name = "decoded";
        net.Output(y);
        var before = Run(net.Model);
        var records = new PassManager(Canonicalization.Passes()).Run(net.Model);

        Assert.Equal(["lora"], Canonicalization.RemovedLayers(records).Select(r => r.Name));
        Assert.Equal(["proj"], net.Graph.Nodes.Select(n => n.Name));
        Assert.True(net.Graph.Nodes[0].Inputs[1]!.IsInitializer);
        Net.AssertClose(before, Run(net.Model), 1e-6f);
        Assert.Equal(["proj"], UnitDiscovery.Discover(net.Model, ["decoded"], new UnitOptions()).Layers.Select(l => l.Name));
    }

    [Fact]
    public void AWeightAlsoAppliedToTheInputStaysALayerAtEveryCall()
    {
        // One module called over learned anchors and again over refined ones (DAB-DETR's reference-point MLP): as in
        // training, its weight stays one quantized weight at every call, so neither call is folded, nor what follows
        // from the constant call.
        var net = new Net(seed: 35);
        var memory = net.Input("memory", MemoryShape);
        var weight = net.Random("mlp.weight", [Width, Width], 0.4f);
        var first = net.Op("MatMul", [net.Op("Sin", [net.Random("anchors", [1, Queries, Width], 1f)]), weight]);
        first.Producer!.Name = "mlp";
        var q = Linear(net, first, "q", Width, Width);
        var scores = net.Op("MatMul", [q, net.Op("Transpose", [memory], Attribute.FromInts("perm", [0, 2, 1]))]);
        var refined = net.Op("MatMul", [net.Op("Softmax", [scores], Attribute.FromInt("axis", -1)), memory]);
        var second = net.Op("MatMul", [refined, weight]);
        second.Producer!.Name = "mlp_1";
        second.Name = "decoded";
        net.Output(second);
        var records = new PassManager(Canonicalization.Passes()).Run(net.Model);
        Assert.Empty(Canonicalization.RemovedLayers(records));
        var discovery = UnitDiscovery.Discover(net.Model, ["decoded"], new UnitOptions());
        Assert.Equal(["mlp", "q", "mlp_1"], discovery.Layers.Select(l => l.Name));
        Assert.Equal(["mlp", "mlp_1"], Assert.Single(discovery.Ties).Layers.Select(l => l.Name));
    }

    [Fact]
    public void AConstantLayerChainWhoseResultIsFarLargerThanItsSourcesStaysComputed()
    {
        // Learned queries through a layer, then tiled 2,048 times before they meet the input (over 128 K elements):
        // folding would store 2,048 copies.
        var net = new Net(seed: 33);
        var x = net.Input("memory", [2048, Queries, Width]);
        var q = Linear(net, net.Random("query_embed", [1, Queries, Width], 1f), "q", Width, Width);
        var tiled = net.Op("Tile", [q, net.Ints("repeats", 2048, 1, 1)]);
        var y = net.Op("Add", [x, tiled]);
        y.Name = "decoded";
        net.Output(y);
        Assert.False(new InputIndependentLayersPass().Run(net.Model).Modified);
        Assert.Equal(1, net.Count("MatMul"));
    }

    [Fact]
    public void AGraphOutputComputedFromConstantsKeepsItsProducer()
    {
        // An output that reads no input (a model exposing its learned anchors through a layer) keeps its name and node.
        var net = new Net(seed: 34);
        var x = net.Input("memory", MemoryShape);
        var anchors = Linear(net, net.Random("anchor_embed", [Queries, Width], 1f), "anchors", Width, 4);
        anchors.Name = "anchors";
        net.Output(anchors);
        var y = net.Op("Relu", [x]);
        y.Name = "decoded";
        net.Output(y);
        Assert.False(new InputIndependentLayersPass().Run(net.Model).Modified);
        Assert.Equal(1, net.Count("MatMul"));
    }
}
