using System.Globalization;
using OnnxQuant.Passes.Calibration;
using OnnxQuant.Passes.Pipeline;

namespace OnnxQuant.Passes.Load;

/// <summary>Which samples calibrate and which verify.</summary>
public sealed record DataOptions : IStageOptions
{
    /// <summary>Samples used for calibration and curves (the first N of the data).</summary>
    public int CalibSamples { get; init; } = 64;

    /// <summary>Held-out samples (after the calibration ones, or from <see cref="VerifyData"/>) used to verify the output.</summary>
    public int VerifySamples { get; init; } = 16;

    /// <summary>Data for verification (same format as calibration data); null = the samples after the calibration ones.</summary>
    public string? VerifyData { get; init; }

    /// <summary>Largest data array kept in memory; larger ones wait in a temporary file (same samples, same bytes).</summary>
    public long MemoryBytes { get; init; } = CalibrationSet.DefaultMemoryBytes;

    public void Validate()
    {
        if (CalibSamples < 1)
            throw new CompileException($"--calib-samples {CalibSamples}: need at least one sample");
        if (VerifySamples < 0)
            throw new CompileException($"--verify-samples {VerifySamples} is negative");
    }

    public IEnumerable<OptionEntry> Manifest() =>
    [
        new("calib_samples", CalibSamples.ToString(CultureInfo.InvariantCulture)),
        new("verify_samples", VerifySamples.ToString(CultureInfo.InvariantCulture)),
        new("verify_data", VerifyData is null ? "calibration file" : Path.GetFileName(VerifyData)),
    ];

    public IEnumerable<string> CurveKey() => ["samples=" + CalibSamples];
}
