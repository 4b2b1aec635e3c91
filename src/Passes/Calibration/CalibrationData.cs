using System.Buffers.Binary;
using System.Globalization;
using System.Security.Cryptography;
using OnnxQuant.Data;
using OnnxQuant.Frontend;
using OnnxQuant.Passes.Pipeline;
using OnnxQuant.Runtime;

namespace OnnxQuant.Passes.Calibration;

/// <summary>A model input as calibration data must match it: name, element type and shape (null = symbolic).</summary>
public sealed record InputSpec(string Name, DataType DataType, IReadOnlyList<long?> Shape)
{
    /// <summary>Rows of the first axis one sample occupies: the fixed batch size, or 1 when the batch is symbolic.</summary>
    public long RowsPerSample => Shape.Count > 0 && Shape[0] is { } b && b > 0 ? b : 1;

    /// <summary>True when several samples can be stacked into one run along the first axis.</summary>
    public bool BatchIsSymbolic => Shape.Count > 0 && Shape[0] is null;

    public override string ToString() =>
        $"{Name} {DataType}[{string.Join(", ", Shape.Select(d => d?.ToString() ?? "?"))}]";
}

/// <summary>One input's values for a run of one or more samples stacked along the first axis.</summary>
public sealed record InputBatch(string Name, DataType DataType, long[] Shape, byte[] Data)
{
    /// <summary>The batch as an ONNX Runtime input (the bytes are not copied).</summary>
    public NamedTensor ToNamedTensor() => new(Name, TensorData.FromBytes(DataType, Data, Shape));
}

/// <summary>
/// Calibration samples checked against the model's inputs: every input has the same number of samples, the model's
/// element type, its fixed dimensions and no NaN or infinity. An array of the input's rank stacks samples along the
/// first axis (the input's batch axis: its fixed size is the rows of one sample, a symbolic one takes any number); an
/// array of one more rank than an input without a batch axis (e.g. [N, 3, H, W] for an input [3, H, W]) holds one
/// sample per entry of its first axis, fed one per run. Samples are kept as the arrays they came in (one per
/// input per file) and sliced on demand, so nothing is copied per sample until a batch is built. An array larger than
/// <see cref="DefaultMemoryBytes"/> is decompressed into a private temporary file instead of memory and its samples
/// are read back as runs need them (240 MB of 512x512 images held for a whole DETR-R50 compile before; a set larger
/// than the machine's memory, or than the 2 GiB of one array, could not be loaded at all).
/// </summary>
public sealed class CalibrationSet : IDisposable
{
    /// <summary>Largest array kept in memory; larger ones wait in a temporary file.</summary>
    public const long DefaultMemoryBytes = 32L << 20;

    /// <summary>What loading changed, for the compile's notes (float32 data converted to a half-precision input's type).</summary>
    public IReadOnlyList<string> Notes { get; init; } = [];

    private readonly IReadOnlyList<InputSpec> _inputs;
    // Per input: the source arrays in file order, and the first sample index each starts at.
    private readonly List<(INpyRows Array, int FirstSample)>[] _chunks;
    // Per input: true when its arrays carry an extra leading sample axis the model's input does not have.
    private readonly bool[] _stacked;
    private readonly string? _folder;

    private CalibrationSet(IReadOnlyList<InputSpec> inputs, List<(INpyRows, int)>[] chunks, bool[] stacked, int count, string source, string? folder)
    {
        _inputs = inputs;
        _chunks = chunks;
        _stacked = stacked;
        Count = count;
        Source = source;
        _folder = folder;
    }

    // Leading inputs whose arrays belong to the set this one was made from (see WithInputs): not released here.
    private int _borrowed;

