using OnnxQuant.Frontend;

namespace OnnxQuant.Runtime.Native;

/// <summary>
/// ONNX Runtime's C enum ONNXTensorElementDataType follows TensorProto's data_type numbers up to FLOAT4E2M1 (23) and
/// then departs from them: ORT numbers UINT2 24, INT2 25 and FLOAT8E8M0 26, where ONNX has FLOAT8E8M0 24, UINT2 25 and
/// INT2 26 (checked against the 1.32 library by the element-type tests).
/// </summary>
internal static class ElementTypeIds
{
    public static int ToOrt(DataType type) => type switch
    {
        DataType.UInt2 => 24,
        DataType.Int2 => 25,
        DataType.Float8E8M0 => 26,
        _ => (int)type,
    };

    public static DataType FromOrt(int id) => id switch
    {
        24 => DataType.UInt2,
        25 => DataType.Int2,
        26 => DataType.Float8E8M0,
        _ => (DataType)id,
    };
}
