using OnnxQuant.Frontend;
using OnnxQuant.Runtime;
using Attribute = OnnxQuant.Frontend.Attribute;

namespace OnnxQuant.Passes.Tests;

/// <summary>Builds small ONNX graphs in code for pass tests, and runs them in ONNX Runtime.</summary>
internal sealed class Net
{
    private readonly Random _random;

    public Net(long opset = 17, int seed = 1)
    {
        Graph = new Graph("test");
        Model = new Model(Graph) { IrVersion = 8 };
        Model.OpsetImports[""] = opset;
        _random = new Random(seed);
    }

    public Model Model { get; }
    public Graph Graph { get; }

    public Value Input(string name, params long[] dims)
    {
        var v = new Value(name, new TensorType(DataType.Float, Shape.Of(dims)));
        Graph.AddInput(v);
        return v;
    }

    /// <summary>An input whose first dimension is symbolic ("N").</summary>
    public Value BatchInput(string name, params long[] restDims)
    {
        var v = new Value(name, new TensorType(DataType.Float, new Shape(new[] { Dim.Symbolic("N") }.Concat(restDims.Select(Dim.Of)))));
        Graph.AddInput(v);
        return v;
    }

    public Value Init(string name, long[] dims, float[] data) =>
        Graph.AddInitializer(Graph.UniqueName(name), Tensor.FromFloats(name, dims, data));

    public Value Ints(string name, params long[] data) =>
        Graph.AddInitializer(Graph.UniqueName(name), Tensor.FromInt64s(name, [data.Length], data));

    public Value Random(string name, long[] dims, float scale = 1f, float offset = 0f)
    {
        var n = (int)dims.Aggregate(1L, (a, b) => a * b);
        var data = new float[n];
        for (var i = 0; i < n; i++)
            data[i] = offset + scale * (float)(_random.NextDouble() * 2 - 1);
        return Init(name, dims, data);
    }

    public Value Op(string op, Value?[] inputs, params Attribute[] attributes) => OpMulti(op, inputs, 1, attributes)[0];

    public Value[] OpMulti(string op, Value?[] inputs, int outputs, params Attribute[] attributes)
    {
        var names = Enumerable.Range(0, outputs).Select(i => Graph.UniqueName($"{op.ToLowerInvariant()}_out")).ToArray();
        var node = new Node(op, inputs, names, name: Graph.UniqueName(op.ToLowerInvariant()), attributes: attributes);
        Graph.AddNode(node);
        return node.Outputs.ToArray();
    }

    public void Output(Value v)
    {
        v.Type ??= new TensorType(DataType.Float, null);
        Graph.AddOutput(v);
    }

    public static float[] RandomData(int n, int seed, float scale = 1f)
    {
        var r = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => scale * (float)(r.NextDouble() * 2 - 1)).ToArray();
    }

    /// <summary>Runs <paramref name="model"/> in ONNX Runtime (optimizations off) and returns every output as floats.</summary>
    public static float[][] Run(Model model, params (string Name, long[] Shape, float[] Data)[] inputs)
    {
        using var session = InferenceSession.Create(ModelIO.ToBytes(model), SessionOptions.Calibration);
        var outputs = session.Run(inputs.Select(i => new NamedTensor(i.Name, TensorData.FromFloats(i.Data, i.Shape))).ToList());
        return outputs.Select(o => o.Data.ToFloats()).ToArray();
    }

    public static void AssertClose(float[] expected, float[] actual, float tolerance)
    {
        Assert.Equal(expected.Length, actual.Length);
        var scale = Math.Max(1f, expected.Max(MathF.Abs));
        for (var i = 0; i < expected.Length; i++)
            Assert.True(MathF.Abs(expected[i] - actual[i]) <= tolerance * scale,
                $"element {i}: expected {expected[i]}, got {actual[i]} (tolerance {tolerance} x {scale})");
    }

    public int Count(string opType) => Graph.Nodes.Count(n => n.OpType == opType);
}
