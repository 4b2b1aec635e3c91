using System.Text;
using System.Text.Json;
using OnnxQuant.Solvers;

namespace OnnxQuant.Passes.Artifact;

/// <summary>The figures of one target's <c>report.json</c> that <c>report.html</c> shows, read back from the JSON.</summary>
public sealed record PageTarget(string ReportPath, double TargetBits, double Rate, string Solver, int MinBits, string CurveMode,
    string Format, int ActBits, string ActCalibration, long Opset, PageDistortion Distortion, PageBaseline? Baseline,
    PageAccuracy? Accuracy, PageSizes Sizes, IReadOnlyList<PageUnit> Units, IReadOnlyList<PageHead> Heads,
    IReadOnlyList<PageSkipped> Skipped, IReadOnlyList<PageLayer> Layers, IReadOnlyList<UnitCurve> Curves,
    IReadOnlyList<string> Notes, IReadOnlyList<(string Stage, double Seconds)> Timings)
{
    /// <summary>The quantized activations' priced share (null: float activations, or a report written before they were priced).</summary>
    public PageActivations? Activations { get; init; }

    /// <summary>The choices held at the float model's while measuring (null: the model makes none).</summary>
    public PageSelection? Selection { get; init; }
}

/// <summary>The report's <c>selection</c> section: the artifact's own choices against the float model's.</summary>
public sealed record PageSelection(double? MeasuredMatched, double? MeasuredFree, IReadOnlyList<(string Node, string OpType, double Agreement, long Chosen)> Held);

/// <param name="Predicted">Weights and priced activations together.</param>
public sealed record PageDistortion(double Predicted, double Measured, int Samples, bool HeldOut, string Metric)
{
    public double? PredictedActivations { get; init; }

    /// <summary>The weights' share of <see cref="Predicted"/> (all of it in reports without activations).</summary>
    public double? PredictedWeights { get; init; }
}

/// <summary>The report's <c>activations</c> section: each priced tensor, largest first, and how many layer inputs were not priced.</summary>
public sealed record PageActivations(int Bits, double Predicted, IReadOnlyList<PageActivation> Tensors, int Unpriced);

public sealed record PageActivation(string Tensor, int Bits, double Step, double Predicted, IReadOnlyList<string> Layers);

/// <summary>The uniform baseline as the report holds it: figures, or the reason it was skipped.</summary>
public sealed record PageBaseline(int Bits, double Rate, double Predicted, double Measured, bool SameAsMixed, string? Skipped);

public sealed record PageAccuracy(string Metric, double FloatAp, double QuantizedAp);

public sealed record PageSizes(long FloatWeightBytes, long IdealPackedBytes, long QuantizedWeightBytes, long ModelBytes);

public sealed record PageUnit(string Name, string Layer, string OpType, int ChannelStart, int ChannelCount, long Size, int Bits, double PredictedDistortion);

public sealed record PageHead(string Layer, string OpType, long Size, int Bits, string Reason);

public sealed record PageSkipped(string Layer, string OpType, string Reason);

public sealed record PageLayer(string Layer, string Format, string Container, int MaxBits, long Weights, long IdealBits, long Bytes, long FloatBytes,
    string? SharesWeightOf = null);

/// <summary>What the manifest records: tool, inputs, options and outputs, in file order.</summary>
public sealed record PageManifest(string ToolVersion, IReadOnlyList<(string Key, string Value)> Input,
    IReadOnlyList<(string Key, string Value)> Options, IReadOnlyList<(string Path, string Sha256, long Bytes)> Outputs);

/// <summary>
/// Everything <c>report.html</c> shows, read from <c>manifest.json</c> and each target's <c>report.json</c> alone, so
/// the page holds the same numbers as the JSON and can be regenerated from it (<c>onnxquant report</c>).
/// </summary>
public sealed record ReportPageData(PageManifest Manifest, IReadOnlyList<PageTarget> Targets)
{
    /// <exception cref="CompileException">A file is not valid JSON or lacks a field the page needs.</exception>
    public static ReportPageData Parse(byte[] manifest, IReadOnlyList<(string Path, byte[] Json)> reports)
    {
        if (reports.Count == 0)
            throw new CompileException("no report.json to show: the manifest lists no outputs");
        return new ReportPageData(Read("manifest.json", manifest, ParseManifest),
            reports.Select(r => Read(r.Path, r.Json, e => ParseTarget(r.Path, e))).ToList());
    }

    /// <exception cref="CompileException">The manifest is not valid JSON or lacks a field the page needs.</exception>
    public static PageManifest ReadManifest(byte[] manifest) => Read("manifest.json", manifest, ParseManifest);

    private static T Read<T>(string path, byte[] json, Func<JsonElement, T> parse)
    {
        try
        {
            using var doc = JsonDocument.Parse(json);
            return parse(doc.RootElement);
        }
        catch (Exception ex) when (ex is JsonException or KeyNotFoundException or InvalidOperationException or FormatException or SolverException)
        {
            throw new CompileException($"{path}: not a report this version can read ({ex.Message}); rerun the compile to write it again");
        }
    }

    private static PageManifest ParseManifest(JsonElement m) => new(
        m.GetProperty("tool_version").GetString()!,
        m.GetProperty("input").EnumerateObject().Select(p => (p.Name, Text(p.Value))).ToList(),
        m.GetProperty("options").EnumerateObject().Select(p => (p.Name, Text(p.Value))).ToList(),
        m.GetProperty("outputs").EnumerateArray()
            .Select(o => (o.GetProperty("path").GetString()!, o.GetProperty("sha256").GetString()!, o.GetProperty("bytes").GetInt64())).ToList());