    /// <summary>
    /// This set with more inputs, each given as one array with a leading sample axis (so a run takes one sample). The
    /// new set reads this one's arrays and releases only its own: dispose it first.
    /// </summary>
    public CalibrationSet WithInputs(IReadOnlyList<(InputSpec Spec, NpyArray Samples)> extra)
    {
        foreach (var (spec, samples) in extra)
            if (samples.Shape.Length == 0 || samples.Shape[0] == 0)
                throw new ArgumentException($"input '{spec.Name}' holds no samples", nameof(extra));
        var chunks = _chunks.Select(c => c.ToList()).Concat(extra.Select(e => new List<(INpyRows, int)> { (e.Samples, 0) })).ToArray();
        return new CalibrationSet([.. _inputs, .. extra.Select(e => e.Spec)], chunks, [.. _stacked, .. extra.Select(_ => true)], Count, Source, null)
        {
            Notes = Notes,
            _borrowed = _inputs.Count,
        };
    }

    /// <summary>Whether some samples are read from a temporary file rather than kept in memory.</summary>
    public bool IsSpilled => _chunks.Any(c => c.Any(x => x.Array is NpyArrayFile));

    /// <summary>The temporary folder of the spilled arrays; null when everything is in memory.</summary>
    internal string? SpillFolder => _folder;

    /// <summary>Closes and deletes the temporary file of the spilled arrays.</summary>
    public void Dispose() => Release(_chunks.Skip(_borrowed).SelectMany(c => c.Select(x => x.Array)), _folder);

    private static void Release(IEnumerable<INpyRows> arrays, string? folder)
    {
        foreach (var array in arrays)
            array.Dispose();
        if (folder is not null && Directory.Exists(folder))
            Directory.Delete(folder, recursive: true);
    }

    public IReadOnlyList<InputSpec> Inputs => _inputs;
    public int Count { get; }
    public string Source { get; }

    /// <summary>
    /// Loads an .npz (arrays keyed by input name), an .npy (single-input models) or a folder of them (read in
    /// ordinal file-name order, samples concatenated).
    /// </summary>
    /// <exception cref="CompileException">Missing, unknown or mismatched arrays; the message names the input.</exception>
    /// <exception cref="DataFormatException">A file that is not valid NumPy data.</exception>
    /// <param name="memoryBytes">Largest array kept in memory (see <see cref="DefaultMemoryBytes"/>).</param>
    public static CalibrationSet Load(string path, IReadOnlyList<InputSpec> inputs, long memoryBytes = DefaultMemoryBytes)
    {
        if (inputs.Count == 0)
            throw new CompileException("the model has no inputs to calibrate");
        string[] files;
        if (Directory.Exists(path))
        {
            files = Directory.GetFiles(path)
                .Where(f => f.EndsWith(".npz", StringComparison.OrdinalIgnoreCase) || f.EndsWith(".npy", StringComparison.OrdinalIgnoreCase))
                .OrderBy(f => f, StringComparer.Ordinal).ToArray();
            if (files.Length == 0)
                throw new CompileException($"{path}: folder holds no .npz or .npy files");
        }
        else if (File.Exists(path))
        {
            files = [path];
        }
        else
        {
            throw new CompileException($"{path}: calibration data not found (give an .npz, an .npy or a folder of them)");
        }

        var chunks = inputs.Select(_ => new List<(INpyRows, int)>()).ToArray();
        var counts = new int[inputs.Count];
        var stacked = new bool?[inputs.Count];
        string? folder = null;
        var spilled = 0;
        string SpillPath()
        {
            folder ??= ScratchFolder.Create("data");
            return Path.Combine(folder, $"{spilled++}.bin");
        }
        var loaded = new List<INpyRows>();
        var notes = new List<string>();
        try
        {
            foreach (var file in files)
            {
                var arrays = ReadFile(file, inputs, memoryBytes, SpillPath);
                for (var i = 0; i < inputs.Count; i++)
                    if (arrays[i].DataType == DataType.Float && inputs[i].DataType is DataType.Float16 or DataType.BFloat16)
                    {
                        arrays[i] = new HalfPrecisionRows(arrays[i], inputs[i].DataType);
                        var note = $"input '{inputs[i].Name}': float32 data converted to {(inputs[i].DataType == DataType.Float16 ? "float16" : "bfloat16")}, the model's input type (round to nearest, ties to even)";
                        if (!notes.Contains(note))
                            notes.Add(note);
                    }
                loaded.AddRange(arrays);
                int? fileSamples = null;
                for (var i = 0; i < inputs.Count; i++)
                {
                    var array = arrays[i];
                    var samples = Check(file, inputs[i], array, out var extraAxis);
                    if (stacked[i] is { } before && before != extraAxis)
                        throw new CompileException(
                            $"{file}: input '{inputs[i].Name}' has rank {array.Shape.Length} here but {array.Shape.Length + (extraAxis ? -1 : 1)} in an earlier file; use one layout");
                    stacked[i] = extraAxis;
                    if (fileSamples is { } n && n != samples)
                        throw new CompileException(
                            $"{file}: input '{inputs[i].Name}' has {samples} samples but '{inputs[0].Name}' has {n}; every input needs the same number");
                    fileSamples = samples;
                    chunks[i].Add((array, counts[i]));
                    counts[i] += samples;
                }
            }
            if (counts[0] == 0)
                throw new CompileException($"{path}: calibration data holds no samples");
        }
        catch
        {
            Release(loaded, folder);
            throw;
        }
        return new CalibrationSet(inputs, chunks, stacked.Select(x => x ?? false).ToArray(), counts[0], path, folder) { Notes = notes };
    }

