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

    /// <summary>
    /// The unit whose width this one takes, when both apply one weight (a detector head at every pyramid level): the
    /// allocator sees them as one unit, <see cref="TiedCurves"/>. Null: none.
    /// </summary>
    public string? TiedTo { get; init; }

    /// <summary>
    /// The measured propagation gain behind the curve (gain curves): the feature distortion one unit of squared error
    /// in the layer's output adds, per sample. It prices other errors injected at the same layer, such as the
    /// rounding of its quantized input. Null: not measured (exact or fast curves, or a file without it).
    /// </summary>
    public double? Gain { get; init; }
}

/// <summary>
/// Units that apply one stored weight take one width: each group becomes the unit it is tied to, with the group's
/// curves summed (each application's error reaches the measured output on its own path) and that unit's size (the
/// weight is stored once).
/// </summary>
public static class TiedCurves
{
    /// <summary>The units to allocate over, and for every tied unit the one whose width it takes.</summary>
    /// <param name="round">Applied to every sum (the compiler keeps measured numbers to 6 significant digits).</param>
    /// <exception cref="SolverException">A unit is tied to a unit that is absent, tied itself, or of other widths.</exception>
    public static (IReadOnlyList<UnitCurve> Units, IReadOnlyDictionary<string, string> TiedTo) Merge(IReadOnlyList<UnitCurve> units,
        Func<double, double> round)
    {
        var tiedTo = new Dictionary<string, string>(StringComparer.Ordinal);
        if (units.All(u => u.TiedTo is null))
            return (units, tiedTo);
        var byName = new Dictionary<string, UnitCurve>(StringComparer.Ordinal);
        foreach (var u in units)
            byName[u.Name] = u;
        var sums = new Dictionary<string, double[]>(StringComparer.Ordinal);
        foreach (var u in units.Where(u => u.TiedTo is not null))
        {
            if (!byName.TryGetValue(u.TiedTo!, out var target))
                throw new SolverException(SolverErrorKind.InvalidProblem, $"unit '{u.Name}' is tied to '{u.TiedTo}', which is not in the curves");
            if (target.TiedTo is not null)
                throw new SolverException(SolverErrorKind.InvalidProblem, $"unit '{u.Name}' is tied to '{target.Name}', which is tied to '{target.TiedTo}' itself: tie every unit of a group to the same one");
            if (!target.Bits.SequenceEqual(u.Bits))
                throw new SolverException(SolverErrorKind.InvalidProblem, $"tied units '{target.Name}' and '{u.Name}' have curves at different widths");
            var sum = sums.TryGetValue(target.Name, out var s) ? s : sums[target.Name] = target.Distortion.ToArray();
            for (var i = 0; i < sum.Length; i++)
                sum[i] = round(sum[i] + u.Distortion[i]);
            tiedTo[u.Name] = target.Name;
        }
        var merged = units.Where(u => u.TiedTo is null)
            .Select(u => sums.TryGetValue(u.Name, out var sum) ? u with { Distortion = sum } : u).ToList();
        return (merged, tiedTo);
    }
}
