using System.Runtime.InteropServices;
using OnnxQuant.Data;
using OnnxQuant.Frontend;
using OnnxQuant.Passes.Canonicalize;
using OnnxQuant.Passes.Compile;
using OnnxQuant.Passes.Pipeline;
using OnnxQuant.Runtime;
using Attribute = OnnxQuant.Frontend.Attribute;

namespace OnnxQuant.Passes.Tests.Canonicalize;

public class HalfPrecisionPassTests
{
    /// <summary>
    /// <paramref name="model"/> converted to float16 as converters do: every float initializer and value; with
    /// <paramref name="floatInterface"/> the inputs and outputs stay float32 behind casts (a "keep I/O types" conversion).
    /// </summary>
    private static Model ToHalf(Model model, bool floatInterface = false, DataType half = DataType.Float16)
    {
        var graph = model.Graph;
        foreach (var value in graph.Initializers.ToList())
            if (value.Initializer!.DataType == DataType.Float)
            {
                var bits = value.Initializer.ToFloatArray()
                    .Select(v => half == DataType.Float16 ? BitConverter.HalfToUInt16Bits((Half)v) : HalfPrecisionRows.ToBFloat16Bits(v)).ToArray();
                graph.SetInitializer(value, Tensor.FromRaw(value.Name, half, value.Initializer.GetDims(), MemoryMarshal.AsBytes(bits.AsSpan()).ToArray()));
            }
        foreach (var value in graph.Inputs.Concat(graph.Outputs).Concat(graph.Nodes.SelectMany(n => n.Outputs)).Distinct())
            if (value.Type is { ElementType: DataType.Float } t)
                value.Type = t with { ElementType = half };
        if (!floatInterface)
            return model;
        foreach (var input in graph.Inputs.Where(v => !v.IsInitializer).ToList())
        {
            var uses = input.Uses.ToList();
            var cast = new Node("Cast", [input], [input.Name + "_half"], name: input.Name + "_to_half", attributes: [Attribute.FromInt("to", (long)half)]);
            graph.InsertNode(0, cast);
            cast.Outputs[0].Type = input.Type;
            input.Type = input.Type! with { ElementType = DataType.Float };
            foreach (var use in uses)
                use.Node.ReplaceInput(use.InputIndex, cast.Outputs[0]);
        }
        for (var i = 0; i < graph.Outputs.Count; i++)
        {
            var output = graph.Outputs[i];
            var name = output.Name;
            output.Name = name + "_half";
            var cast = new Node("Cast", [output], [name], name: name + "_to_float", attributes: [Attribute.FromInt("to", (long)DataType.Float)]);
            graph.AddNode(cast);
            cast.Outputs[0].Type = output.Type! with { ElementType = DataType.Float };
            graph.ReplaceOutput(i, cast.Outputs[0]);
        }
        return model;
    }

    private static float[][] Run(Model model, DataType inputType, float[] images, int samples) =>
        Run(model, "images", inputType, images, [samples, 3, 16, 16]);

    /// <summary>Runs <paramref name="model"/> on one input given as floats, fed as <paramref name="inputType"/>.</summary>
    private static float[][] Run(Model model, string input, DataType inputType, float[] data, long[] shape)
    {
        using var session = InferenceSession.Create(ModelIO.ToBytes(model), SessionOptions.Calibration);
        var tensor = inputType == DataType.Float16
            ? TensorData.FromFloat16s(data.Select(v => (Half)v).ToArray(), shape)
            : TensorData.FromFloats(data, shape);
        return session.Run([new NamedTensor(input, tensor)]).Select(o => o.Data.ToFloats()).ToArray();
    }

    private static bool AnyHalf(Model model, IReadOnlySet<Value> interfaceValues) =>
        model.Graph.AllGraphs().Any(g => g.Initializers.Any(v => HalfPrecisionPass.IsHalf(v.Initializer!.DataType))
            || g.Nodes.SelectMany(n => n.Outputs).Any(v => !interfaceValues.Contains(v) && v.Type is { } t && HalfPrecisionPass.IsHalf(t.ElementType)));

    [Fact]
    public void AFloat16ModelComputesInFloat32BehindItsOwnInterface()
    {
        var images = TestModels.Images(4, 5);
        var reference = Run(TestModels.Detector(), DataType.Float, images, 4);
        var half = ToHalf(TestModels.Detector());
        var halfOutputs = Run(half, DataType.Float16, images, 4);
        var result = new HalfPrecisionPass().Run(half);
        Assert.True(result.Modified);
        var graph = half.Graph;
        // The interface: the same names and types as the float16 model.
        Assert.Equal(DataType.Float16, graph.Inputs.Single().Type!.ElementType);
        Assert.Equal(["scores", "boxes"], graph.Outputs.Select(o => o.Name));
        Assert.All(graph.Outputs, o => Assert.Equal(DataType.Float16, o.Type!.ElementType));
        Assert.All(graph.Outputs, o => Assert.Equal("Cast", o.Producer!.OpType));
        Assert.False(AnyHalf(half, graph.Outputs.ToHashSet()));
        // Inside it computes in float32: what the float16 model computes, within float16's precision (the outputs are
        // softmax scores and sigmoid boxes in [0, 1]), and closer than that to the float32 model.
        var converted = Run(half, DataType.Float16, images, 4);
        for (var o = 0; o < 2; o++)
        {
            Net.AssertClose(halfOutputs[o], converted[o], 1e-2f);
            Net.AssertClose(reference[o], converted[o], 5e-3f);
        }
        // Run again, nothing is left to do.
        Assert.False(new HalfPrecisionPass().Run(half).Modified);
    }

