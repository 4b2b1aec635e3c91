using System.Text.Json;

namespace OnnxQuant.QatBridge;

/// <summary>A quantized Linear/Conv layer of a trained student: bits and learned steps.</summary>
public sealed record LearnedLayer(
    string Name,
    string Kind,
    int WeightBits,
    int ActBits,
    bool ActSigned,
    float ActScale,
    IReadOnlyList<float> WeightScales);

/// <summary>A quantized attention block: bits of q, k, v and the softmax output, their learned steps, and whether
/// its query went through distribution alignment.</summary>
public sealed record LearnedAttention(
    string Name,
    int AttentionBits,
    bool Aligned,
    float QueryScale,
    float KeyScale,
    float ValueScale,
    float SoftmaxScale);

/// <summary>
/// The trainer's sidecar <c>onnxquant.qat-scales/1</c> (scales.json next to student.onnx): what each quantized layer
/// learned. The exported QDQ model holds the same numbers; the sidecar keeps their layer names for the report.
/// </summary>
public sealed record LearnedScales(IReadOnlyList<LearnedLayer> Layers, IReadOnlyList<LearnedAttention> Attention)
{
    public const string Schema = "onnxquant.qat-scales/1";

    /// <exception cref="QatBridgeException">Malformed file; the message starts with the path.</exception>
    public static LearnedScales Read(string path)
    {
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(path));
            return Parse(doc.RootElement);
        }
        catch (JsonException e)
        {
            throw new QatBridgeException($"{path}: not valid JSON ({e.Message})", e);
        }
        catch (Exception e) when (e is QatBridgeException or InvalidOperationException or FormatException or KeyNotFoundException)
        {
            throw new QatBridgeException($"{path}: {e.Message}", e);
        }
    }

    private static LearnedScales Parse(JsonElement root)
    {
        if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("schema", out var s) || s.GetString() != Schema)
            throw new QatBridgeException($"not a learned-scales file (schema must be '{Schema}')");
        var layers = new List<LearnedLayer>();
        var attention = new List<LearnedAttention>();
        foreach (var e in root.GetProperty("layers").EnumerateArray())
        {
            var name = e.GetProperty("name").GetString() ?? throw new QatBridgeException("a layer has no name");
            var kind = e.GetProperty("kind").GetString() ?? "";
            if (kind == "attention")
            {
                attention.Add(new LearnedAttention(name, e.GetProperty("attention_bits").GetInt32(),
                    e.GetProperty("aligned").GetBoolean(), e.GetProperty("q_quant").GetSingle(),
                    e.GetProperty("k_quant").GetSingle(), e.GetProperty("v_quant").GetSingle(),
                    e.GetProperty("softmax_quant").GetSingle()));
                continue;
            }
            var layer = new LearnedLayer(name, kind, e.GetProperty("weight_bits").GetInt32(),
                e.GetProperty("act_bits").GetInt32(), e.GetProperty("act_signed").GetBoolean(),
                e.GetProperty("act_scale").GetSingle(),
                e.GetProperty("weight_scales").EnumerateArray().Select(v => v.GetSingle()).ToList());
            BitWidths.CheckBits(layer.WeightBits, $"layer '{name}' weight_bits");
            BitWidths.CheckBits(layer.ActBits, $"layer '{name}' act_bits");
            if (!(float.IsFinite(layer.ActScale) && layer.ActScale > 0) || layer.WeightScales.Any(v => !(float.IsFinite(v) && v > 0)))
                throw new QatBridgeException($"layer '{name}' has a non-positive or non-finite learned scale");
            layers.Add(layer);
        }
        return new LearnedScales(layers, attention);
    }
}
