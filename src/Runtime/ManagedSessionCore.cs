using System.Runtime.InteropServices;
using OnnxQuant.Frontend;
using Ort = Microsoft.ML.OnnxRuntime;
using OrtTensors = Microsoft.ML.OnnxRuntime.Tensors;

namespace OnnxQuant.Runtime;

/// <summary>A session on ONNX Runtime's managed API: OrtValues over pinned managed arrays in, copies out.</summary>
internal sealed class ManagedSessionCore : ISessionCore
{
    private readonly Ort.InferenceSession _session;
    private readonly Ort.RunOptions _runOptions = new();

    /// <summary>ONNX Runtime's run configuration key that frees the arena's unused chunks when a run ends.</summary>
    internal const string ArenaShrinkageKey = "memory.enable_memory_arena_shrinkage";

    public IReadOnlyList<TensorInfo> Inputs { get; }
    public IReadOnlyList<TensorInfo> Outputs { get; }

    public ManagedSessionCore(Ort.InferenceSession session, bool releaseArena = false)
    {
        _session = session;
        if (releaseArena)
            _runOptions.AddRunConfigEntry(ArenaShrinkageKey, "cpu:0");
        Inputs = session.InputNames.Select(n => Describe(n, session.InputMetadata[n])).ToList();
        Outputs = session.OutputNames.Select(n => Describe(n, session.OutputMetadata[n])).ToList();
    }

    private static TensorInfo Describe(string name, Ort.NodeMetadata metadata)
    {
        var kind = (ValueKind)(int)metadata.OnnxValueType; // both follow ONNXType's numbering
        if (kind != ValueKind.Tensor)
            return new TensorInfo(name, kind, DataType.Undefined, [], []);
        return new TensorInfo(name, kind, (DataType)(int)metadata.ElementDataType,
            metadata.Dimensions.Select(d => (long)d).ToArray(), metadata.SymbolicDimensions.Select(s => s ?? "").ToArray());
    }

    public NamedTensor[] Run(IReadOnlyList<NamedTensor> inputs, IReadOnlyList<string> outputNames)
    {
        var values = new List<Ort.OrtValue>(inputs.Count);
        var pins = new List<GCHandle>(inputs.Count);
        try
        {
            foreach (var input in inputs)
                values.Add(CreateValue(input, pins));
            using var results = RunChecked(inputs.Select(i => i.Name).ToList(), values, outputNames);
            var outputs = new NamedTensor[outputNames.Count];
            var i = 0;
            foreach (var value in results)
            {
                outputs[i] = new NamedTensor(outputNames[i], CopyOut(outputNames[i], value));
                i++;
            }
            return outputs;
        }
        finally
        {
            foreach (var value in values)
                value.Dispose();
            // Unpinned only after the values are released: they point into these arrays.
            foreach (var pin in pins)
                pin.Free();
        }
    }

    private Ort.IDisposableReadOnlyCollection<Ort.OrtValue> RunChecked(List<string> names, List<Ort.OrtValue> values, IReadOnlyList<string> outputNames)
    {
        try
        {
            return _session.Run(_runOptions, names, values, outputNames);
        }
        catch (Ort.OnnxRuntimeException ex)
        {
            throw OrtErrors.From(ex, "Run");
        }
    }

    private static Ort.OrtValue CreateValue(NamedTensor input, List<GCHandle> pins)
    {
        var data = input.Data;
        var shape = data.Shape;
        try
        {
            if (data.DataType == DataType.String)
            {
                var strings = (string[])data.Elements;
                var value = Ort.OrtValue.CreateTensorWithEmptyStrings(Ort.OrtAllocator.DefaultInstance, shape);
                for (var i = 0; i < strings.Length; i++)
                    value.StringTensorSetElementAt(strings[i].AsSpan(), i);
                return value;
            }
            // Not copied by ORT: the array stays pinned until the value is released after the run.
            var pin = GCHandle.Alloc(data.Elements, GCHandleType.Pinned);
            pins.Add(pin);
            return Ort.OrtValue.CreateTensorValueWithData(Ort.OrtMemoryInfo.DefaultInstance, (OrtTensors.TensorElementType)(int)data.DataType,
                shape, pin.AddrOfPinnedObject(), DataTypes.ByteCount(data.DataType, data.ElementCount));
        }
        catch (Ort.OnnxRuntimeException ex)
        {
            throw OrtErrors.From(ex, $"creating input '{input.Name}' ({data})");
        }
    }

    private static TensorData CopyOut(string name, Ort.OrtValue value)
    {
        if (value.OnnxType != Ort.OnnxValueType.ONNX_TYPE_TENSOR)
            throw new NotSupportedException($"output '{name}' is a {(ValueKind)(int)value.OnnxType}; only tensor outputs are supported");
        var info = value.GetTensorTypeAndShape();
        var type = (DataType)(int)info.ElementDataType;
        var shape = info.Shape;
        if (type == DataType.String)
            return TensorData.FromStrings(value.GetStringTensorAsArray(), shape);
        var clr = TensorData.ElementClrType(type);
        var elements = Array.CreateInstance(clr, info.ElementCount);
        value.GetTensorMutableRawData().CopyTo(TensorData.RawSpan(elements));
        return TensorData.Create(type, elements, shape);
    }

    public string EndProfiling()
    {
        try
        {
            return _session.EndProfiling();
        }
        catch (Ort.OnnxRuntimeException ex)
        {
            throw OrtErrors.From(ex, "EndProfiling");
        }
    }

    public void Dispose()
    {
        _session.Dispose();
        _runOptions.Dispose();
    }
}
