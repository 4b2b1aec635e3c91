using OnnxQuant.Frontend;
using OnnxQuant.Passes.Calibration;
using OnnxQuant.Passes.Quantization;
using OnnxQuant.Passes.Units;
using OnnxQuant.Solvers;

namespace OnnxQuant.Passes.Curves;

/// <summary>One quantized activation tensor's share of the predicted feature distortion.</summary>
/// <param name="Tensor">The layer input the Q/DQ pair quantizes.</param>
/// <param name="Bits">Its width (16 for the tensors <c>--act16-tensors</c> raised).</param>
/// <param name="Step">Its quantization step (range / (2^bits - 1)).</param>
/// <param name="Distortion">Feature distortion its rounding adds, summed over the layers that read it.</param>
/// <param name="Layers">Those layers.</param>
public sealed record PricedActivation(string Tensor, int Bits, double Step, double Distortion, IReadOnlyList<string> Layers);

/// <summary>A layer input left out of the price, and why.</summary>
public sealed record UnpricedLayer(string Layer, string Reason);

/// <summary>
/// What quantizing the layer inputs adds to the feature distortion, per tensor (largest first): the part of the
/// measured distortion that the weight curves do not hold.
/// </summary>
public sealed record ActivationPrice(int Bits, IReadOnlyList<PricedActivation> Tensors, IReadOnlyList<UnpricedLayer> Unpriced)
{
    public double Total { get; } = StableRounding.Round(Tensors.Sum(t => t.Distortion));

    /// <summary>Whether any tensor was priced (else <see cref="Total"/> says nothing).</summary>
    public bool Priced => Tensors.Count > 0;

    /// <summary>The tensors raised to 16 bits, with what they were priced at the base width (empty when none).</summary>
    public IReadOnlyList<PricedActivation> RaisedFrom { get; init; } = [];

    /// <summary>One line for the console and the report's notes.</summary>
    public string Describe()
    {
        if (!Priced)
            return $"activations: the {Bits}-bit inputs of the quantized layers are not priced ({(Unpriced.Count > 0 ? Unpriced[0].Reason : "no layer input is quantized")}): " +
                   "the prediction holds the weights alone";
        var largest = Tensors.Take(3).Select(t => $"'{t.Tensor}' {t.Distortion:G3}{(t.Bits != Bits ? $" ({t.Bits}-bit)" : "")}");
        var layers = Tensors.Sum(t => t.Layers.Count);
        return $"activations: the {Bits}-bit inputs of {layers} layer(s) ({Tensors.Count} tensor(s)) priced at {Total:G3} of feature distortion " +
               $"(closed form on the calibration rows x each unit's gain; added to the weights' prediction)" +
               (RaisedFrom.Count > 0 ? $"; {RaisedFrom.Count} tensor(s) at 16 bits (--act16-tensors), priced {StableRounding.Round(RaisedFrom.Sum(t => t.Distortion)):G3} at {Bits} bits" : "") +
               (Tensors.Count > 0 ? $"; largest {string.Join(", ", largest)}" : "") +
               (Unpriced.Count > 0 ? $"; {Unpriced.Count} layer input(s) not priced ({Unpriced[0].Reason}{(Unpriced.Count > 1 ? ", ..." : "")})" : "");
    }
}

