using Google.Protobuf;
using OnnxQuant.Frontend.Proto;

namespace OnnxQuant.Frontend.Tests;

/// <summary>
/// A model whose weights exceed protobuf's 2 GiB limit round-trips through external data while the process never
/// holds the weights in memory (not even one copy): loading is lazy and saving streams file to file.
/// </summary>
public class LargeModelTests
{
    private const int Tensors = 3;
    private const long Rows = 768, Cols = 245_760; // 720 MiB of float per tensor, 2.11 GiB in all
    private const long TensorBytes = Rows * Cols * 4;

    /// <summary>
    /// Writes model.onnx and weights.bin into <paramref name="dir"/>: x[1,768] -> MatMul(w_i) -> y_i for each tensor.
    /// The data file is sparse (its length set, then 1 MiB of seeded random bytes written at the start, middle and
    /// end of each tensor), so generating it costs almost no time or disk.
    /// </summary>
    internal static string WriteModel(string dir)
    {
        var random = new Random(7);
        var chunk = new byte[1 << 20];
        using (var data = new FileStream(Path.Combine(dir, "weights.bin"), FileMode.CreateNew))
        {
            data.SetLength(Tensors * TensorBytes);
            for (int i = 0; i < Tensors; i++)
                foreach (var at in new[] { 0, TensorBytes / 2, TensorBytes - chunk.Length })
                {
                    random.NextBytes(chunk);
                    data.Position = i * TensorBytes + at;
                    data.Write(chunk);
                }
        }
        var graph = new GraphProto { Name = "large" };
        graph.Input.Add(TensorInfo("x", 1, Rows));
        for (int i = 0; i < Tensors; i++)
        {
            var w = new TensorProto { Name = $"w{i}", DataType = (int)DataType.Float, DataLocation = TensorProto.Types.DataLocation.External };
            w.Dims.Add([Rows, Cols]);
            w.ExternalData.Add(new StringStringEntryProto { Key = "location", Value = "weights.bin" });
            w.ExternalData.Add(new StringStringEntryProto { Key = "offset", Value = (i * TensorBytes).ToString() });
            w.ExternalData.Add(new StringStringEntryProto { Key = "length", Value = TensorBytes.ToString() });
            graph.Initializer.Add(w);
            var node = new NodeProto { OpType = "MatMul", Name = $"matmul{i}" };
            node.Input.Add(["x", $"w{i}"]);
            node.Output.Add($"y{i}");
            graph.Node.Add(node);
            graph.Output.Add(TensorInfo($"y{i}", 1, Cols));
        }
        var model = new ModelProto { IrVersion = 10, Graph = graph, ProducerName = "large-model-test" };
        model.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = 21 });
        var path = Path.Combine(dir, "model.onnx");
        File.WriteAllBytes(path, model.ToByteArray());
        return path;
    }

    private static ValueInfoProto TensorInfo(string name, params long[] dims)
    {
        var shape = new TensorShapeProto();
        foreach (var d in dims) shape.Dim.Add(new TensorShapeProto.Types.Dimension { DimValue = d });
        return new ValueInfoProto
        {
            Name = name,
            Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)DataType.Float, Shape = shape } },
        };
    }

    /// <summary>Peak resident memory of this process since the last <see cref="ResetPeak"/>, from /proc.</summary>
    private static long PeakResidentBytes()
    {
        var line = File.ReadLines("/proc/self/status").First(l => l.StartsWith("VmHWM:", StringComparison.Ordinal));
        return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) * 1024;
    }

    private static void ResetPeak() => File.WriteAllText("/proc/self/clear_refs", "5");

    private static byte[] ReadWindow(string path, long offset)
    {
        using var handle = File.OpenHandle(path);
        var buffer = new byte[1 << 20];
        Assert.Equal(buffer.Length, RandomAccess.Read(handle, buffer, offset));
        return buffer;
    }

    [Fact]
    public void WeightsOverTwoGigabytesRoundTripThroughExternalDataWithoutBeingHeldInMemory()
    {
        var dir = TestModels.TempDir();
        try
        {
            var source = WriteModel(dir);
            var outDir = Directory.CreateDirectory(Path.Combine(dir, "out")).FullName;
            var target = Path.Combine(outDir, "model.onnx");
            const long weightBytes = Tensors * TensorBytes;
            Assert.True(weightBytes > ModelIO.ProtobufLimitBytes);

            GC.Collect();
            ResetPeak();
            var allocatedBefore = GC.GetAllocatedBytesForCurrentThread();

            var model = ModelIO.Load(source);
            Assert.All(model.Graph.Initializers, v => Assert.False(v.Initializer!.IsLoaded));
            Assert.Throws<FrontendException>(() => ModelIO.ToBytes(model));
            Assert.Throws<FrontendException>(() => ModelIO.Save(model, target, new SaveOptions { ExternalData = ExternalDataMode.Never }));
            // Default options: the weights exceed the threshold, so they go to external data automatically.
            ModelIO.Save(model, target, new SaveOptions { Durable = false });
            var back = ModelIO.Load(target);
            // Structure compared in full; data compared at the random blocks and at seeded random windows (reading
            // all 2 GiB back would only measure the disk).
            var difference = ModelComparer.FindDifference(model, back, compareTensorData: false);
            var windows = new Random(11);
            for (int i = 0; i < Tensors; i++)
            {
                var (src, dst) = (model.Graph.Initializers[i].Initializer!.External!, back.Graph.Initializers[i].Initializer!.External!);
                Assert.Equal(TensorBytes, dst.Length);
                foreach (var at in new[] { 0, TensorBytes / 2, TensorBytes - (1 << 20), windows.NextInt64(TensorBytes - (1 << 20)), windows.NextInt64(TensorBytes - (1 << 20)) })
                    Assert.Equal(ReadWindow(src.FullPath, src.Offset + at), ReadWindow(dst.FullPath, dst.Offset + at));
            }

            var allocated = GC.GetAllocatedBytesForCurrentThread() - allocatedBefore;
            var peak = PeakResidentBytes();

            Assert.Null(difference);
            Assert.True(File.Exists(target + ".data"));
            Assert.True(new FileInfo(target).Length < 4096, "the model file itself holds no weights");
            Assert.All(back.Graph.Initializers, v =>
            {
                Assert.Equal("model.onnx.data", v.Initializer!.External!.Location);
                Assert.Equal(0, v.Initializer.External.Offset % 4096);
            });
            // Never a copy of the weights: this thread allocated under 64 MiB in all, and the whole process (other
            // tests run beside this one) stayed far below the size of the weights.
            Assert.True(allocated < 64L << 20, $"allocated {allocated >> 20} MiB while round-tripping {weightBytes >> 20} MiB");
            Assert.True(peak < weightBytes / 3, $"peak resident memory {peak >> 20} MiB for {weightBytes >> 20} MiB of weights");
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
