using OnnxQuant.Passes.Rewrite;
using OnnxQuant.Passes.Units;
using OnnxQuant.Solvers;

namespace OnnxQuant.Passes.Compile;

/// <summary>One allocated unit in the report.</summary>
public sealed record UnitReport(string Name, string Layer, string OpType, int ChannelStart, int ChannelCount, long Size, int Bits, double PredictedDistortion);

/// <summary>A layer kept at the head width outside the budget, and why.</summary>
public sealed record HeadReport(string Layer, string OpType, long Size, int Bits, string Reason);

/// <summary>Sizes of the quantized weights: ideal packed bits and actual bytes, against float.</summary>
public sealed record SizeReport(long FloatWeightBytes, long IdealPackedBits, long QuantizedWeightBytes, long ModelBytes);

/// <summary>Predicted (sum of curves) and measured distortion of the features.</summary>
public sealed record DistortionReport(double Predicted, double Measured, int Samples, bool HeldOut, string Metric);

/// <summary>Wall time of one stage in seconds.</summary>
public sealed record StageTime(string Stage, double Seconds);

/// <summary>Everything <c>report.json</c> (schema <c>onnxquant.report/1</c>) holds for one target.</summary>
public sealed record CompileReport(
    string ToolVersion,
    double TargetBits,
    double Rate,
    string Solver,
    int MinBits,
    IReadOnlyList<string> Features,
    CurveMode CurveMode,
    bool CurvesFromCache,
    string WeightFormat,
    int ActBits,
    string ActCalibration,
    long Opset,
    IReadOnlyList<UnitReport> Units,
    IReadOnlyList<HeadReport> Heads,
    IReadOnlyList<SkippedLayer> Skipped,
    IReadOnlyList<UnitCurve> Curves,
    IReadOnlyList<LayerStorage> Layers,
    SizeReport Sizes,
    DistortionReport Distortion,
    IReadOnlyList<string> Notes,
    IReadOnlyList<StageTime> Timings)
{
    public const string Schema = "onnxquant.report/1";

    /// <summary>Per unit, the measured propagation gain behind its curve (gain curves measured in this compile).</summary>
    public IReadOnlyList<Curves.UnitGain> CurveGains { get; init; } = [];
}
