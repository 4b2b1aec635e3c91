namespace OnnxQuant.QatBridge;

/// <summary>Weight, activation and attention bit widths, written W-A-Attention (e.g. 4-4-8).</summary>
public sealed record BitWidths(int Weight, int Activation, int Attention)
{
    public const int MinBits = 2;
    public const int MaxBits = 16;

    /// <summary>Parses "W-A-Attention", e.g. "4-4-8".</summary>
    /// <exception cref="QatBridgeException">The text is not three integers in 2..16 separated by '-'.</exception>
    public static BitWidths Parse(string text)
    {
        var parts = text.Split('-');
        if (parts.Length != 3 || !parts.All(p => int.TryParse(p, out _)))
            throw new QatBridgeException($"bits '{text}' must be W-A-Attention, e.g. 4-4-8");
        var bits = new BitWidths(int.Parse(parts[0]), int.Parse(parts[1]), int.Parse(parts[2]));
        bits.Validate("bits");
        return bits;
    }

    public void Validate(string where)
    {
        CheckBits(Weight, $"{where}: weight_bits");
        CheckBits(Activation, $"{where}: act_bits");
        if (Attention != FloatBits)
            CheckBits(Attention, $"{where}: attention_bits (0 keeps attention float)");
    }

    /// <summary>Attention or activation bits 0: the tensor stays float (revision 2 of the recipe).</summary>
    public const int FloatBits = 0;

    /// <exception cref="QatBridgeException">The width is outside 2..16; the message names <paramref name="what"/>.</exception>
    public static void CheckBits(int bits, string what)
    {
        if (bits is < MinBits or > MaxBits)
            throw new QatBridgeException($"{what} is {bits}; bits must be an integer in {MinBits}..{MaxBits}");
    }

    public override string ToString() => $"{Weight}-{Activation}-{Attention}";
}

/// <summary>Calibrated float range of a layer's input activation; the trainer's initial activation step.</summary>
public sealed record ActivationRange(float Min, float Max);

/// <summary>
/// One quantized layer. <see cref="Name"/> is the layer's module path, i.e. its weight's name without the trailing
/// ".weight" (see <see cref="QatRecipe.LayerNameFromWeight"/>). Weight scales are symmetric, one per output channel.
/// <see cref="ActScale"/> and <see cref="ActZeroPoint"/> (revision 2) are the exact unsigned grid of the
/// post-training artifact's QuantizeLinear in front of the layer; <see cref="ActBits"/> 0 means its input stays float.
/// </summary>
public sealed record LayerRecipe(
    string Name,
    int WeightBits,
    int ActBits,
    IReadOnlyList<float>? WeightScales = null,
    ActivationRange? ActRange = null,
    float? ActScale = null,
    int? ActZeroPoint = null);

/// <summary>Where a recipe's bits came from.</summary>
public enum RecipeSource
{
    /// <summary>The same W-A-Attention bits everywhere.</summary>
    Uniform,
    /// <summary>Per-layer bits from the compiler's bit allocation.</summary>
    Allocation,
}