    private static INpyRows[] ReadFile(string file, IReadOnlyList<InputSpec> inputs, long memoryBytes, Func<string> spillPath)
    {
        if (file.EndsWith(".npy", StringComparison.OrdinalIgnoreCase))
        {
            if (inputs.Count != 1)
                throw new CompileException(
                    $"{file}: an .npy file holds one array but the model has {inputs.Count} inputs ({string.Join(", ", inputs.Select(i => i.Name))}); use an .npz keyed by input name");
            return [Npy.ReadRows(file, memoryBytes, spillPath)];
        }
        // Arrays that name no input (e.g. image ids stored beside the images) are skipped unread; missing inputs are errors.
        var inputNames = inputs.Select(i => i.Name).ToHashSet(StringComparer.Ordinal);
        var named = Npz.ReadRows(file, inputNames.Contains, memoryBytes, spillPath, out var all);
        var byName = named.ToDictionary(a => a.Name, a => a.Array, StringComparer.Ordinal);
        var missing = inputs.FirstOrDefault(i => !byName.ContainsKey(i.Name));
        if (missing is not null)
        {
            foreach (var (_, array) in named)
                array.Dispose();
            throw new CompileException($"{file}: no array for model input '{missing.Name}' (the file holds {string.Join(", ", all.Select(n => $"'{n}'"))})");
        }
        return inputs.Select(i => byName[i.Name]).ToArray();
    }

