using OnnxQuant.Data;
using OnnxQuant.Frontend;
using OnnxQuant.Passes.Calibration;
using OnnxQuant.Runtime;

namespace OnnxQuant.Passes.Tests.Calibration;

public sealed class CalibrationDataTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), $"onnxquant-calib-{Guid.NewGuid():N}");

    public CalibrationDataTests() => Directory.CreateDirectory(_dir);

    public void Dispose() => Directory.Delete(_dir, true);

    private static readonly InputSpec Fixed = new("x", DataType.Float, [2, 3]);
    private static readonly InputSpec Symbolic = new("x", DataType.Float, [null, 3]);

    private string Write(string name, float[] data, params long[] shape)
    {
        var path = Path.Combine(_dir, name);
        Npz.Write(path, [new NamedArray("x", NpyArray.FromFloats(data, shape))]);
        return path;
    }

    [Fact]
    public void ArrayOfOneMoreRankFeedsAnInputWithoutBatchAxisOneSamplePerRun()
    {
        // The input [3, 2] has no batch axis; [N, 3, 2] holds N samples.
        var image = new InputSpec("x", DataType.Float, [3, 2]);
        var set = CalibrationSet.Load(Write("stacked.npz", Enumerable.Range(0, 24).Select(i => (float)i).ToArray(), 4, 3, 2), [image]);
        Assert.Equal(4, set.Count);
        Assert.Equal(1, set.SamplesPerRun(8));
        var runs = set.Runs(0, 4, 8).ToList();
        Assert.Equal(4, runs.Count);
        var third = runs[2].Inputs.Single();
        Assert.Equal([3L, 2], third.Shape);
        Assert.Equal([12f, 13, 14, 15, 16, 17], TensorData.FromBytes(DataType.Float, third.Data, third.Shape).ToFloats());
        // A fixed first dimension the array's second axis contradicts is still refused.
        Assert.Throws<CompileException>(() => CalibrationSet.Load(Write("wrong.npz", new float[16], 2, 4, 2), [image]));
    }

    /// <summary>Blank (constant) inputs and identical samples are named in the compile's notes; varied data is not.</summary>
    [Fact]
    public void DegenerateCalibrationDataIsNamed()
    {
        var image = new InputSpec("x", DataType.Float, [null, 64]);
        var blank = CalibrationSet.Load(Write("blank.npz", new float[4 * 64], 4, 64), [image]);
        var line = Assert.Single(blank.Degeneracies(4));
        Assert.Contains("'x' holds the single value 0 in all 4 sample(s)", line);
        // A small input (here 3 values a sample) may be one number throughout: only the identical samples are named.
        var small = CalibrationSet.Load(Write("small.npz", Enumerable.Repeat(1f, 4 * 3).ToArray(), 4, 3), [Symbolic]);
        Assert.Contains("all 4 calibration samples are identical", Assert.Single(small.Degeneracies(4)));

        var same = CalibrationSet.Load(Write("same.npz", [1, 2, 3, 1, 2, 3, 1, 2, 3], 3, 3), [Symbolic]);
        Assert.Contains("all 3 calibration samples are identical", Assert.Single(same.Degeneracies(3)));
        // Only the samples the compile uses count: the first one alone is neither.
        Assert.Empty(same.Degeneracies(1));

        var varied = CalibrationSet.Load(Write("varied.npz", [1, 2, 3, 1, 2, 4], 2, 3), [Symbolic]);
        Assert.Empty(varied.Degeneracies(2));
    }

    [Fact]
    public void FolderConcatenatesSamplesInNameOrder()
    {
        var folder = Path.Combine(_dir, "folder");
        Directory.CreateDirectory(folder);
        Npz.Write(Path.Combine(folder, "b.npz"), [new NamedArray("x", NpyArray.FromFloats([7, 8, 9], 1, 3))]);
        Npz.Write(Path.Combine(folder, "a.npz"), [new NamedArray("x", NpyArray.FromFloats([1, 2, 3, 4, 5, 6], 2, 3))]);
        var set = CalibrationSet.Load(folder, [Symbolic]);
        Assert.Equal(3, set.Count);
        var batch = set.Batch(1, 2).Single();
        Assert.Equal([2L, 3], batch.Shape);
        Assert.Equal([4f, 5, 6, 7, 8, 9], TensorData.FromBytes(DataType.Float, batch.Data, batch.Shape).ToFloats());
    }

    [Fact]
    public void FixedBatchGroupsRowsIntoSamples()
    {
        var set = CalibrationSet.Load(Write("fixed.npz", new float[4 * 3], 4, 3), [Fixed]);
        Assert.Equal(2, set.Count);
        Assert.Equal([2L, 3], set.Batch(1, 1)[0].Shape);
        Assert.NotEqual(set.Hash(1), set.Hash(2));
        Assert.Equal(set.Hash(2), CalibrationSet.Load(Write("same.npz", new float[4 * 3], 4, 3), [Fixed]).Hash(2));
    }

    [Fact]
    public void RowsNotAMultipleOfTheBatchAreRejected()
    {
        var error = Assert.Throws<CompileException>(() => CalibrationSet.Load(Write("odd.npz", new float[3 * 3], 3, 3), [Fixed]));
        Assert.Contains("input 'x' has 3 rows, not a multiple of the model's batch size 2", error.Message);
    }

    [Fact]
    public void InfinityIsRejectedWithTheSample()
    {
        var data = new float[6 * 3];
        data[4 * 3 + 1] = float.PositiveInfinity;
        var error = Assert.Throws<CompileException>(() => CalibrationSet.Load(Write("inf.npz", data, 6, 3), [Symbolic]));
        Assert.Contains("infinity in sample 4", error.Message);
    }

    /// <summary>
    /// Arrays above the memory limit are read back from a temporary file: a deflated .npz, a stored .npz and a
    /// big-endian .npy in one folder give the same samples, hash and notes as in memory, and the file goes with the set.
    /// </summary>
    [Fact]
    public void SpilledSamplesAreTheBytesHeldInMemory()
    {
        var folder = Path.Combine(_dir, "spill");
        Directory.CreateDirectory(folder);
        var rng = new Random(5);
        var values = Enumerable.Range(0, 9 * 3).Select(_ => (float)rng.NextDouble() - 0.5f).ToArray();
        Npz.Write(Path.Combine(folder, "a.npz"), [new NamedArray("x", NpyArray.FromFloats(values[..12], 4, 3))], compress: true);
        Npz.Write(Path.Combine(folder, "b.npz"), [new NamedArray("x", NpyArray.FromFloats(values[12..18], 2, 3))]);
        File.WriteAllBytes(Path.Combine(folder, "c.npy"), BigEndianNpy(values[18..], 3, 3));
        using var memory = CalibrationSet.Load(folder, [Symbolic]);
        using var spilled = CalibrationSet.Load(folder, [Symbolic], memoryBytes: 0);
        Assert.False(memory.IsSpilled);
        Assert.True(spilled.IsSpilled);
        Assert.Equal(9, spilled.Count);
        for (var start = 0; start < 9; start++)
            for (var count = 1; start + count <= 9; count++)
            {
                var a = memory.Batch(start, count).Single();
                var b = spilled.Batch(start, count).Single();
                Assert.Equal(a.Shape, b.Shape);
                Assert.Equal(a.Data, b.Data);
            }
        // The big-endian file's values arrive in the machine's order: sample 7 is values[21..24].
        Assert.Equal(values[21..24], TensorData.FromBytes(DataType.Float, spilled.Batch(7, 1)[0].Data, [1, 3]).ToFloats());
        Assert.Equal(memory.Hash(9), spilled.Hash(9));
        Assert.Equal(memory.Degeneracies(9), spilled.Degeneracies(9));
        var spillFolder = spilled.SpillFolder!;
        Assert.Equal(3, Directory.GetFiles(spillFolder).Length);
        spilled.Dispose();
        Assert.False(Directory.Exists(spillFolder));
    }

    /// <summary>A NaN in a spilled array is found with its sample (the check reads the file a few megabytes at a time).</summary>
    [Fact]
    public void NaNInASpilledArrayIsRejectedWithTheSample()
    {
        var data = new float[6 * 3];
        data[3 * 3 + 2] = float.NaN;
        var path = Write("nan.npz", data, 6, 3);
        var error = Assert.Throws<CompileException>(() => CalibrationSet.Load(path, [Symbolic], memoryBytes: 0));
        Assert.Contains("NaN in sample 3", error.Message);
    }

    /// <summary>A truncated array is refused before anything of it is used, and its partial file is deleted.</summary>
    [Fact]
    public void TruncatedSpilledArrayIsRefused()
    {
        var path = Path.Combine(_dir, "cut.npy");
        Npy.Write(path, NpyArray.FromFloats(new float[4 * 3], 4, 3));
        var bytes = File.ReadAllBytes(path);
        File.WriteAllBytes(path, bytes[..^5]);
        var spill = Path.Combine(_dir, "cut.bin");
        var error = Assert.Throws<DataFormatException>(() => Npy.ReadRows(path, 0, () => spill));
        Assert.Contains("truncated .npy data", error.Message);
        Assert.False(File.Exists(spill));
    }

    /// <summary>A .npy file as a big-endian machine's numpy writes it ('&gt;f4').</summary>
    private static byte[] BigEndianNpy(float[] values, params long[] shape)
    {
        var header = $"{{'descr': '>f4', 'fortran_order': False, 'shape': ({string.Join(", ", shape)}), }}";
        header = header.PadRight(118 - 10) + "\n";
        using var stream = new MemoryStream();
        stream.Write([0x93, (byte)'N', (byte)'U', (byte)'M', (byte)'P', (byte)'Y', 1, 0, (byte)header.Length, 0]);
        stream.Write(System.Text.Encoding.Latin1.GetBytes(header));
        var element = new byte[4];
        foreach (var v in values)
        {
            System.Buffers.Binary.BinaryPrimitives.WriteSingleBigEndian(element, v);
            stream.Write(element);
        }
        return stream.ToArray();
    }

    [Fact]
    public void NpyNeedsASingleInputModel()
    {
        var path = Path.Combine(_dir, "x.npy");
        Npy.Write(path, NpyArray.FromFloats(new float[3], 1, 3));
        Assert.Equal(1, CalibrationSet.Load(path, [Symbolic]).Count);
        var error = Assert.Throws<CompileException>(() => CalibrationSet.Load(path, [Symbolic, new InputSpec("y", DataType.Float, [null])]));
        Assert.Contains("2 inputs", error.Message);
    }

    [Fact]
    public void CalibratorRangesMatchTheTensorsInOrt()
    {
        var net = new Net();
        var x = net.BatchInput("x", 4);
        var relu = net.Op("Relu", [net.Op("MatMul", [x, net.Init("w", [4, 4], [1, 0, 0, 0, 0, 2, 0, 0, 0, 0, -1, 0, 0, 0, 0, 3])])]);
        net.Output(net.Op("Neg", [relu]));
        var data = new float[5 * 4];
        for (var i = 0; i < data.Length; i++)
            data[i] = i - 7;
        var set = CalibrationSet.Load(Write("cal.npz", data, 5, 4), [new InputSpec("x", DataType.Float, [null, 4])]);
        var table = Calibrator.Run(net.Model, set, 5, [new CalibrationTarget("x", -1), new CalibrationTarget(relu.Name, null)],
            CalibrationMethod.MinMax, 8, SessionOptions.Calibration, runBatch: 2);
        Assert.Equal(new ActivationRange("x", -7f, 12f), table.Find("x"));
        // relu(x W): columns scaled by 1, 2, -1, 3 -> the largest value is 3 * 12 = 36.
        Assert.Equal(new ActivationRange(relu.Name, 0f, 36f), table.Find(relu.Name));
        var moments = table.FindMoments("x")!.SecondMoments;
        Assert.Equal(4, moments.Length);
        Assert.Equal(Enumerable.Range(0, 5).Average(r => Math.Pow(r * 4 - 7, 2)), moments[0], 6);
    }
}
