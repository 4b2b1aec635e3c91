using System.Runtime.InteropServices;
using System.Text;
using OnnxQuant.Frontend;
using OnnxQuant.Runtime.Native;

namespace OnnxQuant.Runtime;

/// <summary>
/// A model loaded into ONNX Runtime, ready to run. Runs are thread-safe; inputs are read in place (pinned for the call)
/// and outputs are copied into managed arrays before the native values are released.
/// </summary>
public sealed unsafe class InferenceSession : IDisposable
{
    private readonly OrtRuntime _runtime;
    private readonly OrtHandle _session;
    private readonly Utf8StringArray _inputNames;
    private readonly Utf8StringArray _outputNames;
    private readonly Dictionary<string, int> _inputIndex;
    private readonly Dictionary<string, int> _outputIndex;

    /// <summary>Graph inputs that must or may be fed (initializers are not listed).</summary>
    public IReadOnlyList<TensorInfo> Inputs { get; }

    /// <summary>Graph outputs, in graph order.</summary>
    public IReadOnlyList<TensorInfo> Outputs { get; }

    /// <summary>The provider the session actually runs on (never <see cref="ExecutionProvider.Auto"/>).</summary>
    public ExecutionProvider ActiveProvider { get; }

    /// <summary>Why <see cref="ExecutionProvider.Auto"/> fell back to CPU; null when it did not.</summary>
    public string? ProviderNotice { get; }

    /// <summary>The options the session was created with.</summary>
    public SessionOptions Options { get; }

    private InferenceSession(OrtRuntime runtime, OrtHandle session, SessionOptions options, ExecutionProvider active, string? notice)
    {
        _runtime = runtime;
        _session = session;
        Options = options;
        ActiveProvider = active;
        ProviderNotice = notice;
        Inputs = ReadInfos(isInput: true);
        Outputs = ReadInfos(isInput: false);
        _inputNames = new Utf8StringArray(Inputs.Select(i => i.Name).ToList());
        _outputNames = new Utf8StringArray(Outputs.Select(o => o.Name).ToList());
        _inputIndex = Inputs.Select((info, i) => (info.Name, i)).ToDictionary(p => p.Name, p => p.i);
        _outputIndex = Outputs.Select((info, i) => (info.Name, i)).ToDictionary(p => p.Name, p => p.i);
    }

    /// <summary>Loads a model file (external data is resolved next to it).</summary>
    /// <exception cref="FileNotFoundException">No such file.</exception>
    /// <exception cref="OrtException">ONNX Runtime rejects the model.</exception>
    /// <exception cref="RuntimeSetupException">No library, or CUDA requested where it cannot run.</exception>
    public static InferenceSession Create(string modelPath, SessionOptions? options = null)
    {
        if (!File.Exists(modelPath))
            throw new FileNotFoundException($"model not found: {modelPath}", modelPath);
        var path = Utf8.Encode(Path.GetFullPath(modelPath));
        var runtime = OrtRuntime.Shared;
        return CreateWith(runtime, options ?? SessionOptions.Default, sessionOptions =>
        {
            nint session;
            fixed (byte* p = path)
                runtime.Api.Check(runtime.Api.CreateSession(runtime.Env, p, sessionOptions, &session), $"loading {modelPath}");
            return session;
        });
    }

    /// <summary>Loads a serialized model from memory (external data paths resolve against the working directory).</summary>
    /// <exception cref="OrtException">ONNX Runtime rejects the model.</exception>
    /// <exception cref="RuntimeSetupException">No library, or CUDA requested where it cannot run.</exception>
    public static InferenceSession Create(byte[] model, SessionOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        var runtime = OrtRuntime.Shared;
        return CreateWith(runtime, options ?? SessionOptions.Default, sessionOptions =>
        {
            nint session;
            // Pinned for the duration of the call only: ORT parses the bytes into its own graph.
            fixed (byte* p = model)
                runtime.Api.Check(
                    runtime.Api.CreateSessionFromArray(runtime.Env, p, (nuint)model.Length, sessionOptions, &session),
                    "loading the model from memory");
            return session;
        });
    }