/// <summary>
/// Prices the activation quantization in front of each quantized layer the way the gain curves price its weights.
/// Quantizing layer u's input x to x + e adds W e to the layer output; per sample that is
/// <c>A_u = sum_rows ||W e_r||^2</c>, evaluated on the rows the calibration pass kept, each with its own rounding error
/// (<see cref="LayerInputRows.ActivationErrors"/>). The unit's measured propagation gain g_u (feature distortion per unit
/// of layer-output error, <see cref="UnitCurve.Gain"/>) turns it into feature distortion g_u A_u, summed over the units
/// (channel groups) of the layer and over the layers that read the tensor. Like the curves it assumes the errors add:
/// an activation's rounding is independent of the weights' and of other tensors'. Only inputs of layers with a
/// quantized activation are priced (the speed target's other quantized tensors are measured in its report instead).
/// </summary>
public static class ActivationPricing
{
    /// <param name="rowsOf">The calibration rows of a layer; null when none were kept.</param>
    /// <param name="quantizedInput">Whether the rewrite quantizes the layer's input (not for weight-only containers).</param>
    /// <param name="bits">The activations' width.</param>
    /// <param name="bitsOf">A tensor's own width when it differs (<c>--act16-tensors</c>); null: <paramref name="bits"/> for all.</param>
    public static ActivationPrice Run(Model model, IReadOnlyList<QuantUnit> units, IReadOnlyList<UnitCurve> curves,
        Func<QuantLayer, LayerInputRows?> rowsOf, CalibrationTable calibration, int bits, Func<QuantLayer, bool> quantizedInput, int threads,
        Func<string, int>? bitsOf = null)
    {
        var gainOf = curves.ToDictionary(c => c.Name, c => c.Gain, StringComparer.Ordinal);
        var unpriced = new List<UnpricedLayer>();
        var byTensor = new Dictionary<string, (int Bits, double Step, double Sum, List<string> Layers)>(StringComparer.Ordinal);
        foreach (var group in units.GroupBy(u => u.Layer))
        {
            var layer = group.Key;
            if (!layer.ReachesFeature || !quantizedInput(layer))
                continue;
            var layerUnits = group.ToList();
            string? reason = null;
            var rows = rowsOf(layer);
            if (layerUnits.Any(u => gainOf.GetValueOrDefault(u.Name) is null))
                reason = "the curves carry no measured gain (exact or fast curves, or a curves file without gains)";
            else if (rows is null || rows.RowCount == 0)
                reason = "no calibration rows were kept";
            else if (rows.Fallback is { } fallback)
                reason = fallback;
            var range = calibration.Find(layer.Activation);
            if (reason is null && range is null)
                reason = "no calibrated range";
            if (reason is not null)
            {
                unpriced.Add(new UnpricedLayer(layer.Name, reason));
                continue;
            }
            var width = bitsOf?.Invoke(layer.Activation) ?? bits;
            var parameters = QuantMath.ActivationParameters(range!.Min, range.Max, width);
            var weight = model.Graph.FindInitializer(layer.WeightName)!.Initializer!.ToFloatArray();
            var channel = rows!.ActivationErrors(weight, parameters, threads);
            double distortion = 0;
            foreach (var unit in layerUnits)
            {
                double local = 0;
                for (var c = unit.ChannelStart; c < unit.ChannelStart + unit.ChannelCount; c++)
                    local += channel[c];
                distortion += gainOf[unit.Name]!.Value * local;
            }
            if (!byTensor.TryGetValue(layer.Activation, out var entry))
                entry = (width, parameters.Scale, 0, []);
            entry.Layers.Add(layer.Name);
            byTensor[layer.Activation] = (entry.Bits, entry.Step, entry.Sum + distortion, entry.Layers);
        }
        var tensors = byTensor.Select(kv => new PricedActivation(kv.Key, kv.Value.Bits, kv.Value.Step, StableRounding.Round(kv.Value.Sum), kv.Value.Layers))
            .OrderByDescending(t => t.Distortion).ThenBy(t => t.Tensor, StringComparer.Ordinal).ToList();
        return new ActivationPrice(bits, tensors, unpriced);
    }

    /// <summary>
    /// The price with the <paramref name="count"/> tensors of the largest priced error raised to 16 bits, the most any
    /// choice of that many tensors removes from the prediction; <paramref name="reprice"/> prices the layers that read
    /// the given tensors at the given widths (only those are computed again).
    /// </summary>
    public static ActivationPrice Raise(ActivationPrice price, int count, Func<IReadOnlySet<string>, ActivationPrice> reprice)
    {
        var raised = RaiseOrder(price.Tensors).Take(count).ToList();
        var names = raised.Select(t => t.Tensor).ToHashSet(StringComparer.Ordinal);
        var again = reprice(names);
        var tensors = price.Tensors.Where(t => !names.Contains(t.Tensor)).Concat(again.Tensors)
            .OrderByDescending(t => t.Distortion).ThenBy(t => t.Tensor, StringComparer.Ordinal).ToList();
        return new ActivationPrice(price.Bits, tensors, price.Unpriced) { RaisedFrom = raised };
    }

    /// <summary>Relative grid the prices are snapped to before they are ranked for <see cref="Raise"/>.</summary>
    internal const double RankGrid = 1e-3;

    /// <summary>
    /// The tensors in the order they are raised: by price snapped to <see cref="RankGrid"/> of the largest, then by
    /// name. A price moves in its last digits with the machine's kernels (ONNX Runtime's, and the vector width of the
    /// dot products), and the raised set decides the artifact's bytes: prices closer than a thousandth of the largest
    /// are a tie, broken by name, so every machine raises the same tensors unless a price sits on a grid boundary.
    /// </summary>
    public static IEnumerable<PricedActivation> RaiseOrder(IReadOnlyList<PricedActivation> tensors)
    {
        var step = tensors.Count == 0 ? 0 : tensors.Max(t => t.Distortion) * RankGrid;
        return tensors.OrderByDescending(t => step > 0 ? Math.Round(t.Distortion / step) : 0).ThenBy(t => t.Tensor, StringComparer.Ordinal);
    }
}