    [Fact]
    public void AFloat16ModelWithAFloat32InterfaceLosesItsCasts()
    {
        var images = TestModels.Images(4, 6);
        var half = ToHalf(TestModels.Detector(), floatInterface: true);
        var halfOutputs = Run(half, DataType.Float, images, 4);
        new HalfPrecisionPass().Run(half);
        Assert.Equal(0, half.Graph.Nodes.Count(n => n.OpType == "Cast"));
        Assert.False(AnyHalf(half, new HashSet<Value>()));
        Assert.Equal(DataType.Float, half.Graph.Inputs.Single().Type!.ElementType);
        Assert.Equal(["scores", "boxes"], half.Graph.Outputs.Select(o => o.Name));
        var converted = Run(half, DataType.Float, images, 4);
        for (var o = 0; o < 2; o++)
            Net.AssertClose(halfOutputs[o], converted[o], 1e-2f);
    }

    /// <summary>
    /// An output that other nodes also read, and an input passed straight through as an output: the readers take the
    /// float32 value, the passed-through input stays the float16 input, and the model runs as before.
    /// </summary>
    [Fact]
    public void OutputsReadInsideAndAPassedThroughInputKeepTheirMeaning()
    {
        var net = new Net(seed: 4);
        var x = net.Input("x", 1, 8);
        var hidden = net.Op("MatMul", [x, net.Random("w1", [8, 8], 0.5f)]);
        hidden.Name = "hidden";
        var y = net.Op("MatMul", [net.Op("Relu", [hidden]), net.Random("w2", [8, 4], 0.5f)]);
        y.Name = "y";
        net.Output(hidden);
        net.Output(y);
        net.Output(x);
        var half = ToHalf(net.Model);
        var data = Net.RandomData(8, 2);
        float[][] RunHalf() => Run(half, "x", DataType.Float16, data, [1, data.Length]);
        var before = RunHalf();
        new HalfPrecisionPass().Run(half);
        Assert.Equal(["hidden", "y", "x"], half.Graph.Outputs.Select(o => o.Name));
        Assert.All(half.Graph.Outputs, o => Assert.Equal(DataType.Float16, o.Type!.ElementType));
        Assert.Same(half.Graph.Inputs[0], half.Graph.Outputs[2]);
        var relu = half.Graph.Nodes.Single(n => n.OpType == "Relu");
        Assert.Equal(DataType.Float, relu.Inputs[0]!.Type!.ElementType);
        var after = RunHalf();
        for (var o = 0; o < 3; o++)
            Net.AssertClose(before[o], after[o], 1e-2f);
        Assert.Equal(before[2], after[2]);
    }

    /// <summary>Float32 samples for a float16 input are refused with the numpy dtype to save them as.</summary>
    /// <summary>
    /// Float32 samples for a half-precision input are converted to the input's type (round to nearest, ties to even,
    /// as numpy's astype does): a float16 model compiled from float32 data writes the bytes of the compile from the
    /// float16 array, and a bfloat16 model, for which numpy has no dtype at all, compiles from float32 data. Other
    /// element types are still refused with the dtype to save.
    /// </summary>
    [Fact]
    public void Float32SamplesForAHalfPrecisionInputAreConvertedToIt()
    {
        var dir = Path.Combine(Path.GetTempPath(), $"onnxquant-half-data-{Guid.NewGuid():N}");
        try
        {
            Directory.CreateDirectory(dir);
            const int samples = 24;
            var images = TestModels.Images(samples, 1);
            string Data(string name, DataType type, byte[] bytes)
            {
                var path = Path.Combine(dir, name);
                Npz.Write(path, [new NamedArray("images", new NpyArray(type, [samples, 3, 16, 16], bytes))]);
                return path;
            }
            var floats = Data("float32.npz", DataType.Float, MemoryMarshal.AsBytes(images.AsSpan()).ToArray());
            var halves = images.Select(v => (Half)v).ToArray();
            var float16 = Data("float16.npz", DataType.Float16, MemoryMarshal.AsBytes(halves.AsSpan()).ToArray());
            var doubles = images.Select(v => (double)v).ToArray();
            var float64 = Data("float64.npz", DataType.Double, MemoryMarshal.AsBytes(doubles.AsSpan()).ToArray());
            CompileResult Compile(string model, string data, string name) => Compiler.Run(model, data, Path.Combine(dir, name),
                new CompileOptions { Allocation = new() { TargetBits = [8] }, Data = new() { CalibSamples = 16 } }, "test", SilentProgress.Instance);

            var halfModel = Path.Combine(dir, "half.onnx");
            ModelIO.Save(ToHalf(TestModels.Detector()), halfModel);
            var converted = Compile(halfModel, floats, "from-float32");
            Assert.Contains(converted.Targets[0].Report.Notes, n => n == "input 'images': float32 data converted to float16, the model's input type (round to nearest, ties to even)");
            var saved = Compile(halfModel, float16, "from-float16");
            Assert.Equal(File.ReadAllBytes(Path.Combine(dir, "from-float16", "model.onnx")), File.ReadAllBytes(Path.Combine(dir, "from-float32", "model.onnx")));
            Assert.DoesNotContain(saved.Targets[0].Report.Notes, n => n.Contains("converted to float16"));
            var e = Assert.Throws<CompileException>(() => Compile(halfModel, float64, "from-float64"));
            Assert.Contains("element type Double, the model expects Float16", e.Message);
            Assert.Contains("'<f2'", e.Message);

            var bfloatModel = Path.Combine(dir, "bfloat16.onnx");
            ModelIO.Save(ToHalf(TestModels.Detector(), half: DataType.BFloat16), bfloatModel);
            var bfloat = Compile(bfloatModel, floats, "bfloat16").Targets[0].Report;
            Assert.Contains(bfloat.Notes, n => n.Contains("float32 data converted to bfloat16"));
            Assert.InRange(bfloat.Distortion.Measured, 1e-9, 1e-2);
            var artifact = ModelIO.Load(Path.Combine(dir, "bfloat16", "model.onnx"));
            Assert.Equal(DataType.BFloat16, artifact.Graph.Inputs.Single(v => !v.IsInitializer).Type!.ElementType);
        }
        finally
        {
            if (Directory.Exists(dir))
                Directory.Delete(dir, true);
        }
    }

