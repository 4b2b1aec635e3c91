namespace OnnxQuant.Solvers;

/// <summary>
/// One quantizable unit (a layer or a group of its output channels): its size n_u in weights and its error curve
/// D_u(b), the distortion measured when only this unit is quantized at <c>Bits[i]</c> bits.
/// </summary>
/// <param name="Name">Unique unit name; allocations are reported by it.</param>
/// <param name="Size">Number of weights n_u (positive).</param>
/// <param name="Bits">Candidate bit widths, distinct, any order (they are sorted when the problem is built).</param>
/// <param name="Distortion">D_u(b) for each entry of <paramref name="Bits"/>: finite and non-negative.</param>
/// <param name="PinnedBits">
/// Fixed width for this unit (e.g. a detection head at 8 bits). A pinned unit counts in the rate and, if its curve
/// has the pinned width, in the distortion; it is exempt from the minimum bit width and its curve may be empty.
/// </param>
public sealed record UnitCurve(
    string Name,
    long Size,
    IReadOnlyList<int> Bits,
    IReadOnlyList<double> Distortion,
    int? PinnedBits = null)
{
    /// <summary>Optional subset of <see cref="Bits"/> this unit may take (e.g. widths a kernel supports); null = all.</summary>
    public IReadOnlyList<int>? AllowedBits { get; init; }
}
