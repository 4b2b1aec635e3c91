using Google.Protobuf;
using OnnxQuant.Frontend.Proto;

namespace OnnxQuant.Frontend;

/// <summary>When <see cref="ModelIO.Save"/> writes weights to an external data file.</summary>
public enum ExternalDataMode
{
    /// <summary>When the initializers together exceed <see cref="SaveOptions.ExternalThresholdBytes"/> (always above 2 GB).</summary>
    Auto,
    /// <summary>Every initializer of at least <see cref="SaveOptions.MinExternalTensorBytes"/> bytes.</summary>
    Always,
    /// <summary>Everything embedded; fails for models over protobuf's 2 GB limit.</summary>
    Never,
}

/// <summary>How <see cref="ModelIO.Save"/> writes a model.</summary>
public sealed record SaveOptions
{
    public ExternalDataMode ExternalData { get; init; } = ExternalDataMode.Auto;

    /// <summary>Total initializer bytes above which <see cref="ExternalDataMode.Auto"/> moves weights out (1 GiB).</summary>
    public long ExternalThresholdBytes { get; init; } = 1L << 30;

    /// <summary>Smaller tensors stay embedded even when weights go external (1 KiB).</summary>
    public long MinExternalTensorBytes { get; init; } = 1024;

    /// <summary>The external data file name, in the model's folder; default "&lt;model file name&gt;.data".</summary>
    public string? DataFileName { get; init; }

    /// <summary>Offsets of tensors of at least 1 MiB are multiples of this (so runtimes can map them); others of 64.</summary>
    public int LargeTensorAlignment { get; init; } = 4096;

    /// <summary>Flush the files to disk before the rename, so a crash leaves the old or the new model, never a torn
    /// one (default on; off only trades that guarantee for speed, e.g. in scratch folders).</summary>
    public bool Durable { get; init; } = true;
}

/// <summary>Options for <see cref="ModelIO.Load(string, LoadOptions?)"/>.</summary>
public sealed record LoadOptions
{
    /// <summary>Run <see cref="ModelValidator"/> and throw on errors (default on).</summary>
    public bool Validate { get; init; } = true;
}

/// <summary>
/// Reading and writing ONNX files. Loading parses the protobuf once (embedded weights are not copied again) and opens
/// external data without reading it; saving is atomic (temporary files, then rename) and deterministic.
/// </summary>
public static class ModelIO
{
    /// <summary>The newest IR version this frontend reads and writes.</summary>
    public const long NewestIrVersion = (long)Proto.Version.IrVersion;

    /// <summary>IR version given to models created in code: widely supported by runtimes and has INT4/UINT4.</summary>
    public const long DefaultIrVersion = 10;

    /// <summary>Protobuf cannot encode a message of 2 GiB or more.</summary>
    public const long ProtobufLimitBytes = int.MaxValue;