/// <summary>
/// A QAT recipe (schema <c>onnxquant.qat-recipe/1</c>): default bits, per-layer bits and initial scales, and the
/// layers that stay float. The PyTorch trainer (src/QatBridge/python) reads it; <see cref="QatRecipeJson"/> writes
/// and reads it.
/// </summary>
public sealed record QatRecipe(
    BitWidths Defaults,
    IReadOnlyList<LayerRecipe> Layers,
    IReadOnlyList<string> FloatLayers,
    string SourceModel,
    RecipeSource Source,
    int Revision = 1)
{
    public const string Schema = "onnxquant.qat-recipe/1";

    /// <summary>Revision 2 adds per-layer act_scale/act_zero_point, act_bits 0 and attention_bits 0; readers of
    /// revision 2 read revision-1 files unchanged.</summary>
    public const int LatestRevision = 2;

    /// <summary>Revision 2: an .npz beside the recipe with the post-training weights and biases per layer
    /// ("&lt;layer&gt;.weight", "&lt;layer&gt;.bias"), which the student starts from instead of the teacher's.</summary>
    public string? Weights { get; init; }

    /// <summary>The same bits for every layer except <paramref name="floatLayers"/> (module paths or prefixes).</summary>
    public static QatRecipe Uniform(BitWidths bits, IEnumerable<string>? floatLayers = null, string sourceModel = "")
    {
        var recipe = new QatRecipe(bits, [], Normalize(floatLayers), sourceModel, RecipeSource.Uniform);
        recipe.Validate();
        return recipe;
    }

    /// <summary>
    /// A recipe from a bit allocation: one entry per quantized layer (bits, calibrated weight scales and input
    /// range), layers kept float, and the defaults for anything the allocation did not cover (attention bits apply
    /// to q, k, v and the softmax output). Entries are sorted by name so the file is identical for identical input.
    /// </summary>
    /// <exception cref="QatBridgeException">A layer appears twice, or bits or scales are out of range.</exception>
    public static QatRecipe FromAllocation(string sourceModel, BitWidths defaults, IEnumerable<LayerRecipe> layers,
        IEnumerable<string>? floatLayers = null, int revision = 1)
    {
        var sorted = layers.OrderBy(l => l.Name, StringComparer.Ordinal).ToList();
        var recipe = new QatRecipe(defaults, sorted, Normalize(floatLayers), sourceModel, RecipeSource.Allocation, revision);
        recipe.Validate();
        return recipe;
    }

    /// <summary>"decoder.0.ffn.linear1.weight" -> "decoder.0.ffn.linear1"; other names are returned unchanged.</summary>
    public static string LayerNameFromWeight(string weightName) =>
        weightName.EndsWith(".weight", StringComparison.Ordinal) ? weightName[..^".weight".Length] : weightName;

    public LayerRecipe? Layer(string name) => Layers.FirstOrDefault(l => l.Name == name);

    /// <summary>Checks bits, scales, ranges and duplicate names; the message names the layer and the field.</summary>
    public void Validate()
    {
        Defaults.Validate("defaults");
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var layer in Layers)
        {
            var at = $"layers['{layer.Name}']";
            if (string.IsNullOrWhiteSpace(layer.Name))
                throw new QatBridgeException("a layer has an empty name");
            if (!seen.Add(layer.Name))
                throw new QatBridgeException($"layer '{layer.Name}' appears twice in layers");
            BitWidths.CheckBits(layer.WeightBits, $"{at}.weight_bits");
            if (layer.ActBits != BitWidths.FloatBits)
                BitWidths.CheckBits(layer.ActBits, $"{at}.act_bits");
            if (layer.ActScale.HasValue != layer.ActZeroPoint.HasValue)
                throw new QatBridgeException($"{at}: act_scale and act_zero_point come together");
            if (layer.ActScale is { } actScale && !(float.IsFinite(actScale) && actScale > 0))
                throw new QatBridgeException($"{at}.act_scale is {actScale}; it must be finite and > 0");
            if (layer.ActZeroPoint is { } zp && (layer.ActBits == BitWidths.FloatBits || zp < 0 || zp > (1 << layer.ActBits) - 1))
                throw new QatBridgeException($"{at}.act_zero_point {zp} is outside the unsigned {layer.ActBits}-bit range");
            if (layer.WeightScales is { } scales)
            {
                for (var i = 0; i < scales.Count; i++)
                {
                    if (!float.IsFinite(scales[i]) || scales[i] <= 0)
                        throw new QatBridgeException($"{at}.weight_scales[{i}] is {scales[i]}; scales must be finite and > 0");
                }
            }
            if (layer.ActRange is { } r && !(float.IsFinite(r.Min) && float.IsFinite(r.Max) && r.Min <= r.Max))
                throw new QatBridgeException($"{at}.act_range [{r.Min}, {r.Max}] must be finite with min <= max");
        }
        foreach (var f in FloatLayers)
        {
            if (seen.Contains(f))
                throw new QatBridgeException($"layer '{f}' is both quantized (layers) and float (float_layers)");
        }
    }

    private static IReadOnlyList<string> Normalize(IEnumerable<string>? names) =>
        (names ?? []).Where(n => !string.IsNullOrWhiteSpace(n)).Distinct(StringComparer.Ordinal)
            .OrderBy(n => n, StringComparer.Ordinal).ToList();
}
