namespace OnnxQuant.Frontend;

/// <summary>
/// ONNX tensor element types, numbered as TensorProto.DataType in onnx.proto. Every project that talks about element
/// types (the IR, the runtime binding, the rewrite passes) uses this one enum, so the numbers exist in one place.
/// </summary>
public enum DataType
{
    Undefined = 0,
    Float = 1,
    UInt8 = 2,
    Int8 = 3,
    UInt16 = 4,
    Int16 = 5,
    Int32 = 6,
    Int64 = 7,
    String = 8,
    Bool = 9,
    Float16 = 10,
    Double = 11,
    UInt32 = 12,
    UInt64 = 13,
    Complex64 = 14,
    Complex128 = 15,
    BFloat16 = 16,
    Float8E4M3FN = 17,
    Float8E4M3FNUZ = 18,
    Float8E5M2 = 19,
    Float8E5M2FNUZ = 20,
    UInt4 = 21,
    Int4 = 22,
    Float4E2M1 = 23,
    Float8E8M0 = 24,
    UInt2 = 25,
    Int2 = 26,
}

/// <summary>Sizes and ranges of <see cref="DataType"/> values.</summary>
public static class DataTypes
{
    /// <summary>Bits one element occupies when packed (4 for INT4/UINT4/FLOAT4, 2 for INT2/UINT2); 0 for strings and undefined.</summary>
    public static int BitWidth(DataType type) => type switch
    {
        DataType.Bool or DataType.UInt8 or DataType.Int8 => 8,
        DataType.Float8E4M3FN or DataType.Float8E4M3FNUZ or DataType.Float8E5M2 or DataType.Float8E5M2FNUZ
            or DataType.Float8E8M0 => 8,
        DataType.UInt16 or DataType.Int16 or DataType.Float16 or DataType.BFloat16 => 16,
        DataType.Float or DataType.Int32 or DataType.UInt32 => 32,
        DataType.Double or DataType.Int64 or DataType.UInt64 or DataType.Complex64 => 64,
        DataType.Complex128 => 128,
        DataType.UInt4 or DataType.Int4 or DataType.Float4E2M1 => 4,
        DataType.UInt2 or DataType.Int2 => 2,
        _ => 0,
    };

    /// <summary>Bytes needed to store <paramref name="count"/> packed elements (sub-byte types round up).</summary>
    public static long ByteCount(DataType type, long count) => (count * BitWidth(type) + 7) / 8;

    /// <summary>True for the integer types whose elements are packed several to a byte.</summary>
    public static bool IsSubByte(DataType type) => BitWidth(type) is > 0 and < 8;
}
