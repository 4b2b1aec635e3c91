using OnnxQuant.Frontend;

namespace OnnxQuant.Runtime.Tests;

public class InferenceSessionTests
{
    private static float[] Random(int n, int seed)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
    }

    [Fact]
    public void LoadsTheBundledLibrary()
    {
        var runtime = OrtRuntime.Shared;
        Assert.StartsWith("1.", runtime.Version);
        Assert.Contains("CPUExecutionProvider", runtime.AvailableProviders);
        Assert.True(File.Exists(runtime.Library.Path));
    }

    [Fact]
    public void ReadsInputAndOutputMetadata()
    {
        using var session = InferenceSession.Create(NodeModels.Path("test_gather_0"), NodeModels.Options);
        Assert.Equal(2, session.Inputs.Count);
        Assert.Equal(new TensorInfo("data", ValueKind.Tensor, DataType.Float, [5, 4, 3, 2], ["", "", "", ""]).ToString(), session.Inputs[0].ToString());
        Assert.Equal("indices", session.Inputs[1].Name);
        Assert.Equal(DataType.Int64, session.Inputs[1].DataType);
        Assert.Equal([3L], session.Inputs[1].Dims);
        Assert.Single(session.Outputs);
        Assert.Equal("y", session.Outputs[0].Name);
        Assert.Equal([3L, 4, 3, 2], session.Outputs[0].Dims);
        Assert.True(session.Outputs[0].IsStatic);
        Assert.Equal(ExecutionProvider.Cpu, session.ActiveProvider);
        Assert.Null(session.ProviderNotice);
    }

    [Fact]
    public void RunsFloatAddFromPathAndFromBytes()
    {
        var x = Random(60, 1);
        var y = Random(60, 2);
        long[] shape = [3, 4, 5];
        var path = NodeModels.Path("test_add");
        using var fromPath = InferenceSession.Create(path, NodeModels.Options);
        using var fromBytes = InferenceSession.Create(File.ReadAllBytes(path), NodeModels.Options);
        foreach (var session in new[] { fromPath, fromBytes })
        {
            var outputs = session.Run([new("x", TensorData.FromFloats(x, shape)), new("y", TensorData.FromFloats(y, shape))]);
            var sum = Assert.Single(outputs);
            Assert.Equal("sum", sum.Name);
            Assert.Equal(DataType.Float, sum.Data.DataType);
            Assert.Equal(shape, sum.Data.Shape);
            var values = sum.Data.GetArray<float>();
            for (var i = 0; i < 60; i++)
                Assert.Equal(x[i] + y[i], values[i]); // one rounding either way: bit-exact
        }
    }

    [Fact]
    public void RunsInt64IndicesGather()
    {
        var data = Random(120, 3);
        using var session = InferenceSession.Create(NodeModels.Path("test_gather_0"), NodeModels.Options);
        var y = session.Run([
            new("data", TensorData.FromFloats(data, [5, 4, 3, 2])),
            new("indices", TensorData.FromInt64s([4, 0, 2], [3])),
        ])[0].Data;
        Assert.Equal([3L, 4, 3, 2], y.Shape);
        var values = y.ToFloats();
        long[] indices = [4, 0, 2];
        for (var i = 0; i < 3; i++)
            for (var k = 0; k < 24; k++)
                Assert.Equal(data[indices[i] * 24 + k], values[i * 24 + k]);
    }

    [Fact]
    public void ReturnsInt64Outputs()
    {
        using var session = InferenceSession.Create(NodeModels.Path("test_argmax_default_axis_example"), NodeModels.Options);
        var result = session.Run([new("data", TensorData.FromFloats([2, 1, 3, 10], [2, 2]))])[0].Data;
        Assert.Equal(DataType.Int64, result.DataType);
        Assert.Equal([1L, 2], result.Shape);
        Assert.Equal([1L, 1], result.GetArray<long>()); // argmax over axis 0 of [[2, 1], [3, 10]]
    }

    [Fact]
    public void RunsBoolUint8Int8Int32AndFloat16Tensors()
    {
        using (var and = InferenceSession.Create(NodeModels.Path("test_and2d"), NodeModels.Options))
        {
            var x = Enumerable.Range(0, 12).Select(i => i % 2 == 0).ToArray();
            var y = Enumerable.Range(0, 12).Select(i => i % 3 == 0).ToArray();
            var r = and.Run([new("x", TensorData.FromBools(x, [3, 4])), new("y", TensorData.FromBools(y, [3, 4]))])[0].Data;
            Assert.Equal(x.Zip(y, (a, b) => a && b).ToArray(), r.GetArray<bool>());
        }
        using (var add = InferenceSession.Create(NodeModels.Path("test_add_uint8"), NodeModels.Options))
        {
            var x = Enumerable.Range(0, 60).Select(i => (byte)(i * 3)).ToArray();
            var y = Enumerable.Range(0, 60).Select(i => (byte)(100 + i)).ToArray();
            var r = add.Run([new("x", TensorData.FromUInt8s(x, [3, 4, 5])), new("y", TensorData.FromUInt8s(y, [3, 4, 5]))])[0].Data;
            Assert.Equal(x.Zip(y, (a, b) => (byte)(a + b)).ToArray(), r.GetArray<byte>()); // wraps modulo 256
        }
        using (var max = InferenceSession.Create(NodeModels.Path("test_max_int8"), NodeModels.Options))
        {
            var names = max.Inputs.Select(i => i.Name).ToArray();
            sbyte[] a = [-128, 5, 127], b = [3, -7, 0];
            var r = max.Run([new(names[0], TensorData.FromInt8s(a, [3])), new(names[1], TensorData.FromInt8s(b, [3]))])[0].Data;
            Assert.Equal(new sbyte[] { 3, 5, 127 }, r.GetArray<sbyte>());
        }
        using (var max = InferenceSession.Create(NodeModels.Path("test_max_int32"), NodeModels.Options))
        {
            var names = max.Inputs.Select(i => i.Name).ToArray();
            int[] a = [int.MinValue, 5, 7], b = [3, -7, int.MaxValue];
            var r = max.Run([new(names[0], TensorData.FromInt32s(a, [3])), new(names[1], TensorData.FromInt32s(b, [3]))])[0].Data;
            Assert.Equal([3, 5, int.MaxValue], r.GetArray<int>());
        }
        using (var cast = InferenceSession.Create(NodeModels.Path("test_cast_FLOAT_to_FLOAT16"), NodeModels.Options))
        {
            var x = Random(12, 4);
            var r = cast.Run([new("input", TensorData.FromFloats(x, [3, 4]))])[0].Data;
            Assert.Equal(DataType.Float16, r.DataType);
            Assert.Equal(x.Select(v => (Half)v).ToArray(), r.GetArray<Half>());
        }
        using (var cast = InferenceSession.Create(NodeModels.Path("test_cast_FLOAT16_to_FLOAT"), NodeModels.Options))
        {
            var x = Random(12, 5).Select(v => (Half)v).ToArray();
            var r = cast.Run([new("input", TensorData.FromFloat16s(x, [3, 4]))])[0].Data;
            Assert.Equal(x.Select(v => (float)v).ToArray(), r.GetArray<float>());
        }
    }

    [Fact]
    public void SelectsOutputsByName()
    {
        using var session = InferenceSession.Create(NodeModels.Path("test_add"), NodeModels.Options);
        var inputs = new NamedTensor[] { new("x", TensorData.FromFloats(new float[60], [3, 4, 5])), new("y", TensorData.FromFloats(new float[60], [3, 4, 5])) };
        Assert.Equal("sum", Assert.Single(session.Run(inputs, ["sum"])).Name);
        var ex = Assert.Throws<ArgumentException>(() => session.Run(inputs, ["nope"]));
        Assert.Contains("no output 'nope'", ex.Message);
        Assert.Contains("sum", ex.Message);
    }

    [Fact]
    public void StreamsBatchesLazily()
    {
        using var session = InferenceSession.Create(NodeModels.Path("test_add"), NodeModels.Options);
        var produced = 0;
        IEnumerable<IReadOnlyList<NamedTensor>> Batches()
        {
            for (var b = 0; b < 5; b++)
            {
                produced++;
                var x = Enumerable.Repeat((float)b, 60).ToArray();
                yield return [new("x", TensorData.FromFloats(x, [3, 4, 5])), new("y", TensorData.FromFloats(x, [3, 4, 5]))];
            }
        }
        var seen = 0;
        foreach (var outputs in session.RunBatches(Batches()))
        {
            // The next batch is not produced before this one's outputs are consumed.
            Assert.Equal(seen + 1, produced);
            Assert.All(outputs[0].Data.GetArray<float>(), v => Assert.Equal(2f * seen, v));
            seen++;
        }
        Assert.Equal(5, seen);
    }

    [Fact]
    public void RejectsBadInputsWithClearErrors()
    {
        using var session = InferenceSession.Create(NodeModels.Path("test_add"), NodeModels.Options);
        var x = TensorData.FromFloats(new float[60], [3, 4, 5]);
        var unknown = Assert.Throws<ArgumentException>(() => session.Run([new("x", x), new("z", x)]));
        Assert.Contains("no input 'z'", unknown.Message);
        Assert.Contains("x: Float[3x4x5]", unknown.Message);
        Assert.Throws<ArgumentException>(() => session.Run([new("x", x), new("x", x)]));
        var missing = Assert.Throws<OrtException>(() => session.Run([new("x", x)]));
        Assert.Contains("y", missing.Message);
        var wrongType = Assert.Throws<OrtException>(() => session.Run([new("x", x), new("y", TensorData.FromInt64s(new long[60], [3, 4, 5]))]));
        Assert.Equal(OrtErrorCode.InvalidArgument, wrongType.ErrorCode);
        var wrongShape = Assert.Throws<OrtException>(() => session.Run([new("x", x), new("y", TensorData.FromFloats(new float[6], [6]))]));
        Assert.Contains("Run:", wrongShape.Message);
    }

    [Fact]
    public void RejectsCorruptAndMissingModels()
    {
        Assert.Throws<FileNotFoundException>(() => InferenceSession.Create("/nonexistent/model.onnx"));
        var corrupt = Assert.Throws<OrtException>(() => InferenceSession.Create("not a model"u8.ToArray()));
        Assert.Contains("loading the model from memory", corrupt.Message);
        var truncated = File.ReadAllBytes(NodeModels.Path("test_add"))[..40];
        Assert.Throws<OrtException>(() => InferenceSession.Create(truncated));
    }

    [Fact]
    public void RunAfterDisposeThrows()
    {
        var session = InferenceSession.Create(NodeModels.Path("test_add"), NodeModels.Options);
        session.Dispose();
        session.Dispose();
        Assert.Throws<ObjectDisposedException>(() => session.Run([]));
    }
}
