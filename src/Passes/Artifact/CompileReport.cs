using OnnxQuant.Passes.Allocate;
using OnnxQuant.Passes.Curves;
using OnnxQuant.Passes.Pipeline;
using OnnxQuant.Passes.Rewrite;
using OnnxQuant.Passes.Units;
using OnnxQuant.Passes.Verify;
using OnnxQuant.Solvers;

namespace OnnxQuant.Passes.Artifact;

/// <summary>One allocated unit in the report.</summary>
public sealed record UnitReport(string Name, string Layer, string OpType, int ChannelStart, int ChannelCount, long Size, int Bits, double PredictedDistortion);

/// <summary>Sizes of the quantized weights: ideal packed bits and actual bytes, against float.</summary>
public sealed record SizeReport(long FloatWeightBytes, long IdealPackedBits, long QuantizedWeightBytes, long ModelBytes);

/// <summary>
/// Predicted and measured distortion of the features. The prediction is the weights' (the sum of the allocated curves)
/// plus, where priced, the quantized activations' (<see cref="ActivationPrice"/>).
/// </summary>
public sealed record DistortionReport(double PredictedWeights, double Measured, int Samples, bool HeldOut, string Metric)
{
    /// <summary>What the quantized layer inputs add (null: float activations, or not priced).</summary>
    public double? PredictedActivations { get; init; }

    public double Predicted => PredictedActivations is { } a ? Quantization.StableRounding.Round(PredictedWeights + a) : PredictedWeights;
}

/// <summary>Box AP (0..1) of the float model and of this target's model on the evaluation set (<c>--eval-data</c>).</summary>
public sealed record AccuracyReport(double FloatAp, double QuantizedAp);

/// <summary>One width the repair raised: a unit from one width to another (32 = restored to float).</summary>
public sealed record RaisedUnit(string Unit, int FromBits, int ToBits);

/// <summary>
/// What the accuracy guard's repair did: the measured distortion (and AP drop, when measured) before and after, the
/// rate before and after (float weights count 32 bits), the rounds of rewrite and verify, and the units raised.
/// </summary>
public sealed record RepairReport(string Guard, double InitialMeasured, double FinalMeasured, double? InitialDrop, double? FinalDrop,
    double InitialRate, double FinalRate, int Rounds, bool Met, IReadOnlyList<RaisedUnit> Raised);

/// <summary>
/// What the speed target did and cost: the same allocation rewritten for size, measured on the same samples, gives
/// the distortion the extra activation quantization adds; the fusion check says what ONNX Runtime runs.
/// </summary>
public sealed record DeployReport(string Target, double SizeMeasured, int QuantizedTensors, IReadOnlyDictionary<string, int> IntegerOps,
    IReadOnlyList<string> NBitsLayers, int WeightDequantizeLeft, int IntegerKernels, IReadOnlyDictionary<string, int> OptimizedOpTypes)
{
    /// <summary>Layers whose INT32 bias needed a coarser weight scale in some channels (see the speed rewrite).</summary>
    public IReadOnlyList<Rewrite.BiasFit> BiasFits { get; init; } = [];

    public double ActivationCost(double measured) => measured - SizeMeasured;
}

/// <summary>Everything <c>report.json</c> (schema <c>onnxquant.report/1</c>) holds for one target.</summary>
public sealed record CompileReport
{
    public const string Schema = "onnxquant.report/1";

    public required string ToolVersion { get; init; }
    public required double TargetBits { get; init; }
    public required double Rate { get; init; }
    public required string Solver { get; init; }
    public required int MinBits { get; init; }
    public required IReadOnlyList<string> Features { get; init; }

    /// <summary>Each feature's weight in the metric (feature order); empty when every feature counts once.</summary>
    public IReadOnlyList<double> FeatureWeights { get; init; } = [];

    /// <summary>How the weights were measured from the task's annotations; null when they were not.</summary>
    public Measurement.TaskWeighting? TaskWeighting { get; init; }
    public required CurveMode CurveMode { get; init; }
    public required bool CurvesFromCache { get; init; }
    public required string WeightFormat { get; init; }
    public required int ActBits { get; init; }
    public required string ActCalibration { get; init; }
    public required long Opset { get; init; }
    public required IReadOnlyList<UnitReport> Units { get; init; }
    public required IReadOnlyList<HeadReport> Heads { get; init; }
    public required IReadOnlyList<SkippedLayer> Skipped { get; init; }
    public required IReadOnlyList<UnitCurve> Curves { get; init; }
    public required IReadOnlyList<LayerStorage> Layers { get; init; }
    public required SizeReport Sizes { get; init; }
    public required DistortionReport Distortion { get; init; }
    public required IReadOnlyList<string> Notes { get; init; }
    public IReadOnlyList<StageTime> Timings { get; init; } = [];

    /// <summary>Per unit, the measured propagation gain behind its curve (gain curves measured in this compile).</summary>
    public IReadOnlyList<UnitGain> CurveGains { get; init; } = [];

    /// <summary>The quantized activations' priced share, per tensor (with why a layer input was not priced); null when activations are float.</summary>
    public ActivationPrice? Activations { get; init; }

    /// <summary>Uniform widths at the same size, measured on the same samples; null when the compile had none.</summary>
    public UniformBaseline? Baseline { get; init; }

    /// <summary>AP figures when the compile evaluated (<c>--eval-data</c>); null otherwise.</summary>
    public AccuracyReport? Accuracy { get; init; }

    /// <summary>--compensation, and what each quantized layer got (empty when none).</summary>
    public string Compensation { get; init; } = "none";

    public IReadOnlyList<LayerCompensation> Compensated { get; init; } = [];

    /// <summary>What the accuracy guard's repair raised (null when no repair ran).</summary>
    public RepairReport? Repair { get; init; }

    /// <summary>The activation-aware scaling applied to the model before calibration (null: not run).</summary>
    public Smoothing.SmoothingResult? Smoothing { get; init; }

    /// <summary>The selections held at the float model's choice while measuring, and the artifact run as it ships
    /// (<see cref="Verify.HeldSelections"/>); null when the model makes none.</summary>
    public Verify.SelectionReport? Selection { get; init; }

    /// <summary>The speed target's placement, cost and fusion check; null for the size target.</summary>
    public DeployReport? Deploy { get; init; }
}
