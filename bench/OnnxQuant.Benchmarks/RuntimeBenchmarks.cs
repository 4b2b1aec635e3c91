using BenchmarkDotNet.Attributes;
using OnnxQuant.Frontend;
using OnnxQuant.Runtime;

namespace OnnxQuant.Benchmarks;

/// <summary>
/// What one run through the ONNX Runtime binding costs beyond the kernel: inputs pinned and wrapped, outputs copied
/// out, values released. An Add of two [1, n] float tensors, so the kernel itself is negligible for small n.
/// </summary>
[MemoryDiagnoser]
public class RuntimeBenchmarks
{
    private InferenceSession _session = null!;
    private NamedTensor[] _feed = [];

    [Params(16, 65536)]
    public int Elements { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        var g = new Graph("add");
        var type = new TensorType(DataType.Float, Shape.Of(1, Elements));
        var x = new Value("x", type);
        var y = new Value("y", type);
        g.AddInput(x);
        g.AddInput(y);
        var add = new Node("Add", [x, y], ["z"], name: "add");
        g.AddNode(add);
        add.Outputs[0].Type = type;
        g.AddOutput(add.Outputs[0]);
        var model = new Model(g) { IrVersion = 8 };
        model.OpsetImports.Default = 17;
        _session = InferenceSession.Create(ModelIO.ToBytes(model), new OnnxQuant.Runtime.SessionOptions { IntraOpThreads = 1 });
        var data = TensorData.FromFloats(Enumerable.Range(0, Elements).Select(i => i * 0.5f).ToArray(), [1, Elements]);
        _feed = [new NamedTensor("x", data), new NamedTensor("y", data)];
    }

    [GlobalCleanup]
    public void Cleanup() => _session.Dispose();

    [Benchmark]
    public float Run() => _session.Run(_feed)[0].Data.GetArray<float>()[0];
}
