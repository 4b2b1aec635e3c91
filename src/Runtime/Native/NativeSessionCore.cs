using System.Runtime.InteropServices;
using OnnxQuant.Frontend;
using Ort = Microsoft.ML.OnnxRuntime;

namespace OnnxQuant.Runtime.Native;

/// <summary>
/// A session opened through the C API, for models whose graph inputs or outputs carry an element type that ONNX
/// Runtime's managed API has no enum value for (INT4, UINT4, INT2, UINT2, FLOAT8*, FLOAT4E2M1): its InferenceSession
/// refuses to describe them and its OrtValue refuses to create or read them, while ORT runs them. It shares the managed
/// API's environment and session options; values are created from raw bytes with the numeric type id (<see cref="ElementTypeIds"/>).
/// </summary>
internal sealed unsafe class NativeSessionCore : ISessionCore
{
    private readonly OrtRuntime _runtime;
    private readonly OrtHandle _session;
    private readonly Utf8StringArray _inputNames;
    private readonly Utf8StringArray _outputNames;
    private readonly Dictionary<string, int> _inputIndex;
    private readonly Dictionary<string, int> _outputIndex;

    public IReadOnlyList<TensorInfo> Inputs { get; }
    public IReadOnlyList<TensorInfo> Outputs { get; }

    private OrtApi Api => _runtime.Native;

    private NativeSessionCore(OrtRuntime runtime, nint session)
    {
        _runtime = runtime;
        _session = new OrtHandle(session, runtime.Native.ReleaseSession);
        Inputs = ReadInfos(isInput: true);
        Outputs = ReadInfos(isInput: false);
        _inputNames = new Utf8StringArray(Inputs.Select(i => i.Name).ToList());
        _outputNames = new Utf8StringArray(Outputs.Select(o => o.Name).ToList());
        _inputIndex = Inputs.Select((info, i) => (info.Name, i)).ToDictionary(p => p.Name, p => p.i);
        _outputIndex = Outputs.Select((info, i) => (info.Name, i)).ToDictionary(p => p.Name, p => p.i);
    }

    public static NativeSessionCore FromPath(OrtRuntime runtime, string path, Ort.SessionOptions options)
    {
        var utf8 = Utf8.Encode(path);
        nint session;
        fixed (byte* p = utf8)
            runtime.Check(runtime.Native.CreateSession(runtime.Env.DangerousGetHandle(), p, options.DangerousGetHandle(), &session), $"loading {path}");
        return new NativeSessionCore(runtime, session);
    }

    public static NativeSessionCore FromBytes(OrtRuntime runtime, byte[] model, Ort.SessionOptions options)
    {
        nint session;
        // Pinned for the duration of the call only: ORT parses the bytes into its own graph.
        fixed (byte* p = model)
            runtime.Check(runtime.Native.CreateSessionFromArray(runtime.Env.DangerousGetHandle(), p, (nuint)model.Length,
                options.DangerousGetHandle(), &session), "loading the model from memory");
        return new NativeSessionCore(runtime, session);
    }

    private IReadOnlyList<TensorInfo> ReadInfos(bool isInput)
    {
        var session = _session.DangerousGetHandle();
        nuint count;
        _runtime.Check(isInput ? Api.SessionGetInputCount(session, &count) : Api.SessionGetOutputCount(session, &count), "SessionGetInputCount");
        var infos = new TensorInfo[(int)count];
        for (nuint i = 0; i < count; i++)
        {
            byte* namePtr;
            _runtime.Check(isInput
                ? Api.SessionGetInputName(session, i, _runtime.DefaultAllocator, &namePtr)
                : Api.SessionGetOutputName(session, i, _runtime.DefaultAllocator, &namePtr), "SessionGetName");
            string name;
            try
            {
                name = Utf8.Read(namePtr) ?? "";
            }
            finally
            {
                // The name was allocated with the allocator we passed, and goes back to it.
                _runtime.Check(Api.AllocatorFree(_runtime.DefaultAllocator, namePtr), "AllocatorFree");
            }
            nint typeInfo;
            _runtime.Check(isInput
                ? Api.SessionGetInputTypeInfo(session, i, &typeInfo)
                : Api.SessionGetOutputTypeInfo(session, i, &typeInfo), "SessionGetTypeInfo");
            try
            {
                infos[(int)i] = DescribeTypeInfo(name, typeInfo);
            }
            finally
            {
                Api.ReleaseTypeInfo(typeInfo);
            }
        }
        return infos;
    }