    /// <summary>Validates one array against its input and returns its sample count.</summary>
    private static int Check(string file, InputSpec input, INpyRows array, out bool extraAxis)
    {
        var where = $"{file}: input '{input.Name}'";
        if (array.DataType != input.DataType)
            throw new CompileException($"{where} has element type {array.DataType}, the model expects {input.DataType}"
                + (Npy.IsSupported(input.DataType) ? $" (numpy dtype '{Npy.DescrOf(input.DataType)}': save the array with .astype(that dtype))" : ""));
        extraAxis = array.Shape.Length == input.Shape.Count + 1;
        if (array.Shape.Length != input.Shape.Count && !extraAxis)
            throw new CompileException(
                $"{where} has shape [{string.Join(", ", array.Shape)}], rank {array.Shape.Length}; the model expects rank {input.Shape.Count} {input} "
                + $"(or rank {input.Shape.Count + 1}: samples stacked on a new first axis)");
        var offset = extraAxis ? 1 : 0;
        for (var d = 1; d < array.Shape.Length; d++)
            if (input.Shape[d - offset] is { } fixedDim && fixedDim != array.Shape[d])
                throw new CompileException(
                    $"{where} has shape [{string.Join(", ", array.Shape)}]; dimension {d} is {array.Shape[d]} but the model expects {fixedDim} {input}");
        var rows = extraAxis ? 1 : input.RowsPerSample;
        if (array.Shape[0] % rows != 0)
            throw new CompileException(
                $"{where} has {array.Shape[0]} rows, not a multiple of the model's batch size {rows}");
        if (input.DataType is DataType.Float or DataType.Double or DataType.Float16 or DataType.BFloat16 && array.Shape[0] > 0)
        {
            // A few megabytes at a time: a spilled array is never whole in memory.
            var rowShape = array.Shape[1..];
            var rowElements = rowShape.Aggregate(1L, (a, b) => a * b);
            var block = Math.Max(1, (4L << 20) / Math.Max(1, rowElements));
            for (long first = 0; first < array.Shape[0]; first += block)
            {
                var n = Math.Min(block, array.Shape[0] - first);
                var values = TensorData.FromBytes(array.DataType, array.RowBytes(first, n), [n, .. rowShape]).ToFloats();
                for (var k = 0; k < values.Length; k++)
                    if (!float.IsFinite(values[k]))
                    {
                        var row = first + k / Math.Max(1, rowElements);
                        throw new CompileException($"{where} holds {(float.IsNaN(values[k]) ? "NaN" : "infinity")} in sample {row / rows} (row {row})");
                    }
            }
        }
        return checked((int)(array.Shape[0] / rows));
    }

    /// <summary>
    /// The one batching rule of every stage that streams samples through ONNX Runtime: samples
    /// [start, start + count) in runs of <paramref name="runBatch"/> stacked samples when every input's batch axis is
    /// symbolic, one sample per run otherwise. Each run is returned with its first sample index and sample count.
    /// </summary>
    public IEnumerable<(int Start, int Count, IReadOnlyList<InputBatch> Inputs)> Runs(int start, int count, int runBatch)
    {
        var step = SamplesPerRun(runBatch);
        for (var s = start; s < start + count; s += step)
        {
            var n = Math.Min(step, start + count - s);
            yield return (s, n, Batch(s, n));
        }
    }

    /// <summary>Samples stacked into one run: <paramref name="runBatch"/> when the batch axis is symbolic, else 1.</summary>
    public int SamplesPerRun(int runBatch) =>
        _inputs.All(i => i.BatchIsSymbolic) && !_stacked.Any(x => x) ? Math.Max(1, runBatch) : 1;

    /// <summary>
    /// Samples [start, start+count) stacked along the first axis, one <see cref="InputBatch"/> per input. With a
    /// fixed batch size, count must be 1.
    /// </summary>
    public IReadOnlyList<InputBatch> Batch(int start, int count)
    {
        if (start < 0 || count <= 0 || start + count > Count)
            throw new ArgumentOutOfRangeException(nameof(start), $"samples {start}..{start + count} outside 0..{Count}");
        var result = new InputBatch[_inputs.Count];
        if (count > 1 && _stacked.Any(x => x))
            throw new ArgumentOutOfRangeException(nameof(count), "an input without a batch axis takes one sample per run");
        for (var i = 0; i < _inputs.Count; i++)
        {
            var input = _inputs[i];
            var rows = _stacked[i] ? 1 : input.RowsPerSample;
            var pieces = new List<byte[]>();
            long[]? shape = null;
            for (var s = start; s < start + count;)
            {
                var (array, first) = _chunks[i].Last(c => c.FirstSample <= s);
                var available = (int)(array.Shape[0] / rows) - (s - first);
                var take = Math.Min(available, start + count - s);
                pieces.Add(array.RowBytes((s - first) * rows, take * rows));
                if (shape is null)
                {
                    shape = (long[])array.Shape.Clone();
                    shape[0] = take * rows;
                }
                s += take;
            }
            shape![0] = count * rows;
            if (_stacked[i])
                shape = shape[1..];
            var data = pieces.Count == 1 ? pieces[0] : pieces.SelectMany(p => p).ToArray();
            result[i] = new InputBatch(input.Name, input.DataType, shape, data);
        }
        return result;
    }

