namespace OnnxQuant.Passes.Quantization;

/// <summary>How quantized weights are stored in the output model.</summary>
public enum WeightFormat
{
    /// <summary>Integer initializers feeding DequantizeLinear, per output channel; Q/DQ on activations.</summary>
    Qdq,
    /// <summary>MatMul weights packed into com.microsoft MatMulNBits (weight-only, blocked); other layers as QDQ.</summary>
    MatMulNBits,
}
