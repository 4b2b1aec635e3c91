using OnnxQuant.Frontend;
using Attribute = OnnxQuant.Frontend.Attribute;

namespace OnnxQuant.Passes.Tests.Curves;

/// <summary>One quantizable layer of each kind the closed forms handle, fed by graph input "x".</summary>
internal static class SingleLayerNets
{
    /// <param name="kind">conv (padded asymmetrically, strided and dilated), grouped-conv, conv-same-lower (auto_pad,
    /// strided), conv1d (padded asymmetrically, strided and dilated), conv3d (grouped, padded, strided), matmul or gemm
    /// (transB, alpha), deconv (ConvTranspose 2x2 stride 2 with a bias) or deconv1d (kernel 3, stride 4: taps that leave
    /// gaps).</param>
    public static (Model Model, long[] InputShape) Build(string kind, int seed)
    {
        var net = new Net(seed: seed);
        long[] shape;
        switch (kind)
        {
            case "conv":
                shape = [1, 4, 10, 10];
                net.Output(net.Op("Conv", [net.Input("x", shape), net.Random("w", [6, 4, 3, 3], 0.3f), net.Random("b", [6], 0.1f)],
                    Attribute.FromInts("pads", [1, 0, 1, 2]), Attribute.FromInts("strides", [2, 1]), Attribute.FromInts("dilations", [1, 2])));
                break;
            case "grouped-conv":
                shape = [1, 4, 9, 9];
                net.Output(net.Op("Conv", [net.Input("x", shape), net.Random("w", [8, 2, 3, 3], 0.3f)], Attribute.FromInt("group", 2),
                    Attribute.FromInts("pads", [1, 1, 1, 1]), Attribute.FromInts("strides", [2, 2])));
                break;
            case "conv-same-lower":
                shape = [1, 3, 9, 8];
                net.Output(net.Op("Conv", [net.Input("x", shape), net.Random("w", [5, 3, 4, 3], 0.3f)],
                    Attribute.FromString("auto_pad", "SAME_LOWER"), Attribute.FromInts("strides", [2, 3])));
                break;
            case "conv1d":
                shape = [1, 4, 40];
                net.Output(net.Op("Conv", [net.Input("x", shape), net.Random("w", [6, 4, 5], 0.3f), net.Random("b", [6], 0.1f)],
                    Attribute.FromInts("pads", [3, 1]), Attribute.FromInts("strides", [2]), Attribute.FromInts("dilations", [2])));
                break;
            case "conv3d":
                shape = [1, 4, 5, 6, 7];
                net.Output(net.Op("Conv", [net.Input("x", shape), net.Random("w", [6, 2, 3, 3, 2], 0.3f)], Attribute.FromInt("group", 2),
                    Attribute.FromInts("pads", [1, 0, 1, 1, 1, 0]), Attribute.FromInts("strides", [1, 2, 2])));
                break;
            case "deconv":
                shape = [1, 6, 5, 7];
                net.Output(net.Op("ConvTranspose", [net.Input("x", shape), net.Random("w", [6, 4, 2, 2], 0.3f), net.Random("b", [4], 0.1f)],
                    Attribute.FromInts("strides", [2, 2])));
                break;
            case "deconv1d":
                shape = [1, 6, 11];
                net.Output(net.Op("ConvTranspose", [net.Input("x", shape), net.Random("w", [6, 4, 3], 0.3f)],
                    Attribute.FromInts("strides", [4])));
                break;
            case "matmul":
                shape = [1, 12, 16];
                net.Output(net.Op("MatMul", [net.Input("x", shape), net.Random("w", [16, 24], 0.3f)]));
                break;
            case "gemm":
                shape = [5, 16];
                net.Output(net.Op("Gemm", [net.Input("x", shape), net.Random("w", [24, 16], 0.3f), net.Random("b", [24], 0.1f)],
                    Attribute.FromInt("transB", 1), Attribute.FromFloat("alpha", 0.7f)));
                break;
            default:
                throw new ArgumentException($"no single-layer net '{kind}'", nameof(kind));
        }
        return (net.Model, shape);
    }
}