    private static InferenceSession CreateWith(OrtRuntime runtime, SessionOptions options, Func<nint, nint> create)
    {
        switch (options.Provider)
        {
            case ExecutionProvider.Cpu:
                return new InferenceSession(runtime, CreateSession(runtime, options, cuda: false, create), options, ExecutionProvider.Cpu, null);
            case ExecutionProvider.Cuda:
                if (!runtime.HasCudaProvider)
                    throw new RuntimeSetupException(OrtRuntime.CudaMissingMessage(runtime, null));
                return new InferenceSession(runtime, CreateSession(runtime, options, cuda: true, create), options, ExecutionProvider.Cuda, null);
            default:
                string reason;
                if (runtime.HasCudaProvider)
                {
                    try
                    {
                        return new InferenceSession(runtime, CreateSession(runtime, options, cuda: true, create), options, ExecutionProvider.Cuda, null);
                    }
                    catch (RuntimeSetupException ex) when (ex.InnerException is OrtException ort)
                    {
                        reason = ort.ShortMessage;
                    }
                    catch (OrtException ex)
                    {
                        // A CUDA build can also fail only when the session initializes the provider (no driver, no GPU).
                        reason = ex.ShortMessage;
                    }
                }
                else
                {
                    reason = $"the library provides only {string.Join(", ", runtime.AvailableProviders)}";
                }
                var notice = $"notice: --ep auto runs on CPU: CUDA is not available ({OneLine(reason)}); set ONNXQUANT_ORT_LIB to a CUDA-enabled ONNX Runtime to use the GPU";
                var session = new InferenceSession(runtime, CreateSession(runtime, options, cuda: false, create), options, ExecutionProvider.Cpu, notice);
                runtime.NotifyFallbackOnce(notice);
                return session;
        }
    }

    private static OrtHandle CreateSession(OrtRuntime runtime, SessionOptions options, bool cuda, Func<nint, nint> create)
    {
        using var native = BuildOptions(runtime, options, cuda);
        return new OrtHandle(create(native.DangerousGetHandle()), runtime.Api.ReleaseSession);
    }

