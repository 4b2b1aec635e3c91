using OnnxQuant.Frontend;
using System.Globalization;
using System.Text;
using System.Text.Json;

namespace OnnxQuant.QatBridge;

/// <summary>
/// Reads and writes <see cref="QatRecipe"/> as JSON (schema <c>onnxquant.qat-recipe/1</c>; the Python trainer's
/// onnxquant_qat.recipe reads the same fields). Output is deterministic: fixed field order, layers sorted by name,
/// floats in shortest round-trip form.
/// </summary>
public static class QatRecipeJson
{
    public static byte[] Serialize(QatRecipe recipe)
    {
        recipe.Validate();
        using var buffer = new MemoryStream();
        using (var w = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteString("schema", QatRecipe.Schema);
            if (recipe.Revision > 1) // revision-1 files stay byte-identical
                w.WriteNumber("revision", recipe.Revision);
            w.WriteString("source_model", recipe.SourceModel);
            w.WriteString("source", recipe.Source == RecipeSource.Uniform ? "uniform" : "allocation");
            if (recipe.Weights is { } weights)
                w.WriteString("weights", weights);
            w.WriteStartObject("defaults");
            w.WriteNumber("weight_bits", recipe.Defaults.Weight);
            w.WriteNumber("act_bits", recipe.Defaults.Activation);
            w.WriteNumber("attention_bits", recipe.Defaults.Attention);
            w.WriteEndObject();
            w.WriteStartArray("layers");
            foreach (var layer in recipe.Layers)
            {
                w.WriteStartObject();
                w.WriteString("name", layer.Name);
                w.WriteNumber("weight_bits", layer.WeightBits);
                w.WriteNumber("act_bits", layer.ActBits);
                if (layer.WeightScales is { } scales)
                {
                    w.WriteStartArray("weight_scales");
                    foreach (var s in scales)
                        w.WriteNumberValue(s);
                    w.WriteEndArray();
                }
                if (layer.ActRange is { } r)
                {
                    w.WriteStartObject("act_range");
                    w.WriteNumber("min", r.Min);
                    w.WriteNumber("max", r.Max);
                    w.WriteEndObject();
                }
                if (layer.ActScale is { } actScale)
                {
                    w.WriteNumber("act_scale", actScale);
                    w.WriteNumber("act_zero_point", layer.ActZeroPoint!.Value);
                }
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteStartArray("float_layers");
            foreach (var f in recipe.FloatLayers)
                w.WriteStringValue(f);
            w.WriteEndArray();
            w.WriteEndObject();
        }
        buffer.WriteByte((byte)'\n');
        return buffer.ToArray();
    }

    /// <summary>Writes the recipe atomically (temporary file, then rename).</summary>
    public static void Write(QatRecipe recipe, string path) => AtomicFile.Write(path, Serialize(recipe));

    /// <exception cref="QatBridgeException">Malformed JSON, wrong schema, a missing or mistyped field, bits or
    /// scales out of range; the message starts with the path.</exception>
    public static QatRecipe Read(string path)
    {
        var bytes = File.ReadAllBytes(path);
        try
        {
            return Parse(bytes);
        }
        catch (QatBridgeException e)
        {
            throw new QatBridgeException($"{path}: {e.Message}", e);
        }
    }

    public static QatRecipe Parse(ReadOnlySpan<byte> json)
    {
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(json.ToArray());
        }
        catch (JsonException e)
        {
            throw new QatBridgeException($"not valid JSON ({e.Message})");
        }
        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
                throw new QatBridgeException("expected a JSON object");
            var schema = root.TryGetProperty("schema", out var s) && s.ValueKind == JsonValueKind.String ? s.GetString() : null;
            if (schema != QatRecipe.Schema)
                throw new QatBridgeException($"schema is '{schema}', expected '{QatRecipe.Schema}'");
            var defaults = Field(root, "defaults", JsonValueKind.Object, "recipe");
            var bits = new BitWidths(Int(defaults, "weight_bits", "defaults"), Int(defaults, "act_bits", "defaults"),
                Int(defaults, "attention_bits", "defaults"));
            var layers = new List<LayerRecipe>();
            var i = 0;
            foreach (var e in Field(root, "layers", JsonValueKind.Array, "recipe").EnumerateArray())
            {
                var at = $"layers[{i++}]";
                if (e.ValueKind != JsonValueKind.Object)
                    throw new QatBridgeException($"{at}: expected an object");
                List<float>? scales = null;
                if (e.TryGetProperty("weight_scales", out var ws) && ws.ValueKind != JsonValueKind.Null)
                {
                    if (ws.ValueKind != JsonValueKind.Array)
                        throw new QatBridgeException($"{at}: weight_scales must be an array of numbers");
                    scales = ws.EnumerateArray().Select(v => v.ValueKind == JsonValueKind.Number
                        ? v.GetSingle()
                        : throw new QatBridgeException($"{at}: weight_scales must be an array of numbers")).ToList();
                }
                ActivationRange? range = null;
                if (e.TryGetProperty("act_range", out var ar) && ar.ValueKind != JsonValueKind.Null)
                    range = new ActivationRange(Number(ar, "min", at + ".act_range"), Number(ar, "max", at + ".act_range"));
                float? actScale = e.TryGetProperty("act_scale", out _) ? Number(e, "act_scale", at) : null;
                int? actZero = e.TryGetProperty("act_zero_point", out _) ? Int(e, "act_zero_point", at) : null;
                layers.Add(new LayerRecipe(Field(e, "name", JsonValueKind.String, at).GetString()!,
                    Int(e, "weight_bits", at), Int(e, "act_bits", at), scales, range, actScale, actZero));
            }
            var floats = new List<string>();
            if (root.TryGetProperty("float_layers", out var fl))
            {
                if (fl.ValueKind != JsonValueKind.Array || fl.EnumerateArray().Any(v => v.ValueKind != JsonValueKind.String))
                    throw new QatBridgeException("float_layers must be an array of strings");
                floats.AddRange(fl.EnumerateArray().Select(v => v.GetString()!));
            }
            var sourceText = root.TryGetProperty("source", out var src) && src.ValueKind == JsonValueKind.String ? src.GetString() : "uniform";
            var source = sourceText switch
            {
                "uniform" => RecipeSource.Uniform,
                "allocation" => RecipeSource.Allocation,
                _ => throw new QatBridgeException($"source is '{sourceText}', expected 'uniform' or 'allocation'"),
            };
            var model = root.TryGetProperty("source_model", out var sm) && sm.ValueKind == JsonValueKind.String ? sm.GetString()! : "";
            var revision = root.TryGetProperty("revision", out _) ? Int(root, "revision", "recipe") : 1;
            if (revision is < 1 or > QatRecipe.LatestRevision)
                throw new QatBridgeException($"revision is {revision}; this reader knows 1..{QatRecipe.LatestRevision}");
            string? weightsFile = null;
            if (root.TryGetProperty("weights", out var wf))
                weightsFile = wf.ValueKind == JsonValueKind.String ? wf.GetString() : throw new QatBridgeException("weights must be a file name (string)");
            var recipe = new QatRecipe(bits, layers, floats, model, source, revision) { Weights = weightsFile };
            recipe.Validate();
            return recipe;
        }
    }

    private static JsonElement Field(JsonElement obj, string name, JsonValueKind kind, string where)
    {
        if (!obj.TryGetProperty(name, out var value))
            throw new QatBridgeException($"{where}: missing field '{name}'");
        if (value.ValueKind != kind)
            throw new QatBridgeException($"{where}: field '{name}' is {value.ValueKind}, expected {kind}");
        return value;
    }

    private static int Int(JsonElement obj, string name, string where)
    {
        var value = Field(obj, name, JsonValueKind.Number, where);
        if (!value.TryGetInt32(out var n))
            throw new QatBridgeException($"{where}: field '{name}' is {value.GetRawText()}, expected an integer");
        return n;
    }

    private static float Number(JsonElement obj, string name, string where) =>
        Field(obj, name, JsonValueKind.Number, where).GetSingle();
}
