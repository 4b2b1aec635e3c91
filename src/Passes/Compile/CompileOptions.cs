using OnnxQuant.Passes.Calibration;
using OnnxQuant.Passes.Quantization;

namespace OnnxQuant.Passes.Compile;

/// <summary>How quantized weights are stored in the output model.</summary>
public enum WeightFormat
{
    /// <summary>Integer initializers feeding DequantizeLinear, per output channel; Q/DQ on activations.</summary>
    Qdq,
    /// <summary>MatMul weights packed into com.microsoft MatMulNBits (weight-only, blocked); other layers as QDQ.</summary>
    MatMulNBits,
}

/// <summary>What one unit of the allocation is.</summary>
public enum Granularity
{
    /// <summary>A whole layer.</summary>
    Layer,
    /// <summary>A group of consecutive output channels of a layer.</summary>
    Group,
}

/// <summary>How error curves are obtained.</summary>
public enum CurveMode
{
    /// <summary>Measured in ONNX Runtime: units x bits x samples passes.</summary>
    Exact,
    /// <summary>Layer-output error from input second moments, scaled by a per-unit sensitivity measured once.</summary>
    Fast,
    /// <summary>
    /// Closed-form layer-local error at every width (full input second-moment matrix) times a propagation gain measured
    /// on a few samples with an error bar, on graph cuts (see <see cref="Curves.CutCurveMeasurer"/>).
    /// </summary>
    Gain,
}

/// <summary>Which allocator solves the bit allocation.</summary>
public enum SolverKind
{
    Dp,
    Lagrangian,
}

/// <summary>Everything that decides what <c>compile</c> produces. All of it goes into the manifest.</summary>
public sealed record CompileOptions
{
    /// <summary>Average weight bits over the allocated units; several targets compile a front from one calibration.</summary>
    public IReadOnlyList<double> TargetBits { get; init; } = [4];

    /// <summary>Samples used for calibration and curves (the first N of the data).</summary>
    public int CalibSamples { get; init; } = 64;

    /// <summary>Held-out samples (after the calibration ones) used to verify the output.</summary>
    public int VerifySamples { get; init; } = 16;

    /// <summary>Data for verification (same format as calibration data); null = the samples after the calibration ones.</summary>
    public string? VerifyData { get; init; }

    /// <summary>Tensors whose distortion the curves measure; empty = the model's float outputs.</summary>
    public IReadOnlyList<string> Features { get; init; } = [];

    /// <summary>Candidate weight bit widths (2..8).</summary>
    public IReadOnlyList<int> CandidateBits { get; init; } = QuantMath.DefaultCandidateBits;

    /// <summary>Least width a unit may get; null = max(2, floor(target) - 2).</summary>
    public int? MinBits { get; init; }

    public SolverKind Solver { get; init; } = SolverKind.Dp;

    /// <summary>Tolerance of the Lagrangian solver on the rate.</summary>
    public double Epsilon { get; init; } = 0.02;

    /// <summary>Bits of the activations entering quantized layers (0 = weight-only).</summary>
    public int ActBits { get; init; } = 8;

    public CalibrationMethod ActCalibration { get; init; } = CalibrationMethod.MinMax;

    public Granularity Granularity { get; init; } = Granularity.Layer;

    /// <summary>Output channels per unit with <see cref="Compile.Granularity.Group"/>.</summary>
    public int GroupSize { get; init; } = 64;

    /// <summary>Node name patterns (* and ? wildcards) or op types to keep in float.</summary>
    public IReadOnlyList<string> Exclude { get; init; } = [];

    /// <summary>Bits of the layers that do not reach the feature (detection heads), kept outside the budget.</summary>
    public int HeadBits { get; init; } = 8;

    public WeightFormat Format { get; init; } = WeightFormat.Qdq;

    /// <summary>Block length along the reduction axis for MatMulNBits (16, 32, 64 or 128).</summary>
    public int BlockSize { get; init; } = 32;

    public CurveMode Curves { get; init; } = CurveMode.Gain;

    /// <summary>Where curves are cached; null = no cache.</summary>
    public string? CacheDir { get; init; }

    /// <summary>Fail with exit 3 when the measured distortion exceeds this.</summary>
    public double? MaxDistortion { get; init; }

    /// <summary>Threads ONNX Runtime may use per session (0 = its default). Never changes the output bytes.</summary>
    public int Threads { get; init; }

    /// <summary>Samples stacked into one run when the model's batch axis is symbolic.</summary>
    public int RunBatch { get; init; } = 8;

    /// <summary>The least width a free unit may take for <paramref name="target"/>.</summary>
    public int MinBitsFor(double target) => MinBits ?? Math.Max(2, (int)Math.Floor(target) - 2);
}