    /// <summary>Loads a model file; external data is resolved relative to its folder and never outside it.</summary>
    public static Model Load(string path, LoadOptions? options = null)
    {
        options ??= new LoadOptions();
        var fullPath = Path.GetFullPath(path);
        FileStream stream;
        try
        {
            FileIdentity.RequireRegularFile(fullPath, "model");
            stream = new FileStream(fullPath, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new FrontendException($"cannot open model '{path}': {ex.Message}", ex);
        }
        ModelProto proto;
        using (stream)
        {
            if (stream.Length >= ProtobufLimitBytes)
                throw new FrontendException(
                    $"'{path}' is {stream.Length} bytes; an ONNX protobuf cannot exceed 2 GiB (weights must be external data)");
            // Parsing from the stream copies each raw_data field once, into the buffer the tensor keeps.
            proto = Parse(new CodedInputStream(stream), path, stream.Length, () => File.ReadAllBytes(fullPath));
        }
        return Convert(proto, Path.GetDirectoryName(fullPath)!, path, options);
    }

    /// <summary>Loads a model from bytes; it must not use external data unless <paramref name="baseDirectory"/> is given.</summary>
    public static Model Load(byte[] bytes, string? baseDirectory = null, LoadOptions? options = null) =>
        Convert(Parse(new CodedInputStream(bytes), "model bytes", bytes.Length, () => bytes), baseDirectory, "model bytes",
            options ?? new LoadOptions());

    /// <inheritdoc cref="Load(byte[], string?, LoadOptions?)"/>
    public static Model Load(ReadOnlySpan<byte> bytes, string? baseDirectory = null, LoadOptions? options = null)
    {
        ModelProto proto;
        try
        {
            proto = ModelProto.Parser.ParseFrom(bytes);
        }
        catch (Exception ex) when (IsParseFailure(ex))
        {
            throw new FrontendException(
                $"model bytes are not a valid ONNX model: {ex.Message.TrimEnd('.')} ({ProtoDiagnosis.Locate(bytes.ToArray())})", ex);
        }
        return Convert(proto, baseDirectory, "model bytes", options ?? new LoadOptions());
    }

    private static ModelProto Parse(CodedInputStream input, string source, long length, Func<byte[]> reread)
    {
        var proto = new ModelProto();
        try
        {
            proto.MergeFrom(input);
            return proto;
        }
        catch (Exception ex) when (IsParseFailure(ex))
        {
            throw new FrontendException(
                $"'{source}' is not a valid ONNX model: {ex.Message.TrimEnd('.')} ({length} bytes; {Diagnose(reread)})", ex);
        }
    }

    private static string Diagnose(Func<byte[]> reread)
    {
        try { return ProtoDiagnosis.Locate(reread()); }
        catch (IOException) { return "the file could not be read again to locate the damage"; }
    }

    private static bool IsParseFailure(Exception ex) =>
        ex is InvalidProtocolBufferException or IOException or ArgumentException or InvalidOperationException
            or IndexOutOfRangeException or OverflowException or FormatException or InsufficientExecutionStackException;

    private static Model Convert(ModelProto proto, string? baseDirectory, string source, LoadOptions options)
    {
        Model model;
        try
        {
            model = new ProtoReader(baseDirectory).ReadModel(proto);
            if (options.Validate)
                ModelValidator.Validate(model).ThrowIfInvalid(source);
        }
        catch (FrontendException ex) when (ex.Message.StartsWith($"'{source}'", StringComparison.Ordinal))
        {
            throw;
        }
        catch (FrontendException ex)
        {
            throw new FrontendException($"'{source}': {ex.Message}", ex);
        }
        catch (Exception ex) when (ex is not OutOfMemoryException)
        {
            // Whatever a malformed file provokes, the caller sees the one bad-model exception (the cause stays inner).
            throw new FrontendException($"'{source}': the model cannot be read: {ex.Message}", ex);
        }
        return model;
    }

    /// <summary>The serialized model with all data embedded (for runtimes that create sessions from bytes).</summary>
    public static byte[] ToBytes(Model model)
    {
        var embedded = model.AllTensors().Sum(t => t.ByteSize);
        if (embedded >= ProtobufLimitBytes)
            throw new FrontendException(
                $"the model's tensors hold {embedded} bytes; more than protobuf's 2 GiB cannot be serialized in one piece: save it with external data");
        var proto = new ProtoWriter().WriteModel(model);
        CheckSize(proto);
        return proto.ToByteArray();
    }

    /// <summary>
    /// Writes the model to <paramref name="path"/> atomically. Weights go to an external data file next to it when
    /// they exceed the threshold (always when embedding would pass protobuf's 2 GiB limit). External data of the
    /// source model is streamed file to file, never held in memory as a whole.
    /// </summary>
    public static void Save(Model model, string path, SaveOptions? options = null)
    {
        options ??= new SaveOptions();
        var fullPath = Path.GetFullPath(path);
        var directory = Path.GetDirectoryName(fullPath)!;
        if (!Directory.Exists(directory))
            throw new FrontendException($"cannot save '{path}': folder '{directory}' does not exist");
        var initializerBytes = model.AllGraphs().SelectMany(g => g.Initializers).Sum(v => v.Initializer!.ByteSize);
        var attributeBytes = model.AllTensors().Sum(t => t.ByteSize) - initializerBytes;
        var external = options.ExternalData switch
        {
            ExternalDataMode.Always => true,
            ExternalDataMode.Never => false,
            _ => initializerBytes > options.ExternalThresholdBytes || initializerBytes + attributeBytes >= ProtobufLimitBytes - (64L << 20),
        };
        if (!external && initializerBytes + attributeBytes >= ProtobufLimitBytes)
            throw new FrontendException(
                $"cannot save '{path}' without external data: its tensors hold {initializerBytes + attributeBytes} bytes, over protobuf's 2 GiB limit");

        var dataName = options.DataFileName ?? Path.GetFileName(fullPath) + ".data";
        if (dataName.Contains('/') || dataName.Contains('\\') || dataName is "." or "..")
            throw new ArgumentException($"external data file name '{dataName}' must be a plain file name");
        var dataPath = Path.Combine(directory, dataName);
        var tempModel = TempPath(fullPath);
        var tempData = external ? TempPath(dataPath) : null;
        FileStream? data = null;
        try
        {
            if (tempData is not null)
                data = new FileStream(tempData, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20);
            var writer = new ProtoWriter(data is null ? null : t => Place(t, data, dataName, options));
            var proto = writer.WriteModel(model);
            CheckSize(proto);
            using (var output = new FileStream(tempModel, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20))
            {
                proto.WriteTo(output);
                output.Flush(flushToDisk: options.Durable);
            }
            if (data is not null)
            {
                var wroteAny = data.Length > 0;
                data.Flush(flushToDisk: options.Durable);
                data.Dispose();
                data = null;
                if (wroteAny) File.Move(tempData!, dataPath, overwrite: true);
                else File.Delete(tempData!);
            }
            File.Move(tempModel, fullPath, overwrite: true);
        }
        catch (IOException ex)
        {
            throw new FrontendException($"cannot save '{path}': {ex.Message}", ex);
        }
        finally
        {
            data?.Dispose();
            TryDelete(tempModel);
            if (tempData is not null) TryDelete(tempData);
        }
    }

    private static ExternalPlacement? Place(Tensor t, FileStream data, string location, SaveOptions options)
    {
        var size = t.ByteSize;
        if (size < options.MinExternalTensorBytes) return null;
        var alignment = size >= 1 << 20 ? Math.Max(1, options.LargeTensorAlignment) : 64;
        var offset = (data.Position + alignment - 1) / alignment * alignment;
        while (data.Position < offset) data.WriteByte(0);
        t.CopyRawDataTo(data);
        if (data.Position - offset != size)
            throw new FrontendException($"tensor '{t.Name}' produced {data.Position - offset} bytes, expected {size}");
        return new ExternalPlacement(location, offset, size);
    }

    private static void CheckSize(ModelProto proto)
    {
        // CalculateSize is an int: a negative or near-limit result means the message cannot be encoded.
        var size = proto.CalculateSize();
        if (size < 0 || size >= ProtobufLimitBytes)
            throw new FrontendException("the serialized model would exceed protobuf's 2 GiB limit: save it with external data");
    }

    private static string TempPath(string path) =>
        Path.Combine(Path.GetDirectoryName(path)!, $".{Path.GetFileName(path)}.{Guid.NewGuid():N}.tmp");

    private static void TryDelete(string path)
    {
        try { if (File.Exists(path)) File.Delete(path); }
        catch (IOException) { }
    }
}
