namespace OnnxQuant.Passes.Calibration;

/// <summary>
/// Sees the values that stream through the calibration pass, so that statistics other passes need (the input rows of
/// quantized layers, the energy of the features) are collected in the pass that already runs instead of another one.
/// </summary>
public interface ICalibrationTap
{
    /// <summary>Tensors wanted besides the calibration targets; they become outputs of the calibration session.</summary>
    IReadOnlyCollection<string> ExtraTensors { get; }

    /// <summary>
    /// Called once per batch for every calibration target and extra tensor, with samples
    /// [<paramref name="firstSample"/>, <paramref name="firstSample"/> + <paramref name="count"/>) stacked in it.
    /// </summary>
    void Observe(string tensor, int firstSample, int count, float[] values, long[] shape);
}
