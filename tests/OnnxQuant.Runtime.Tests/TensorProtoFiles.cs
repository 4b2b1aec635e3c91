using System.Runtime.InteropServices;
using Google.Protobuf;
using OnnxQuant.Frontend;
using OnnxQuant.Frontend.Proto;

namespace OnnxQuant.Runtime.Tests;

/// <summary>Reads the serialized TensorProto files of the ONNX backend test suite into <see cref="TensorData"/>.</summary>
internal static class TensorProtoFiles
{
    /// <summary>The tensor in <paramref name="path"/>.</summary>
    /// <exception cref="InvalidDataException">Not a dense tensor this binding can hold (e.g. a SequenceProto file).</exception>
    public static TensorData Read(string path)
    {
        var proto = TensorProto.Parser.ParseFrom(File.ReadAllBytes(path));
        var type = (DataType)proto.DataType;
        if (type == DataType.Undefined)
            throw new InvalidDataException($"{path} holds no tensor (element type undefined)");
        var shape = proto.Dims.ToArray();
        long count = 1;
        foreach (var d in shape)
            count *= d;
        if (type == DataType.String)
            return TensorData.FromStrings(proto.StringData.Select(s => s.ToStringUtf8()).ToArray(), shape);
        if (!proto.RawData.IsEmpty)
            return TensorData.FromBytes(type, proto.RawData.ToByteArray(), shape);
        return TensorData.FromBytes(type, TypedFieldBytes(proto, type, count), shape);
    }

    /// <summary>The little-endian raw bytes of a tensor stored in the typed repeated fields.</summary>
    private static byte[] TypedFieldBytes(TensorProto p, DataType type, long count)
    {
        switch (type)
        {
            case DataType.Float: return MemoryMarshal.AsBytes(p.FloatData.ToArray().AsSpan()).ToArray();
            case DataType.Double: return MemoryMarshal.AsBytes(p.DoubleData.ToArray().AsSpan()).ToArray();
            case DataType.Int64: return MemoryMarshal.AsBytes(p.Int64Data.ToArray().AsSpan()).ToArray();
            case DataType.Int32: return MemoryMarshal.AsBytes(p.Int32Data.ToArray().AsSpan()).ToArray();
            case DataType.UInt64: return MemoryMarshal.AsBytes(p.Uint64Data.ToArray().AsSpan()).ToArray();
            case DataType.UInt32: return MemoryMarshal.AsBytes(p.Uint64Data.Select(v => (uint)v).ToArray().AsSpan()).ToArray();
            case DataType.Int8 or DataType.UInt8 or DataType.Bool or DataType.Float8E4M3FN or DataType.Float8E4M3FNUZ
                or DataType.Float8E5M2 or DataType.Float8E5M2FNUZ or DataType.Float8E8M0:
                return p.Int32Data.Select(v => (byte)v).ToArray();
            case DataType.Int16 or DataType.UInt16 or DataType.Float16 or DataType.BFloat16:
                return MemoryMarshal.AsBytes(p.Int32Data.Select(v => (ushort)v).ToArray().AsSpan()).ToArray();
            case DataType.Int4 or DataType.UInt4 or DataType.Int2 or DataType.UInt2 or DataType.Float4E2M1:
                // int32_data holds the packed bytes, one per entry.
                return p.Int32Data.Select(v => (byte)v).ToArray();
            default:
                throw new InvalidDataException($"element type {type} is not supported in tensor files");
        }
    }
}
