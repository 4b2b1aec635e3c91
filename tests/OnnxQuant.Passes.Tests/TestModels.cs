using OnnxQuant.Data;
using OnnxQuant.Frontend;
using Attribute = OnnxQuant.Frontend.Attribute;

namespace OnnxQuant.Passes.Tests;

/// <summary>Small models for end-to-end compile tests, and calibration data for them.</summary>
internal static class TestModels
{
    /// <summary>
    /// A miniature detector: conv backbone (Conv+BN+Relu, Conv+Relu), pooled to a feature "feat" of 16 channels,
    /// a transformer-style block on it (Gemm projection, MatMul, LayerNormalization, Softmax scores) and a box head
    /// (Gemm to 4 box values then Sigmoid). Batch axis symbolic. Layer weights get different scales so their
    /// sensitivities differ.
    /// </summary>
    public static Model Detector(long opset = 17)
    {
        var net = new Net(opset, seed: 7);
        var x = net.BatchInput("images", 3, 16, 16);
        var c1 = net.Op("Conv", [x, net.Random("backbone.conv1.weight", [16, 3, 3, 3], 0.4f)], Attribute.FromInts("pads", [1, 1, 1, 1]));
        var bn = net.Op("BatchNormalization", [c1, net.Random("bn.gamma", [16], 0.2f, 1f), net.Random("bn.beta", [16], 0.1f),
            net.Random("bn.mean", [16], 0.1f), net.Random("bn.var", [16], 0.2f, 0.8f)]);
        var r1 = net.Op("Relu", [bn]);
        var c2 = net.Op("Conv", [r1, net.Random("backbone.conv2.weight", [32, 16, 3, 3], 0.15f), net.Random("backbone.conv2.bias", [32], 0.1f)],
            Attribute.FromInts("pads", [1, 1, 1, 1]), Attribute.FromInts("strides", [2, 2]));
        var r2 = net.Op("Relu", [c2]);
        var pooled = net.Op("GlobalAveragePool", [r2]);
        var feat = net.Op("Flatten", [pooled]);
        feat.Name = "feat";
        var proj = net.Op("Gemm", [feat, net.Random("encoder.proj.weight", [64, 32], 0.3f), net.Random("encoder.proj.bias", [64], 0.05f)],
            Attribute.FromInt("transB", 1));
        var act = net.Op("Relu", [proj]);
        // Residual MLP block: large weights whose contribution is scaled down (insensitive per weight), next to the
        // small, sensitive projection, so a mixed allocation has something to gain.
        var up = net.Op("MatMul", [act, net.Random("encoder.mlp.up.weight", [64, 256], 0.2f)]);
        up.Producer!.Name = "mlp_up";
        var hidden = net.Op("Relu", [up]);
        var down = net.Op("MatMul", [hidden, net.Random("encoder.mlp.down.weight", [256, 64], 0.1f)]);
        down.Producer!.Name = "mlp_down";
        var scaled = net.Op("Mul", [down, net.Init("mlp.scale", [], [0.05f])]);
        var mlp = net.Op("Add", [act, scaled]);
        var ln = net.Op("LayerNormalization", [mlp, net.Random("ln.scale", [64], 0.1f, 1f), net.Random("ln.bias", [64], 0.1f)],
            Attribute.FromInt("axis", -1));
        ln.Name = "encoded";
        var logits = net.Op("MatMul", [ln, net.Random("class_head.weight", [64, 10], 0.15f)]);
        logits.Producer!.Name = "class_head";
        var scores = net.Op("Softmax", [logits], Attribute.FromInt("axis", -1));
        scores.Name = "scores";
        net.Output(scores);
        var box = net.Op("Gemm", [feat, net.Random("box_head.weight", [32, 4], 0.3f)]);
        box.Producer!.Name = "box_head";
        var boxes = net.Op("Sigmoid", [box]);
        boxes.Name = "boxes";
        net.Output(boxes);
        return net.Model;
    }

    public static float[] Images(int samples, int seed)
    {
        var r = new Random(seed);
        var data = new float[samples * 3 * 16 * 16];
        for (var i = 0; i < data.Length; i++)
            data[i] = (float)(r.NextDouble() * 2 - 0.5);
        return data;
    }

    /// <summary>Saves <paramref name="model"/> (one 3x16x16 "images" input) as NAME.onnx in <paramref name="dir"/> with
    /// 24 seeded images as NAME.npz, and compiles it into out-NAME.</summary>
    public static OnnxQuant.Passes.Compile.CompileResult CompileImages(Model model, string dir, string name, OnnxQuant.Passes.Compile.CompileOptions options)
    {
        Directory.CreateDirectory(dir);
        var modelPath = Path.Combine(dir, name + ".onnx");
        ModelIO.Save(model, modelPath);
        var dataPath = Path.Combine(dir, name + ".npz");
        Npz.Write(dataPath, [new NamedArray("images", NpyArray.FromFloats(Images(24, 3), 24, 3, 16, 16))]);
        return OnnxQuant.Passes.Compile.Compiler.Run(modelPath, dataPath, Path.Combine(dir, "out-" + name), options, "test", OnnxQuant.Passes.Pipeline.SilentProgress.Instance);
    }

    /// <summary>Writes the detector and its calibration data into <paramref name="dir"/>; returns (model, data) paths.</summary>
    public static (string Model, string Data) WriteDetector(string dir, int samples = 80)
    {
        Directory.CreateDirectory(dir);
        var model = Path.Combine(dir, "detector.onnx");
        ModelIO.Save(Detector(), model);
        var data = Path.Combine(dir, "calib.npz");
        Npz.Write(data, [new NamedArray("images", NpyArray.FromFloats(Images(samples, 11), samples, 3, 16, 16))]);
        return (model, data);
    }
}