    /// <summary>
    /// A float16 detector compiles like its float32 original: the artifact takes and returns float16 under the same
    /// names, runs in ONNX Runtime, and its distortion against the float16 model, measured here on the held-out
    /// samples, is the report's within 25 % (the report's reference is the float32 computation, this one the float16
    /// outputs; 3 % apart when written).
    /// </summary>
    [Fact]
    public void AFloat16DetectorCompilesToAQuantizedModelWithItsInterface()
    {
        var dir = Path.Combine(Path.GetTempPath(), $"onnxquant-half-{Guid.NewGuid():N}");
        try
        {
            Directory.CreateDirectory(dir);
            var modelPath = Path.Combine(dir, "half.onnx");
            ModelIO.Save(ToHalf(TestModels.Detector()), modelPath);
            const int samples = 64, calibration = 48;
            var images = TestModels.Images(samples, 9);
            var halves = images.Select(v => (Half)v).ToArray();
            var dataPath = Path.Combine(dir, "calib.npz");
            Npz.Write(dataPath, [new NamedArray("images", new NpyArray(DataType.Float16, [samples, 3, 16, 16], MemoryMarshal.AsBytes(halves.AsSpan()).ToArray()))]);
            var result = Compiler.Run(modelPath, dataPath, Path.Combine(dir, "out"), new CompileOptions
            {
                Allocation = new() { TargetBits = [4] },
                Data = new() { CalibSamples = calibration },
            }, "test", SilentProgress.Instance);
            var report = result.Targets.Single().Report;
            Assert.Contains(report.Notes, n => n.Contains("half precision", StringComparison.Ordinal));
            Assert.True(report.Distortion.HeldOut);
            var artifact = ModelIO.Load(Path.Combine(result.OutputDirectory, "model.onnx"));
            Assert.Equal(DataType.Float16, artifact.Graph.Inputs.Single(v => !v.IsInitializer).Type!.ElementType);
            Assert.Equal(["scores", "boxes"], artifact.Graph.Outputs.Select(o => o.Name));
            Assert.All(artifact.Graph.Outputs, o => Assert.Equal(DataType.Float16, o.Type!.ElementType));
            Assert.Contains(artifact.Graph.Nodes, n => n.OpType == "DequantizeLinear");
            // The held-out samples are the report's: those after the calibration ones.
            var heldOut = images[(calibration * 768)..((calibration + report.Distortion.Samples) * 768)];
            var count = report.Distortion.Samples;
            var expected = Run(ModelIO.Load(modelPath), DataType.Float16, heldOut, count);
            var actual = Run(artifact, DataType.Float16, heldOut, count);
            double measured = 0;
            for (var o = 0; o < 2; o++)
            {
                var mean = expected[o].Average();
                double error = 0, variation = 0;
                for (var i = 0; i < expected[o].Length; i++)
                {
                    error += (actual[o][i] - expected[o][i]) * (double)(actual[o][i] - expected[o][i]);
                    variation += (expected[o][i] - mean) * (double)(expected[o][i] - mean);
                }
                measured += error / variation;
            }
            Assert.InRange(measured, report.Distortion.Measured * 0.75, report.Distortion.Measured * 1.25);
        }
        finally
        {
            if (Directory.Exists(dir))
                Directory.Delete(dir, true);
        }
    }
}