    /// <summary>
    /// What makes samples [0, <paramref name="count"/>) describe almost nothing, one line each for the compile's notes:
    /// a floating-point input that holds one value in every sample (blank images, a normalization that zeroed them),
    /// or samples that are all the same. Ranges, curves and compensation computed from such data describe one point
    /// of the input space, and the artifact looks fine until real inputs arrive.
    /// </summary>
    public IReadOnlyList<string> Degeneracies(int count)
    {
        count = Math.Min(count, Count);
        var lines = new List<string>();
        if (count == 0)
            return lines;
        var first = Batch(0, 1);
        // A small input (a scale factor, an image size) may well be the same number everywhere; an image may not.
        var constant = new bool[_inputs.Count];
        var value = new float[_inputs.Count];
        for (var i = 0; i < _inputs.Count; i++)
            if (_inputs[i].DataType is DataType.Float or DataType.Double or DataType.Float16
                && first[i].Shape.Aggregate(1L, (a, b) => a * b) >= ConstantCheckElements)
            {
                constant[i] = true;
                value[i] = TensorData.FromBytes(_inputs[i].DataType, first[i].Data, first[i].Shape).ToFloats()[0];
            }
        // One pass over the samples, stopping once neither can hold.
        var identical = count > 1;
        for (var s = 0; s < count && (identical || constant.Any(c => c)); s++)
        {
            var batch = s == 0 ? first : Batch(s, 1);
            for (var i = 0; i < _inputs.Count; i++)
                if (constant[i])
                {
                    var v = value[i];
                    constant[i] = TensorData.FromBytes(_inputs[i].DataType, batch[i].Data, batch[i].Shape).ToFloats().All(x => x.Equals(v));
                }
            if (s > 0 && identical)
                identical = batch.Zip(first).All(p => p.First.Data.AsSpan().SequenceEqual(p.Second.Data));
        }
        for (var i = 0; i < _inputs.Count; i++)
            if (constant[i])
                lines.Add($"calibration input '{_inputs[i].Name}' holds the single value {value[i].ToString("G6", CultureInfo.InvariantCulture)} in all {count} sample(s): " +
                          "the ranges and curves describe that one value; check the data (blank images, a normalization that zeroed them?)");
        // Constant inputs say it already when every input is one.
        if (identical && !constant.All(c => c))
            lines.Add($"all {count} calibration samples are identical: the ranges, curves and compensation see one input; give representative samples");
        return lines;
    }

    /// <summary>Elements one sample of an input needs before one value throughout it is worth a note.</summary>
    internal const int ConstantCheckElements = 64;

    /// <summary>SHA-256 of samples [0, count): input names, types, shapes and bytes, for cache keys and manifests.</summary>
    public string Hash(int count)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        Span<byte> buffer = stackalloc byte[8];
        for (var s = 0; s < count; s++)
        {
            foreach (var batch in Batch(s, 1))
            {
                sha.AppendData(System.Text.Encoding.UTF8.GetBytes(batch.Name));
                BinaryPrimitives.WriteInt32LittleEndian(buffer, (int)batch.DataType);
                sha.AppendData(buffer[..4]);
                foreach (var d in batch.Shape)
                {
                    BinaryPrimitives.WriteInt64LittleEndian(buffer, d);
                    sha.AppendData(buffer);
                }
                sha.AppendData(batch.Data);
            }
        }
        return Convert.ToHexString(sha.GetHashAndReset()).ToLowerInvariant();
    }
}
