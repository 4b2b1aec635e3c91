namespace OnnxQuant.Runtime.Native;

/// <summary>
/// The slice of ONNX Runtime's OrtApi function table this binding calls, read once from the table the library hands
/// out. Slot numbers are positions in the OrtApi struct of onnxruntime_c_api.h; the table only grows at its end, so a
/// slot keeps its meaning in every later version.
/// </summary>
internal sealed unsafe class OrtApi
{
    // Every function that can fail returns an OrtStatus*; NULL means success.
    public readonly delegate* unmanaged<nint, int> GetErrorCode;
    public readonly delegate* unmanaged<nint, byte*> GetErrorMessage;
    public readonly delegate* unmanaged<int, byte*, nint*, nint> CreateEnv;
    public readonly delegate* unmanaged<nint, byte*, nint, nint*, nint> CreateSession;
    public readonly delegate* unmanaged<nint, void*, nuint, nint, nint*, nint> CreateSessionFromArray;
    public readonly delegate* unmanaged<nint, nint, nint*, nint*, nuint, nint*, nuint, nint*, nint> Run;
    public readonly delegate* unmanaged<nint*, nint> CreateSessionOptions;
    public readonly delegate* unmanaged<nint, byte*, nint> SetOptimizedModelFilePath;
    public readonly delegate* unmanaged<nint, int, nint> SetSessionExecutionMode;
    public readonly delegate* unmanaged<nint, byte*, nint> EnableProfiling;
    public readonly delegate* unmanaged<nint, int, nint> SetSessionGraphOptimizationLevel;
    public readonly delegate* unmanaged<nint, int, nint> SetIntraOpNumThreads;
    public readonly delegate* unmanaged<nint, int, nint> SetInterOpNumThreads;
    public readonly delegate* unmanaged<nint, nuint*, nint> SessionGetInputCount;
    public readonly delegate* unmanaged<nint, nuint*, nint> SessionGetOutputCount;
    public readonly delegate* unmanaged<nint, nuint, nint*, nint> SessionGetInputTypeInfo;
    public readonly delegate* unmanaged<nint, nuint, nint*, nint> SessionGetOutputTypeInfo;
    public readonly delegate* unmanaged<nint, nuint, nint, byte**, nint> SessionGetInputName;
    public readonly delegate* unmanaged<nint, nuint, nint, byte**, nint> SessionGetOutputName;
    public readonly delegate* unmanaged<nint, long*, nuint, int, nint*, nint> CreateTensorAsOrtValue;
    public readonly delegate* unmanaged<nint, void*, nuint, long*, nuint, int, nint*, nint> CreateTensorWithDataAsOrtValue;
    public readonly delegate* unmanaged<nint, int*, nint> IsTensor;
    public readonly delegate* unmanaged<nint, void**, nint> GetTensorMutableData;
    public readonly delegate* unmanaged<nint, byte**, nuint, nint> FillStringTensor;
    public readonly delegate* unmanaged<nint, nuint*, nint> GetStringTensorDataLength;
    public readonly delegate* unmanaged<nint, void*, nuint, nuint*, nuint, nint> GetStringTensorContent;
    public readonly delegate* unmanaged<nint, nint*, nint> CastTypeInfoToTensorInfo;
    public readonly delegate* unmanaged<nint, int*, nint> GetOnnxTypeFromTypeInfo;
    public readonly delegate* unmanaged<nint, int*, nint> GetTensorElementType;
    public readonly delegate* unmanaged<nint, nuint*, nint> GetDimensionsCount;
    public readonly delegate* unmanaged<nint, long*, nuint, nint> GetDimensions;
    public readonly delegate* unmanaged<nint, byte**, nuint, nint> GetSymbolicDimensions;
    public readonly delegate* unmanaged<nint, nint*, nint> GetTensorTypeAndShape;
    public readonly delegate* unmanaged<nint, int*, nint> GetValueType;
    public readonly delegate* unmanaged<int, int, nint*, nint> CreateCpuMemoryInfo;
    public readonly delegate* unmanaged<nint, void*, nint> AllocatorFree;
    public readonly delegate* unmanaged<nint*, nint> GetAllocatorWithDefaultOptions;
    public readonly delegate* unmanaged<nint, void> ReleaseEnv;
    public readonly delegate* unmanaged<nint, void> ReleaseStatus;
    public readonly delegate* unmanaged<nint, void> ReleaseMemoryInfo;
    public readonly delegate* unmanaged<nint, void> ReleaseSession;
    public readonly delegate* unmanaged<nint, void> ReleaseValue;
    public readonly delegate* unmanaged<nint, void> ReleaseTypeInfo;
    public readonly delegate* unmanaged<nint, void> ReleaseTensorTypeAndShapeInfo;
    public readonly delegate* unmanaged<nint, void> ReleaseSessionOptions;
    public readonly delegate* unmanaged<nint, nint, byte**, nint> SessionEndProfiling;
    public readonly delegate* unmanaged<byte***, int*, nint> GetAvailableProviders;
    public readonly delegate* unmanaged<byte**, int, nint> ReleaseAvailableProviders;
    public readonly delegate* unmanaged<nint, byte*, byte*, nint> AddSessionConfigEntry;
    public readonly delegate* unmanaged<nint, nint, nint> SessionOptionsAppendExecutionProvider_CUDA_V2;
    public readonly delegate* unmanaged<nint*, nint> CreateCUDAProviderOptions;
    public readonly delegate* unmanaged<nint, byte**, byte**, nuint, nint> UpdateCUDAProviderOptions;
    public readonly delegate* unmanaged<nint, void> ReleaseCUDAProviderOptions;

