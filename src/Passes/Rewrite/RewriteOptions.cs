using System.Globalization;
using OnnxQuant.Passes.Pipeline;
using OnnxQuant.Passes.Quantization;

namespace OnnxQuant.Passes.Rewrite;

/// <summary>What the artifact is built for.</summary>
public enum DeployTarget
{
    /// <summary>The smallest file: weights in the narrowest container, Q/DQ only in front of quantized layers.</summary>
    Size,
    /// <summary>
    /// The fastest run on ONNX Runtime's CPU execution provider: the same weight values in containers it has integer
    /// kernels for, and Q/DQ placed so that its QDQ fusions turn the graph into integer kernels end to end.
    /// </summary>
    Speed,
}

/// <summary>How the quantized weights are written into the output graph.</summary>
public sealed record RewriteOptions : IStageOptions
{
    public WeightFormat Format { get; init; } = WeightFormat.Qdq;

    public DeployTarget Deploy { get; init; } = DeployTarget.Size;

    /// <summary>Block length along the reduction axis for MatMulNBits (16, 32, 64 or 128).</summary>
    public int BlockSize { get; init; } = 32;

    public void Validate()
    {
        if (BlockSize is not (16 or 32 or 64 or 128))
            throw new CompileException($"--block-size {BlockSize}: MatMulNBits takes 16, 32, 64 or 128");
        if (Deploy == DeployTarget.Speed && Format != WeightFormat.Qdq)
            throw new CompileException("--deploy speed chooses the containers itself (MatMulNBits for MatMul/Gemm at <= 4 bits, INT8 otherwise); drop --format");
    }

    /// <summary>Checks what the speed target needs from the other stages' options.</summary>
    public void ValidateWith(int actBits)
    {
        if (Deploy == DeployTarget.Speed && actBits != 8)
            throw new CompileException($"--deploy speed runs integer kernels on 8-bit activations; --act-bits {actBits} cannot be used with it (use --act-bits 8 or --deploy size)");
    }

    public IEnumerable<OptionEntry> Manifest()
    {
        yield return new("format", Format.ToString().ToLowerInvariant());
        yield return new("block_size", BlockSize.ToString(CultureInfo.InvariantCulture));
        // Absent for the size target, so manifests written before the option existed stay byte-identical.
        if (Deploy != DeployTarget.Size)
            yield return new("deploy", Deploy.ToString().ToLowerInvariant());
    }

    // The fake-quantized weights the curves measure follow the storage layout (blocked for MatMulNBits).
    public IEnumerable<string> CurveKey() => ["format=" + Format, "block=" + BlockSize];
}
