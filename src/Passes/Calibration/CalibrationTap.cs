using OnnxQuant.Runtime;

namespace OnnxQuant.Passes.Calibration;

/// <summary>
/// Sees the values that stream through the calibration pass, so that what other passes need (the input rows of
/// quantized layers, the energy of the features, float activations at graph cuts) is collected in the pass that
/// already runs instead of another one.
/// </summary>
public interface ICalibrationTap
{
    /// <summary>Float tensors wanted besides the calibration targets, in every run; they become outputs of the calibration session.</summary>
    IReadOnlyCollection<string> ExtraTensors { get; }

    /// <summary>
    /// The samples whose calibration targets <see cref="Observe"/> sees whole (each in a run of its own); on the other
    /// samples only the <see cref="ExtraTensors"/> are handed over, and a min/max calibration reads just two scalars
    /// per target that the graph reduces itself, instead of copying every target tensor out of ONNX Runtime.
    /// </summary>
    IReadOnlySet<int> ObservedSamples { get; }

    /// <summary>
    /// Called once per batch for every extra tensor, and for every calibration target on the
    /// <see cref="ObservedSamples"/> (any sample when the calibration method needs the values anyway), with samples
    /// [<paramref name="firstSample"/>, <paramref name="firstSample"/> + <paramref name="count"/>) stacked in it.
    /// </summary>
    void Observe(string tensor, int firstSample, int count, float[] values, long[] shape);

    /// <summary>
    /// Calibration targets of which the tap reads only some elements on its <see cref="ObservedSamples"/>: once a run
    /// has shown a tensor's shape, later observed samples may hand over just the elements at
    /// <see cref="Selection"/> (gathered in the graph) through <see cref="ObserveSelection"/> instead of the whole
    /// tensor through <see cref="Observe"/>; both must give the tap the same thing.
    /// </summary>
    IReadOnlyCollection<string> SelectableTensors => [];

    /// <summary>The flattened positions of the elements wanted of <paramref name="tensor"/> on
    /// <paramref name="sample"/> (alone in its run, the tensor of <paramref name="shape"/>), -1 for an element the tap
    /// does not read; null when it wants the tensor whole.</summary>
    long[]? Selection(string tensor, int sample, long[] shape) => null;

    /// <summary>The elements at <see cref="Selection"/>'s positions, in its order (any value where it said -1).</summary>
    void ObserveSelection(string tensor, int sample, long[] shape, float[] selected) { }

    /// <summary>Samples [0, LeadingSamples) run one per run, and their <see cref="CapturedTensors"/> are handed over whole.</summary>
    int LeadingSamples { get; }

    /// <summary>Tensors of any type wanted as they are on the leading samples (graph inputs included).</summary>
    IReadOnlyCollection<string> CapturedTensors { get; }

    /// <summary>
    /// For a captured tensor that is only sampled: at most this many of its elements are wanted, every
    /// <c>max(1, ceil(n / m))</c>-th of its flattened values (n its length), which the calibration graph then selects
    /// itself instead of handing over the whole tensor; null = wanted whole.
    /// </summary>
    int? CaptureElements(string tensor);

    /// <summary>Called once per leading sample for every captured tensor (a 1-D tensor of the selected elements where
    /// <see cref="CaptureElements"/> asks for a sample).</summary>
    void Capture(string tensor, int sample, TensorData value);
}