    /// <summary>The highest slot read; the table of the requested version must be at least this long.</summary>
    public const int HighestSlot = 208;

    public OrtApi(void** table)
    {
        GetErrorCode = (delegate* unmanaged<nint, int>)table[1];
        GetErrorMessage = (delegate* unmanaged<nint, byte*>)table[2];
        CreateEnv = (delegate* unmanaged<int, byte*, nint*, nint>)table[3];
        CreateSession = (delegate* unmanaged<nint, byte*, nint, nint*, nint>)table[7];
        CreateSessionFromArray = (delegate* unmanaged<nint, void*, nuint, nint, nint*, nint>)table[8];
        Run = (delegate* unmanaged<nint, nint, nint*, nint*, nuint, nint*, nuint, nint*, nint>)table[9];
        CreateSessionOptions = (delegate* unmanaged<nint*, nint>)table[10];
        SetOptimizedModelFilePath = (delegate* unmanaged<nint, byte*, nint>)table[11];
        SetSessionExecutionMode = (delegate* unmanaged<nint, int, nint>)table[13];
        EnableProfiling = (delegate* unmanaged<nint, byte*, nint>)table[14];
        SetSessionGraphOptimizationLevel = (delegate* unmanaged<nint, int, nint>)table[23];
        SetIntraOpNumThreads = (delegate* unmanaged<nint, int, nint>)table[24];
        SetInterOpNumThreads = (delegate* unmanaged<nint, int, nint>)table[25];
        SessionGetInputCount = (delegate* unmanaged<nint, nuint*, nint>)table[30];
        SessionGetOutputCount = (delegate* unmanaged<nint, nuint*, nint>)table[31];
        SessionGetInputTypeInfo = (delegate* unmanaged<nint, nuint, nint*, nint>)table[33];
        SessionGetOutputTypeInfo = (delegate* unmanaged<nint, nuint, nint*, nint>)table[34];
        SessionGetInputName = (delegate* unmanaged<nint, nuint, nint, byte**, nint>)table[36];
        SessionGetOutputName = (delegate* unmanaged<nint, nuint, nint, byte**, nint>)table[37];
        CreateTensorAsOrtValue = (delegate* unmanaged<nint, long*, nuint, int, nint*, nint>)table[48];
        CreateTensorWithDataAsOrtValue = (delegate* unmanaged<nint, void*, nuint, long*, nuint, int, nint*, nint>)table[49];
        IsTensor = (delegate* unmanaged<nint, int*, nint>)table[50];
        GetTensorMutableData = (delegate* unmanaged<nint, void**, nint>)table[51];
        FillStringTensor = (delegate* unmanaged<nint, byte**, nuint, nint>)table[52];
        GetStringTensorDataLength = (delegate* unmanaged<nint, nuint*, nint>)table[53];
        GetStringTensorContent = (delegate* unmanaged<nint, void*, nuint, nuint*, nuint, nint>)table[54];
        CastTypeInfoToTensorInfo = (delegate* unmanaged<nint, nint*, nint>)table[55];
        GetOnnxTypeFromTypeInfo = (delegate* unmanaged<nint, int*, nint>)table[56];
        GetTensorElementType = (delegate* unmanaged<nint, int*, nint>)table[60];
        GetDimensionsCount = (delegate* unmanaged<nint, nuint*, nint>)table[61];
        GetDimensions = (delegate* unmanaged<nint, long*, nuint, nint>)table[62];
        GetSymbolicDimensions = (delegate* unmanaged<nint, byte**, nuint, nint>)table[63];
        GetTensorTypeAndShape = (delegate* unmanaged<nint, nint*, nint>)table[65];
        GetValueType = (delegate* unmanaged<nint, int*, nint>)table[67];
        CreateCpuMemoryInfo = (delegate* unmanaged<int, int, nint*, nint>)table[69];
        AllocatorFree = (delegate* unmanaged<nint, void*, nint>)table[76];
        GetAllocatorWithDefaultOptions = (delegate* unmanaged<nint*, nint>)table[78];
        ReleaseEnv = (delegate* unmanaged<nint, void>)table[92];
        ReleaseStatus = (delegate* unmanaged<nint, void>)table[93];
        ReleaseMemoryInfo = (delegate* unmanaged<nint, void>)table[94];
        ReleaseSession = (delegate* unmanaged<nint, void>)table[95];
        ReleaseValue = (delegate* unmanaged<nint, void>)table[96];
        ReleaseTypeInfo = (delegate* unmanaged<nint, void>)table[98];
        ReleaseTensorTypeAndShapeInfo = (delegate* unmanaged<nint, void>)table[99];
        ReleaseSessionOptions = (delegate* unmanaged<nint, void>)table[100];
        SessionEndProfiling = (delegate* unmanaged<nint, nint, byte**, nint>)table[110];
        GetAvailableProviders = (delegate* unmanaged<byte***, int*, nint>)table[125];
        ReleaseAvailableProviders = (delegate* unmanaged<byte**, int, nint>)table[126];
        AddSessionConfigEntry = (delegate* unmanaged<nint, byte*, byte*, nint>)table[130];
        SessionOptionsAppendExecutionProvider_CUDA_V2 = (delegate* unmanaged<nint, nint, nint>)table[204];
        CreateCUDAProviderOptions = (delegate* unmanaged<nint*, nint>)table[205];
        UpdateCUDAProviderOptions = (delegate* unmanaged<nint, byte**, byte**, nuint, nint>)table[206];
        ReleaseCUDAProviderOptions = (delegate* unmanaged<nint, void>)table[208];
    }

    /// <summary>
    /// Turns a returned OrtStatus into an exception: NULL is success; otherwise the code and message are copied
    /// before the status is released, because the message lives inside the status.
    /// </summary>
    public void Check(nint status, string operation)
    {
        if (status == 0)
            return;
        var code = (OrtErrorCode)GetErrorCode(status);
        var message = Utf8.Read(GetErrorMessage(status)) ?? "(no message)";
        ReleaseStatus(status);
        throw new OrtException(code, $"{operation}: {message}", message);
    }
}
