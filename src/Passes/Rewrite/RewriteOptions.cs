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

    /// <summary>
    /// List the initializers that the source model also had as graph inputs among the output's inputs again (only
    /// those left in float: a quantized weight's float tensor is gone). Off by default: they are weights.
    /// </summary>
    public bool KeepInitializerInputs { get; init; }

    /// <summary>
    /// Size target: store a layer whose channels need different containers (INT2/INT4/INT8) split by container
    /// instead of all in its widest one. The dequantized values are the same either way.
    /// </summary>
    public bool SplitContainers { get; init; } = true;

    /// <summary>What compensates the weights' rounding error (the curves are measured with the same).</summary>
    public Compensation Compensation { get; init; } = Compensation.None;

    /// <summary>
    /// Activation tensors quantized at 16 bits whatever the activation width (chosen by the compiler from their priced
    /// error, <c>--act16-tensors</c>); the size target only.
    /// </summary>
    public IReadOnlySet<string> Act16 { get; init; } = new HashSet<string>(StringComparer.Ordinal);

    public void Validate()
    {
        if (BlockSize is not (16 or 32 or 64 or 128))
            throw new CompileException($"--block-size {BlockSize}: MatMulNBits takes 16, 32, 64 or 128");
        if (Deploy == DeployTarget.Speed && Format != WeightFormat.Qdq)
            throw new CompileException("--deploy speed chooses the containers itself (MatMulNBits for MatMul/Gemm at <= 4 bits, INT8 otherwise); drop --format");
    }

    /// <summary>Checks what the speed target needs from the other stages' options.</summary>
    public void ValidateWith(int actBits, int act16Tensors = 0)
    {
        if (Deploy == DeployTarget.Speed && actBits != 8)
            throw new CompileException($"--deploy speed runs integer kernels on 8-bit activations; --act-bits {actBits} cannot be used with it (use --act-bits 8 or --deploy size)");
        if (Deploy == DeployTarget.Speed && act16Tensors > 0)
            throw new CompileException("--deploy speed runs integer kernels on 8-bit activations; --act16-tensors cannot be used with it (use --deploy size)");
    }

    // Compensation and the deploy target only when used, so manifests of compiles without them keep their bytes.
    public IEnumerable<OptionEntry> Manifest() =>
    [
        new("format", Format.ToString().ToLowerInvariant()),
        new("block_size", BlockSize.ToString(CultureInfo.InvariantCulture)),
        new("keep_initializer_inputs", KeepInitializerInputs ? "true" : "false"),
        .. Compensation == Compensation.None ? Array.Empty<OptionEntry>() : [new("compensation", Compensator.Name(Compensation))],
        .. Deploy == DeployTarget.Size ? Array.Empty<OptionEntry>() : [new("deploy", Deploy.ToString().ToLowerInvariant())],
    ];

    // The fake-quantized weights the curves measure follow the storage layout (blocked for MatMulNBits) and the
    // compensation (absent when none, so curves cached before compensation existed stay valid). Second-order rounding
    // names its column order and its statistics: curves cached when it took the columns in their own order, or read S
    // unshrunk where the rows were fewer than the inputs, measured other weights.
    public IEnumerable<string> CurveKey() =>
        ["format=" + Format, "block=" + BlockSize,
            .. Compensation == Compensation.None ? Array.Empty<string>() : ["compensation=" + Compensator.Name(Compensation)],
            .. Compensation is Compensation.Gptq or Compensation.All ? ["second-order=act-order,shrunk-below-rows"] : Array.Empty<string>()];
}