    private TensorInfo DescribeTypeInfo(string name, nint typeInfo)
    {
        int onnxType;
        _runtime.Check(Api.GetOnnxTypeFromTypeInfo(typeInfo, &onnxType), "GetOnnxTypeFromTypeInfo");
        if ((ValueKind)onnxType != ValueKind.Tensor)
            return new TensorInfo(name, (ValueKind)onnxType, DataType.Undefined, [], []);
        nint tensorInfo; // borrowed from typeInfo: not released here
        _runtime.Check(Api.CastTypeInfoToTensorInfo(typeInfo, &tensorInfo), "CastTypeInfoToTensorInfo");
        int elementType;
        _runtime.Check(Api.GetTensorElementType(tensorInfo, &elementType), "GetTensorElementType");
        nuint rank;
        _runtime.Check(Api.GetDimensionsCount(tensorInfo, &rank), "GetDimensionsCount");
        var dims = new long[(int)rank];
        var symbolic = new string[(int)rank];
        if (rank > 0)
        {
            var symbols = new nint[(int)rank];
            fixed (long* d = dims)
                _runtime.Check(Api.GetDimensions(tensorInfo, d, rank), "GetDimensions");
            fixed (nint* s = symbols)
                _runtime.Check(Api.GetSymbolicDimensions(tensorInfo, (byte**)s, rank), "GetSymbolicDimensions");
            for (var k = 0; k < symbolic.Length; k++)
                symbolic[k] = Utf8.Read((byte*)symbols[k]) ?? "";
        }
        return new TensorInfo(name, ValueKind.Tensor, ElementTypeIds.FromOrt(elementType), dims, symbolic);
    }

    public NamedTensor[] Run(IReadOnlyList<NamedTensor> inputs, IReadOnlyList<string> outputNames)
    {
        var inputNamePtrs = new nint[inputs.Count];
        for (var i = 0; i < inputs.Count; i++)
            inputNamePtrs[i] = (nint)_inputNames.Pointers[_inputIndex[inputs[i].Name]];
        var outputNamePtrs = new nint[outputNames.Count];
        for (var i = 0; i < outputNames.Count; i++)
            outputNamePtrs[i] = (nint)_outputNames.Pointers[_outputIndex[outputNames[i]]];

        var inputValues = new nint[inputs.Count];
        var pins = new GCHandle[inputs.Count];
        var outputValues = new nint[outputNames.Count];
        try
        {
            for (var i = 0; i < inputs.Count; i++)
                inputValues[i] = CreateValue(inputs[i], ref pins[i]);
            fixed (nint* inNames = inputNamePtrs, inValues = inputValues, outNames = outputNamePtrs, outValues = outputValues)
            {
                // NULL output values: ORT allocates them; they are copied out below and released in finally.
                _runtime.Check(Api.Run(_session.DangerousGetHandle(), 0, inNames, inValues, (nuint)inputs.Count,
                    outNames, (nuint)outputNames.Count, outValues), "Run");
            }
            var results = new NamedTensor[outputNames.Count];
            for (var i = 0; i < outputNames.Count; i++)
                results[i] = new NamedTensor(outputNames[i], CopyOut(outputNames[i], outputValues[i]));
            return results;
        }
        finally
        {
            foreach (var value in outputValues)
                if (value != 0)
                    Api.ReleaseValue(value);
            foreach (var value in inputValues)
                if (value != 0)
                    Api.ReleaseValue(value);
            // Unpinned only after ReleaseValue: the values point into these arrays.
            foreach (var pin in pins)
                if (pin.IsAllocated)
                    pin.Free();
        }
    }

