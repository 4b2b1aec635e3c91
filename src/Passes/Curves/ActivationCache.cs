using OnnxQuant.Frontend;
using OnnxQuant.Runtime;
using OnnxQuant.Passes.Pipeline;

namespace OnnxQuant.Passes.Curves;

/// <summary>
/// Float activations at graph cuts, per tensor and sample, kept in memory up to a byte budget and spilled to raw files
/// in a private temporary folder beyond it (deleted on dispose), so the cache never holds more than the budget in
/// memory whatever the model size (see <see cref="ScratchFolder"/> for folders a killed compile leaves).
/// </summary>
public sealed class ActivationCache(long memoryBudgetBytes) : IDisposable
{
    private readonly Dictionary<(string, int), TensorData> _memory = [];
    private readonly Dictionary<(string, int), (string Path, DataType Type, long[] Shape)> _disk = [];
    private string? _folder;
    private int _files;

    public long MemoryBytes { get; private set; }
    public long SpilledBytes { get; private set; }

    public bool Contains(string tensor, int sample) => _memory.ContainsKey((tensor, sample)) || _disk.ContainsKey((tensor, sample));

    public void Put(string tensor, int sample, TensorData data)
    {
        var size = DataTypes.ByteCount(data.DataType, data.ElementCount);
        if (MemoryBytes + size <= memoryBudgetBytes)
        {
            _memory[(tensor, sample)] = data;
            MemoryBytes += size;
            return;
        }
        var bytes = data.ToBytes();
        _folder ??= ScratchFolder.Create("activations");
        var path = Path.Combine(_folder, $"{_files++}.bin");
        File.WriteAllBytes(path, bytes);
        _disk[(tensor, sample)] = (path, data.DataType, data.Shape);
        SpilledBytes += bytes.LongLength;
    }

    /// <summary>Element type and shape of a cached value, without reading a spilled one back.</summary>
    public (DataType Type, long[] Shape) Describe(string tensor, int sample) =>
        _memory.TryGetValue((tensor, sample), out var data) ? (data.DataType, data.Shape) : (_disk[(tensor, sample)].Type, _disk[(tensor, sample)].Shape);

    public TensorData Get(string tensor, int sample)
    {
        if (_memory.TryGetValue((tensor, sample), out var data))
            return data;
        var (path, type, shape) = _disk[(tensor, sample)];
        return TensorData.FromBytes(type, File.ReadAllBytes(path), shape);
    }

    public void Dispose()
    {
        _memory.Clear();
        if (_folder is not null && Directory.Exists(_folder))
            Directory.Delete(_folder, true);
        _folder = null;
    }
}
