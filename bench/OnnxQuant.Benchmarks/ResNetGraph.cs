using OnnxQuant.Frontend;
using Attribute = OnnxQuant.Frontend.Attribute;

namespace OnnxQuant.Benchmarks;

/// <summary>
/// A ResNet-18-shaped network built in code (batch-norm already folded into the convolutions' biases): 7x7/2 stem,
/// 3x3/2 max pool, four stages of two basic blocks (64, 128, 256, 512 channels; 1x1/2 projection on the skip where the
/// shape changes), global average pool, flatten and a 1000-way Gemm. Weights are seeded He-normal, the second conv of
/// every block scaled by 0.5 so activations stay in range over the residual sums; the values do not matter for
/// latency.
/// </summary>
public static class ResNetGraph
{
    public static Model Build(int resolution = 224, int seed = 18)
    {
        var graph = new Graph("resnet18");
        var model = new Model(graph) { IrVersion = 8 };
        model.OpsetImports[""] = 17;
        var random = new Random(seed);
        var counter = 0;

        Value Weight(string name, long[] dims, float std)
        {
            var n = (int)dims.Aggregate(1L, (a, b) => a * b);
            var data = new float[n];
            for (var i = 0; i < n; i++)
            {
                // Box-Muller: a normal sample from two uniforms.
                var u = 1 - random.NextDouble();
                var v = random.NextDouble();
                data[i] = (float)(std * Math.Sqrt(-2 * Math.Log(u)) * Math.Cos(2 * Math.PI * v));
            }
            return graph.AddInitializer(graph.UniqueName(name), Tensor.FromFloats(name, dims, data));
        }

        Value Op(string op, Value?[] inputs, params Attribute[] attributes)
        {
            var node = new Node(op, inputs, [graph.UniqueName($"{op.ToLowerInvariant()}_{counter}_out")], name: $"{op.ToLowerInvariant()}_{counter++}", attributes: attributes);
            graph.AddNode(node);
            return node.Outputs[0];
        }

        Value Conv(Value x, long cin, long cout, int k, int stride, float gain = 1f)
        {
            var w = Weight($"conv{counter}.weight", [cout, cin, k, k], gain * (float)Math.Sqrt(2.0 / (cin * k * k)));
            var b = Weight($"conv{counter}.bias", [cout], 0.05f);
            var pad = k / 2;
            return Op("Conv", [x, w, b], Attribute.FromInts("kernel_shape", [k, k]), Attribute.FromInts("pads", [pad, pad, pad, pad]),
                Attribute.FromInts("strides", [stride, stride]));
        }

        var input = new Value("images", new TensorType(DataType.Float, Shape.Of(1, 3, resolution, resolution)));
        graph.AddInput(input);
        var x = Op("Relu", [Conv(input, 3, 64, 7, 2)]);
        x = Op("MaxPool", [x], Attribute.FromInts("kernel_shape", [3, 3]), Attribute.FromInts("pads", [1, 1, 1, 1]), Attribute.FromInts("strides", [2, 2]));
        long channels = 64;
        foreach (var (width, stride) in new[] { (64L, 1), (128L, 2), (256L, 2), (512L, 2) })
            for (var block = 0; block < 2; block++)
            {
                var s = block == 0 ? stride : 1;
                var y = Op("Relu", [Conv(x, channels, width, 3, s)]);
                y = Conv(y, width, width, 3, 1, gain: 0.5f);
                var skip = s != 1 || channels != width ? Conv(x, channels, width, 1, s) : x;
                x = Op("Relu", [Op("Add", [y, skip])]);
                channels = width;
            }
        var pooled = Op("GlobalAveragePool", [x]);
        var flat = Op("Flatten", [pooled], Attribute.FromInt("axis", 1));
        var logits = Op("Gemm", [flat, Weight("fc.weight", [1000, channels], (float)Math.Sqrt(1.0 / channels)), Weight("fc.bias", [1000], 0.01f)],
            Attribute.FromInt("transB", 1));
        logits.Name = "logits";
        logits.Type = new TensorType(DataType.Float, Shape.Of(1, 1000));
        graph.AddOutput(logits);
        return model;
    }

    /// <summary>Seeded standard-normal images [samples, 3, r, r] (stand-ins for normalized photos).</summary>
    public static float[] Images(int samples, int resolution, int seed = 5)
    {
        var random = new Random(seed);
        var data = new float[samples * 3 * resolution * resolution];
        for (var i = 0; i < data.Length; i++)
        {
            var u = 1 - random.NextDouble();
            var v = random.NextDouble();
            data[i] = (float)(Math.Sqrt(-2 * Math.Log(u)) * Math.Cos(2 * Math.PI * v));
        }
        return data;
    }
}