    private static PageTarget ParseTarget(string path, JsonElement r)
    {
        var d = r.GetProperty("distortion");
        var s = r.GetProperty("sizes");
        PageBaseline? baseline = null;
        if (r.TryGetProperty("uniform_baseline", out var b))
            baseline = b.TryGetProperty("skipped", out var why)
                ? new PageBaseline(0, double.NaN, double.NaN, double.NaN, false, why.GetString())
                : new PageBaseline(b.GetProperty("bits").GetInt32(), b.GetProperty("rate").GetDouble(), b.GetProperty("predicted").GetDouble(),
                    b.GetProperty("measured").GetDouble(), b.GetProperty("same_as_mixed").GetBoolean(), null);
        PageAccuracy? accuracy = null;
        if (r.TryGetProperty("accuracy", out var a))
            accuracy = new PageAccuracy(a.GetProperty("metric").GetString()!, a.GetProperty("float_ap").GetDouble(), a.GetProperty("quantized_ap").GetDouble());
        return new PageTarget(path,
            r.GetProperty("target_bits").GetDouble(), r.GetProperty("rate").GetDouble(), r.GetProperty("solver").GetString()!,
            r.GetProperty("min_bits").GetInt32(), r.GetProperty("curve_mode").GetString()!, r.GetProperty("format").GetString()!,
            r.GetProperty("act_bits").GetInt32(), r.GetProperty("act_calibration").GetString()!, r.GetProperty("opset").GetInt64(),
            new PageDistortion(d.GetProperty("predicted").GetDouble(), d.GetProperty("measured").GetDouble(), d.GetProperty("samples").GetInt32(),
                d.GetProperty("held_out").GetBoolean(), d.GetProperty("metric").GetString()!)
            {
                PredictedActivations = d.TryGetProperty("predicted_activations", out var pa) && pa.ValueKind == JsonValueKind.Number ? pa.GetDouble() : null,
                PredictedWeights = d.TryGetProperty("predicted_weights", out var pw) && pw.ValueKind == JsonValueKind.Number ? pw.GetDouble() : null,
            },
            baseline, accuracy,
            new PageSizes(s.GetProperty("float_weight_bytes").GetInt64(), s.GetProperty("ideal_packed_bytes").GetInt64(),
                s.GetProperty("quantized_weight_bytes").GetInt64(), s.GetProperty("model_bytes").GetInt64()),
            r.GetProperty("units").EnumerateArray().Select(u => new PageUnit(u.GetProperty("name").GetString()!, u.GetProperty("layer").GetString()!,
                u.GetProperty("op_type").GetString()!, u.GetProperty("channel_start").GetInt32(), u.GetProperty("channel_count").GetInt32(),
                u.GetProperty("size").GetInt64(), u.GetProperty("bits").GetInt32(), u.GetProperty("predicted_distortion").GetDouble())).ToList(),
            r.GetProperty("heads").EnumerateArray().Select(h => new PageHead(h.GetProperty("layer").GetString()!, h.GetProperty("op_type").GetString()!,
                h.GetProperty("size").GetInt64(), h.GetProperty("bits").GetInt32(), h.GetProperty("reason").GetString()!)).ToList(),
            r.GetProperty("skipped").EnumerateArray().Select(k => new PageSkipped(k.GetProperty("layer").GetString()!, k.GetProperty("op_type").GetString()!,
                k.GetProperty("reason").GetString()!)).ToList(),
            r.GetProperty("layers").EnumerateArray().Select(l => new PageLayer(l.GetProperty("layer").GetString()!, l.GetProperty("format").GetString()!,
                l.GetProperty("container").GetString()!, l.GetProperty("max_bits").GetInt32(), l.GetProperty("weights").GetInt64(),
                l.GetProperty("ideal_bits").GetInt64(), l.GetProperty("bytes").GetInt64(), l.GetProperty("float_bytes").GetInt64(),
                l.TryGetProperty("shares_weight_of", out var shares) ? shares.GetString() : null)).ToList(),
            CurvesFile.Parse(Encoding.UTF8.GetBytes(r.GetProperty("curves").GetRawText()), path),
            r.GetProperty("notes").EnumerateArray().Select(n => n.GetString()!).ToList(),
            r.GetProperty("timings_s").EnumerateObject().Select(t => (t.Name, t.Value.GetDouble())).ToList())
        {
            Activations = r.TryGetProperty("activations", out var act) ? new PageActivations(act.GetProperty("bits").GetInt32(), act.GetProperty("predicted").GetDouble(),
                act.GetProperty("tensors").EnumerateArray().Select(t => new PageActivation(t.GetProperty("tensor").GetString()!, t.GetProperty("bits").GetInt32(), t.GetProperty("step").GetDouble(),
                    t.GetProperty("predicted").GetDouble(), t.GetProperty("layers").EnumerateArray().Select(l => l.GetString()!).ToList())).ToList(),
                act.GetProperty("unpriced").GetArrayLength()) : null,
            Selection = r.TryGetProperty("selection", out var sel) ? new PageSelection(Number(sel.GetProperty("measured_matched")), Number(sel.GetProperty("measured_free")),
                sel.GetProperty("held").EnumerateArray().Select(h => (h.GetProperty("node").GetString()!, h.GetProperty("op_type").GetString()!,
                    h.GetProperty("agreement").GetDouble(), h.GetProperty("chosen").GetInt64())).ToList()) : null,
        };
    }

    private static double? Number(JsonElement value) => value.ValueKind == JsonValueKind.Number ? value.GetDouble() : null;

    private static string Text(JsonElement value) => value.ValueKind == JsonValueKind.String ? value.GetString()! : value.GetRawText();
}