    private static OrtHandle BuildOptions(OrtRuntime runtime, SessionOptions options, bool cuda)
    {
        var api = runtime.Api;
        nint raw;
        api.Check(api.CreateSessionOptions(&raw), "CreateSessionOptions");
        var handle = new OrtHandle(raw, api.ReleaseSessionOptions);
        try
        {
            api.Check(api.SetSessionGraphOptimizationLevel(raw, (int)options.Optimization), "SetSessionGraphOptimizationLevel");
            var threads = options.IntraOpThreads;
            if (threads < 0)
                throw new ArgumentException($"IntraOpThreads must be >= 0 (0 = ONNX Runtime's default), got {threads}");
            if (options.Deterministic)
            {
                api.Check(api.SetSessionExecutionMode(raw, 0 /* ORT_SEQUENTIAL */), "SetSessionExecutionMode");
                api.Check(api.SetInterOpNumThreads(raw, 1), "SetInterOpNumThreads");
                if (threads == 0)
                    threads = 1;
            }
            if (threads > 0)
                api.Check(api.SetIntraOpNumThreads(raw, threads), "SetIntraOpNumThreads");
            if (options.OptimizedModelPath is { } optimized)
            {
                var path = Utf8.Encode(Path.GetFullPath(optimized));
                fixed (byte* p = path)
                    api.Check(api.SetOptimizedModelFilePath(raw, p), "SetOptimizedModelFilePath");
            }
            if (options.ProfilePrefix is { } prefix)
            {
                var bytes = Utf8.Encode(prefix);
                fixed (byte* p = bytes)
                    api.Check(api.EnableProfiling(raw, p), "EnableProfiling");
            }
            foreach (var entry in options.ConfigEntries)
            {
                var key = Utf8.Encode(entry.Key);
                var value = Utf8.Encode(entry.Value);
                fixed (byte* k = key, v = value)
                    api.Check(api.AddSessionConfigEntry(raw, k, v), $"session config entry {entry.Key}={entry.Value}");
            }
            if (cuda)
                AppendCuda(runtime, raw, options.DeviceId);
            return handle;
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    private static void AppendCuda(OrtRuntime runtime, nint sessionOptions, int deviceId)
    {
        var api = runtime.Api;
        nint cudaOptions;
        api.Check(api.CreateCUDAProviderOptions(&cudaOptions), "CreateCUDAProviderOptions");
        using var owner = new OrtHandle(cudaOptions, api.ReleaseCUDAProviderOptions);
        using var keys = new Utf8StringArray(["device_id"]);
        using var values = new Utf8StringArray([deviceId.ToString(System.Globalization.CultureInfo.InvariantCulture)]);
        try
        {
            api.Check(api.UpdateCUDAProviderOptions(cudaOptions, keys.Pointers, values.Pointers, 1), "UpdateCUDAProviderOptions");
            api.Check(api.SessionOptionsAppendExecutionProvider_CUDA_V2(sessionOptions, cudaOptions), "appending the CUDA execution provider");
        }
        catch (OrtException ex)
        {
            throw new RuntimeSetupException(OrtRuntime.CudaMissingMessage(runtime, ex.ShortMessage), ex);
        }
    }

    private IReadOnlyList<TensorInfo> ReadInfos(bool isInput)
    {
        var api = _runtime.Api;
        var session = _session.DangerousGetHandle();
        nuint count;
        api.Check(isInput ? api.SessionGetInputCount(session, &count) : api.SessionGetOutputCount(session, &count), "SessionGetInputCount");
        var infos = new TensorInfo[(int)count];
        for (nuint i = 0; i < count; i++)
        {
            byte* namePtr;
            api.Check(isInput
                ? api.SessionGetInputName(session, i, _runtime.DefaultAllocator, &namePtr)
                : api.SessionGetOutputName(session, i, _runtime.DefaultAllocator, &namePtr), "SessionGetName");
            string name;
            try
            {
                name = Utf8.Read(namePtr) ?? "";
            }
            finally
            {
                // The name was allocated with the allocator we passed, and goes back to it.
                api.Check(api.AllocatorFree(_runtime.DefaultAllocator, namePtr), "AllocatorFree");
            }
            nint typeInfo;
            api.Check(isInput
                ? api.SessionGetInputTypeInfo(session, i, &typeInfo)
                : api.SessionGetOutputTypeInfo(session, i, &typeInfo), "SessionGetTypeInfo");
            try
            {
                infos[(int)i] = DescribeTypeInfo(name, typeInfo);
            }
            finally
            {
                api.ReleaseTypeInfo(typeInfo);
            }
        }
        return infos;
    }

    private TensorInfo DescribeTypeInfo(string name, nint typeInfo)
    {
        var api = _runtime.Api;
        int onnxType;
        api.Check(api.GetOnnxTypeFromTypeInfo(typeInfo, &onnxType), "GetOnnxTypeFromTypeInfo");
        if ((ValueKind)onnxType != ValueKind.Tensor)
            return new TensorInfo(name, (ValueKind)onnxType, DataType.Undefined, [], []);
        nint tensorInfo; // borrowed from typeInfo: not released here
        api.Check(api.CastTypeInfoToTensorInfo(typeInfo, &tensorInfo), "CastTypeInfoToTensorInfo");
        int elementType;
        api.Check(api.GetTensorElementType(tensorInfo, &elementType), "GetTensorElementType");
        nuint rank;
        api.Check(api.GetDimensionsCount(tensorInfo, &rank), "GetDimensionsCount");
        var dims = new long[(int)rank];
        var symbolic = new string[(int)rank];
        if (rank > 0)
        {
            var symbols = new nint[(int)rank];
            fixed (long* d = dims)
                api.Check(api.GetDimensions(tensorInfo, d, rank), "GetDimensions");
            fixed (nint* s = symbols)
                api.Check(api.GetSymbolicDimensions(tensorInfo, (byte**)s, rank), "GetSymbolicDimensions");
            for (var k = 0; k < symbolic.Length; k++)
                symbolic[k] = Utf8.Read((byte*)symbols[k]) ?? "";
        }
        return new TensorInfo(name, ValueKind.Tensor, (DataType)elementType, dims, symbolic);
    }

    /// <summary>
    /// Stops the profiler of a session created with <see cref="SessionOptions.ProfilePrefix"/> and returns the path of
    /// the JSON trace it wrote (read it with <see cref="OpProfile.Read"/>).
    /// </summary>
    /// <exception cref="InvalidOperationException">The session was created without profiling.</exception>
    public string EndProfiling()
    {
        ObjectDisposedException.ThrowIf(_session.IsClosed, this);
        if (Options.ProfilePrefix is null)
            throw new InvalidOperationException("the session was created without profiling (SessionOptions.ProfilePrefix)");
        var api = _runtime.Api;
        byte* path;
        api.Check(api.SessionEndProfiling(_session.DangerousGetHandle(), _runtime.DefaultAllocator, &path), "SessionEndProfiling");
        try
        {
            return Utf8.Read(path) ?? "";
        }
        finally
        {
            api.Check(api.AllocatorFree(_runtime.DefaultAllocator, path), "AllocatorFree");
        }
    }

    /// <summary>
    /// Runs the model. Inputs are matched by name; <paramref name="outputNames"/> selects outputs (default: all, in
    /// graph order). Returns the outputs in the requested order, copied into managed memory.
    /// </summary>
    /// <exception cref="ArgumentException">An input or output name the model does not have, or an input given twice.</exception>
    /// <exception cref="OrtException">ONNX Runtime refuses the inputs (missing input, wrong type or shape) or fails.</exception>
    public IReadOnlyList<NamedTensor> Run(IReadOnlyList<NamedTensor> inputs, IReadOnlyList<string>? outputNames = null)
    {
        ObjectDisposedException.ThrowIf(_session.IsClosed, this);
        ArgumentNullException.ThrowIfNull(inputs);
        var api = _runtime.Api;
        var inputNamePtrs = new nint[inputs.Count];
        var seen = new HashSet<string>();
        for (var i = 0; i < inputs.Count; i++)
        {
            var name = inputs[i].Name;
            if (!_inputIndex.TryGetValue(name, out var index))
                throw new ArgumentException($"the model has no input '{name}'; its inputs are: {string.Join(", ", Inputs.Select(x => x.ToString()))}");
            if (!seen.Add(name))
                throw new ArgumentException($"input '{name}' is given twice");
            inputNamePtrs[i] = (nint)_inputNames.Pointers[index];
        }
        var outputs = outputNames is null ? Outputs.Select(o => o.Name).ToList() : outputNames;
        var outputNamePtrs = new nint[outputs.Count];
        for (var i = 0; i < outputs.Count; i++)
        {
            if (!_outputIndex.TryGetValue(outputs[i], out var index))
                throw new ArgumentException($"the model has no output '{outputs[i]}'; its outputs are: {string.Join(", ", Outputs.Select(o => o.Name))}");
            outputNamePtrs[i] = (nint)_outputNames.Pointers[index];
        }

        var inputValues = new nint[inputs.Count];
        var pins = new GCHandle[inputs.Count];
        var outputValues = new nint[outputs.Count];
        try
        {
            for (var i = 0; i < inputs.Count; i++)
                inputValues[i] = CreateValue(inputs[i], ref pins[i]);
            fixed (nint* inNames = inputNamePtrs, inValues = inputValues, outNames = outputNamePtrs, outValues = outputValues)
            {
                // NULL output values: ORT allocates them; they are copied out below and released in finally.
                api.Check(api.Run(_session.DangerousGetHandle(), 0, inNames, inValues, (nuint)inputs.Count,
                    outNames, (nuint)outputs.Count, outValues), "Run");
            }
            var results = new NamedTensor[outputs.Count];
            for (var i = 0; i < outputs.Count; i++)
                results[i] = new NamedTensor(outputs[i], CopyOut(outputs[i], outputValues[i]));
            return results;
        }
        finally
        {
            foreach (var value in outputValues)
                if (value != 0)
                    api.ReleaseValue(value);
            foreach (var value in inputValues)
                if (value != 0)
                    api.ReleaseValue(value);
            // Unpinned only after ReleaseValue: the values point into these arrays.
            foreach (var pin in pins)
                if (pin.IsAllocated)
                    pin.Free();
        }
    }

    /// <summary>Runs one batch after another, yielding each batch's outputs before the next runs, so a caller that
    /// reduces them as they come never holds more than one batch of outputs.</summary>
    public IEnumerable<IReadOnlyList<NamedTensor>> RunBatches(IEnumerable<IReadOnlyList<NamedTensor>> batches, IReadOnlyList<string>? outputNames = null)
    {
        ArgumentNullException.ThrowIfNull(batches);
        foreach (var batch in batches)
            yield return Run(batch, outputNames);
    }

    private nint CreateValue(NamedTensor input, ref GCHandle pin)
    {
        var api = _runtime.Api;
        var data = input.Data;
        var shape = data.Shape;
        nint value;
        if (data.DataType == DataType.String)
        {
            fixed (long* s = shape)
                api.Check(api.CreateTensorAsOrtValue(_runtime.DefaultAllocator, s, (nuint)shape.Length, (int)DataType.String, &value),
                    $"creating input '{input.Name}'");
            try
            {
                using var strings = new Utf8StringArray((string[])data.Elements);
                api.Check(api.FillStringTensor(value, strings.Pointers, (nuint)strings.Count), $"filling input '{input.Name}'");
            }
            catch
            {
                api.ReleaseValue(value);
                throw;
            }
            return value;
        }
        // Not copied by ORT: the array stays pinned until the value is released after the run.
        pin = GCHandle.Alloc(data.Elements, GCHandleType.Pinned);
        var bytes = DataTypes.ByteCount(data.DataType, data.ElementCount);
        fixed (long* s = shape)
            api.Check(api.CreateTensorWithDataAsOrtValue(_runtime.CpuMemoryInfo, (void*)pin.AddrOfPinnedObject(), (nuint)bytes,
                s, (nuint)shape.Length, (int)data.DataType, &value), $"creating input '{input.Name}' ({data})");
        return value;
    }

    private TensorData CopyOut(string name, nint value)
    {
        var api = _runtime.Api;
        int valueType;
        api.Check(api.GetValueType(value, &valueType), "GetValueType");
        if ((ValueKind)valueType != ValueKind.Tensor)
            throw new NotSupportedException($"output '{name}' is a {(ValueKind)valueType}; only tensor outputs are supported");
        nint info;
        api.Check(api.GetTensorTypeAndShape(value, &info), "GetTensorTypeAndShape");
        int elementType;
        long[] shape;
        try
        {
            api.Check(api.GetTensorElementType(info, &elementType), "GetTensorElementType");
            nuint rank;
            api.Check(api.GetDimensionsCount(info, &rank), "GetDimensionsCount");
            shape = new long[(int)rank];
            fixed (long* d = shape)
                api.Check(api.GetDimensions(info, d, rank), "GetDimensions");
        }
        finally
        {
            api.ReleaseTensorTypeAndShapeInfo(info);
        }
        var type = (DataType)elementType;
        long count = 1;
        foreach (var d in shape)
            count *= d;
        if (type == DataType.String)
            return TensorData.FromStrings(ReadStrings(value, count), shape);
        var clr = TensorData.ElementClrType(type);
        var bytes = DataTypes.ByteCount(type, count);
        var elements = Array.CreateInstance(clr, clr == typeof(byte) ? bytes : count);
        if (bytes > 0)
        {
            void* source;
            api.Check(api.GetTensorMutableData(value, &source), "GetTensorMutableData");
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

    private string[] ReadStrings(nint value, long count)
    {
        var api = _runtime.Api;
        var result = new string[count];
        if (count == 0)
            return result;
        nuint length;
        api.Check(api.GetStringTensorDataLength(value, &length), "GetStringTensorDataLength");
        var buffer = new byte[Math.Max(1, (long)length)];
        var offsets = new nuint[count];
        fixed (byte* b = buffer)
        fixed (nuint* o = offsets)
            api.Check(api.GetStringTensorContent(value, b, length, o, (nuint)count), "GetStringTensorContent");
        for (var i = 0; i < count; i++)
        {
            var start = (int)offsets[i];
            var end = i + 1 < count ? (int)offsets[i + 1] : (int)length;
            result[i] = Encoding.UTF8.GetString(buffer, start, end - start);
        }
        return result;
    }

    private static string OneLine(string text) => text.ReplaceLineEndings(" ").Trim();

    public void Dispose()
    {
        _session.Dispose();
        _inputNames.Dispose();
        _outputNames.Dispose();
    }
}