    private nint CreateValue(NamedTensor input, ref GCHandle pin)
    {
        var data = input.Data;
        if (data.DataType == DataType.String)
            throw new NotSupportedException(
                $"input '{input.Name}': STRING tensors are not supported in a model whose inputs or outputs also carry sub-byte or FLOAT8 types");
        var shape = data.Shape;
        // Not copied by ORT: the array stays pinned until the value is released after the run.
        pin = GCHandle.Alloc(data.Elements, GCHandleType.Pinned);
        var bytes = DataTypes.ByteCount(data.DataType, data.ElementCount);
        nint value;
        fixed (long* s = shape)
            _runtime.Check(Api.CreateTensorWithDataAsOrtValue(_runtime.CpuMemoryInfo, (void*)pin.AddrOfPinnedObject(), (nuint)bytes,
                s, (nuint)shape.Length, ElementTypeIds.ToOrt(data.DataType), &value), $"creating input '{input.Name}' ({data})");
        return value;
    }

    private TensorData CopyOut(string name, nint value)
    {
        int valueType;
        _runtime.Check(Api.GetValueType(value, &valueType), "GetValueType");
        if ((ValueKind)valueType != ValueKind.Tensor)
            throw new NotSupportedException($"output '{name}' is a {(ValueKind)valueType}; only tensor outputs are supported");
        nint info;
        _runtime.Check(Api.GetTensorTypeAndShape(value, &info), "GetTensorTypeAndShape");
        int elementType;
        long[] shape;
        try
        {
            _runtime.Check(Api.GetTensorElementType(info, &elementType), "GetTensorElementType");
            nuint rank;
            _runtime.Check(Api.GetDimensionsCount(info, &rank), "GetDimensionsCount");
            shape = new long[(int)rank];
            fixed (long* d = shape)
                _runtime.Check(Api.GetDimensions(info, d, rank), "GetDimensions");
        }
        finally
        {
            Api.ReleaseTensorTypeAndShapeInfo(info);
        }
        var type = ElementTypeIds.FromOrt(elementType);
        if (type == DataType.String)
            throw new NotSupportedException(
                $"output '{name}': STRING tensors are not supported in a model whose inputs or outputs also carry sub-byte or FLOAT8 types");
        long count = 1;
        foreach (var d in shape)
            count *= d;
        var clr = TensorData.ElementClrType(type);
        var bytes = DataTypes.ByteCount(type, count);
        var elements = Array.CreateInstance(clr, clr == typeof(byte) ? bytes : count);
        if (bytes > 0)
        {
            void* source;
            _runtime.Check(Api.GetTensorMutableData(value, &source), "GetTensorMutableData");
            var destination = TensorData.RawSpan(elements);
            new ReadOnlySpan<byte>(source, checked((int)bytes)).CopyTo(destination);
            // ORT leaves the unused bits of a packed tensor's last byte uninitialized; zero them so equal tensors
            // have equal bytes.
            var usedBits = (int)(count * DataTypes.BitWidth(type) % 8);
            if (DataTypes.IsSubByte(type) && usedBits != 0)
                destination[^1] &= (byte)((1 << usedBits) - 1);
        }
        return TensorData.Create(type, elements, shape);
    }

    public string EndProfiling()
    {
        byte* path;
        _runtime.Check(Api.SessionEndProfiling(_session.DangerousGetHandle(), _runtime.DefaultAllocator, &path), "SessionEndProfiling");
        try
        {
            return Utf8.Read(path) ?? "";
        }
        finally
        {
            // Allocated with the allocator we passed, and goes back to it.
            _runtime.Check(Api.AllocatorFree(_runtime.DefaultAllocator, path), "AllocatorFree");
        }
    }

    public void Dispose()
    {
        _session.Dispose();
        _inputNames.Dispose();
        _outputNames.Dispose();
    }
}
