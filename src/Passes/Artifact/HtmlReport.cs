using System.Globalization;
using System.Net;
using System.Text;
using OnnxQuant.Frontend;

namespace OnnxQuant.Passes.Artifact;

/// <summary>
/// Writes <c>report.html</c> beside the reports: one self-contained page per compile (all targets), rendered only from
/// <c>manifest.json</c> and the <c>report.json</c> files, so <c>onnxquant report</c> regenerates the same bytes.
/// </summary>
public static class HtmlReportWriter
{
    public const string FileName = "report.html";

    /// <summary>The page of a compile, from the manifest and report bytes as written.</summary>
    public static byte[] Render(byte[] manifest, IReadOnlyList<(string Path, byte[] Json)> reports) =>
        HtmlReport.Render(ReportPageData.Parse(manifest, reports));

    /// <summary>Renders the page and writes it (atomically) into a finished output folder.</summary>
    public static string Write(string outputDirectory, byte[] manifest, IReadOnlyList<(string Path, byte[] Json)> reports)
    {
        var path = Path.Combine(outputDirectory, FileName);
        AtomicFile.Write(path, Render(manifest, reports));
        return path;
    }

    /// <summary>Regenerates the page of a finished compile from its manifest and the reports beside its models.</summary>
    /// <exception cref="CompileException">The folder holds no manifest, or a report it lists is missing or unreadable.</exception>
    public static string Regenerate(string outputDirectory)
    {
        var path = Path.Combine(outputDirectory, FileName);
        AtomicFile.Write(path, RenderFolder(outputDirectory));
        return path;
    }

    /// <summary>The page a finished compile folder's manifest and reports render to (what its report.html must hold).</summary>
    /// <exception cref="CompileException">The folder holds no manifest, or a report it lists is missing or unreadable.</exception>
    public static byte[] RenderFolder(string outputDirectory)
    {
        var manifestPath = Path.Combine(outputDirectory, "manifest.json");
        if (!File.Exists(manifestPath))
            throw new CompileException($"{outputDirectory}: no manifest.json here; give the -o folder of a compile");
        var manifest = File.ReadAllBytes(manifestPath);
        var parsed = ReportPageData.ReadManifest(manifest);
        var reports = new List<(string, byte[])>();
        foreach (var (output, _, _) in parsed.Outputs)
        {
            var relative = Path.Combine(Path.GetDirectoryName(output) ?? "", "report.json").Replace('\\', '/');
            var full = Path.Combine(outputDirectory, relative);
            if (!File.Exists(full))
                throw new CompileException($"{full}: the manifest lists {output} but its report.json is missing; rerun the compile");
            reports.Add((relative, File.ReadAllBytes(full)));
        }
        return Render(manifest, reports);
    }
}

/// <summary>
/// The page: the rate-distortion front, the bit allocation over the network, every unit's error curve, sizes, stage
/// times, notes and the manifest. Charts are SVG written here (no library, no network), a few lines of inline script
/// add hover details and a filter; without script the SVG titles and the tables carry the same figures. The bytes
/// depend only on the JSON (invariant number formats, input order), so identical reports give identical pages.
/// </summary>
public static class HtmlReport
{
    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    /// <summary>Colours of the targets (front series markers, chosen widths on the curves).</summary>
    private static readonly string[] TargetColours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"];

    public static byte[] Render(ReportPageData data)
    {
        var h = new StringBuilder();
        var first = data.Targets[0];
        var title = $"onnxquant report: {data.Manifest.Input.FirstOrDefault(p => p.Key == "model").Value ?? "model"}";
        h.Append("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
        h.Append("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
        h.Append($"<title>{E(title)}</title>\n<style>{Css}</style>\n</head>\n<body>\n");
        h.Append($"<h1>{E(title)}</h1>\n");
        h.Append($"<p class=\"sub\">onnxquant {E(data.Manifest.ToolVersion)} &middot; targets {E(string.Join(", ", data.Targets.Select(t => Bits(t.TargetBits))))} average bits &middot; " +
                 $"solver {E(first.Solver)} &middot; curves {E(first.CurveMode)} &middot; activations {(first.ActBits == 0 ? "float" : $"{first.ActBits}-bit {E(first.ActCalibration)}")} &middot; " +
                 $"format {E(first.Format)} &middot; opset {first.Opset}</p>\n");
        h.Append("<nav><a href=\"#front\">front</a> <a href=\"#allocation\">allocation</a> <a href=\"#curves\">curves</a> <a href=\"#activations\">activations</a> <a href=\"#sizes\">sizes</a> " +
                 "<a href=\"#times\">stage times</a> <a href=\"#notes\">notes</a> <a href=\"#manifest\">manifest</a></nav>\n");

        Front(h, data.Targets);
        Allocation(h, data.Targets);
        Curves(h, data.Targets);
        Activations(h, data.Targets);
        Sizes(h, data.Targets);
        Times(h, first);
        Notes(h, data.Targets);
        Manifest(h, data.Manifest);

        h.Append("<div id=\"tip\" role=\"tooltip\" hidden></div>\n");
        h.Append($"<script>{Script}</script>\n</body>\n</html>\n");
        return Encoding.UTF8.GetBytes(h.ToString());
    }

    // ---- rate-distortion front ----

    private sealed record Point(string Series, PageTarget Target, double X, double Y, string Tip);

    private static void Front(StringBuilder h, IReadOnlyList<PageTarget> targets)
    {
        var first = targets[0];
        h.Append("<section id=\"front\">\n<h2>Rate&ndash;distortion front</h2>\n");
        h.Append($"<p>Distortion: {E(first.Distortion.Metric)}; measured on {first.Distortion.Samples} {(first.Distortion.HeldOut ? "held-out" : "calibration")} samples. " +
                 "Predicted = sum of the units&rsquo; error curves (additivity assumed). Uniform = every allocated unit at the candidate width nearest the target, " +
                 "rewritten and measured the same way. The float model is the reference (distortion 0).</p>\n");
        var points = new List<Point>();
        foreach (var t in targets)
        {
            var label = $"target {Bits(t.TargetBits)}";
            points.Add(new Point("predicted", t, t.Rate, t.Distortion.Predicted, $"{label}: mixed, predicted\nrate {Rate(t.Rate)} bits\ndistortion {G(t.Distortion.Predicted)}"));
            points.Add(new Point("measured", t, t.Rate, t.Distortion.Measured, $"{label}: mixed, measured\nrate {Rate(t.Rate)} bits\ndistortion {G(t.Distortion.Measured)}"));
            if (t.Baseline is { Skipped: null } b)
            {
                points.Add(new Point("uniform-predicted", t, b.Rate, b.Predicted, $"{label}: uniform {b.Bits} bits, predicted\ndistortion {G(b.Predicted)}"));
                points.Add(new Point("uniform", t, b.Rate, b.Measured, $"{label}: uniform {b.Bits} bits, measured\ndistortion {G(b.Measured)}"));
            }
        }
        var series = new (string Key, string Label, string Colour, bool Filled, bool Square)[]
        {
            ("measured", "mixed, measured", "#1f77b4", true, false),
            ("predicted", "mixed, predicted", "#1f77b4", false, false),
            ("uniform", "uniform, measured", "#e6550d", true, true),
            ("uniform-predicted", "uniform, predicted", "#e6550d", false, true),
        };
        const double W = 640, H = 340, L = 64, R = 150, T = 16, B = 44;
        var positive = points.Select(p => p.Y).Where(y => y > 0 && double.IsFinite(y)).ToList();
        // Whole decades; a zero distortion sits on the floor of the axis.
        var yLo = Math.Floor(Math.Log10(positive.Count > 0 ? positive.Min() : 1e-6));
        var yHi = Math.Ceiling(Math.Log10(positive.Count > 0 ? positive.Max() : 1));
        if (yHi <= yLo) yHi = yLo + 1;
        var floor = Math.Pow(10, yLo);
        var xs = points.Select(p => p.X).ToList();
        var xLo = Math.Floor(xs.Min() - 0.25);
        var xHi = Math.Ceiling(xs.Max() + 0.25);
        // One more slot past a break in the axis holds the float model (32 bits, distortion 0 on the axis floor).
        var floatX = xHi + 1;
        double Px(double x) => L + (x - xLo) / (floatX - xLo) * (W - L - R);
        double Py(double y) => T + (yHi - Math.Log10(Math.Max(y, floor))) / (yHi - yLo) * (H - T - B);

        h.Append($"<svg id=\"front-chart\" class=\"chart\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" role=\"img\" aria-label=\"distortion against average bits\">\n");
        for (var x = xLo; x <= xHi; x++)
            h.Append($"<line class=\"grid\" x1=\"{N(Px(x))}\" y1=\"{T}\" x2=\"{N(Px(x))}\" y2=\"{H - B}\"/><text class=\"tick\" x=\"{N(Px(x))}\" y=\"{H - B + 16}\" text-anchor=\"middle\">{x.ToString(Inv)}</text>\n");
        for (var y = yLo; y <= yHi; y++)
            h.Append($"<line class=\"grid\" x1=\"{L}\" y1=\"{N(Py(Math.Pow(10, y)))}\" x2=\"{W - R}\" y2=\"{N(Py(Math.Pow(10, y)))}\"/><text class=\"tick\" x=\"{L - 6}\" y=\"{N(Py(Math.Pow(10, y)) + 4)}\" text-anchor=\"end\">1e{y.ToString(Inv)}</text>\n");
        h.Append($"<text class=\"axis\" x=\"{N((L + W - R) / 2)}\" y=\"{H - 8}\" text-anchor=\"middle\">average weight bits (allocated units)</text>\n");
        h.Append($"<text class=\"axis\" transform=\"translate(14 {N((T + H - B) / 2)}) rotate(-90)\" text-anchor=\"middle\">distortion (log)</text>\n");
        var legendY = T + 8.0;
        foreach (var (key, label, colour, filled, square) in series)
        {
            var pts = points.Where(p => p.Series == key).OrderBy(p => p.X).ToList();
            if (pts.Count == 0)
                continue;
            if (pts.Count > 1)
                h.Append($"<polyline class=\"series-line\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\"{(filled ? "" : " stroke-dasharray=\"4 3\"")} points=\"{string.Join(" ", pts.Select(p => $"{N(Px(p.X))},{N(Py(p.Y))}"))}\"/>\n");
            foreach (var p in pts)
                h.Append(Marker(Px(p.X), Py(p.Y), colour, filled, square,
                    $"class=\"pt\" data-series=\"{key}\" data-target=\"{Bits(p.Target.TargetBits)}\" data-tip=\"{E(p.Tip)}\"", p.Tip)).Append('\n');
            h.Append(Marker(W - R + 14, legendY, colour, filled, square, "class=\"legend-mark\"", label));
            h.Append($"<text class=\"legend\" x=\"{W - R + 24}\" y=\"{N(legendY + 4)}\">{E(label)}</text>\n");
            legendY += 18;
        }
        // The float model has distortion 0, below any log axis: it sits on the axis floor in its own slot.
        h.Append($"<path d=\"M{N(W - R + 8)},{N(legendY + 5)} l6,-10 l6,10 z\" fill=\"#333\"/>" +
                 $"<text class=\"legend\" x=\"{W - R + 24}\" y=\"{N(legendY + 4)}\">float: 32 b, D = 0</text>\n");
        h.Append($"<text class=\"tick\" x=\"{N(Px(xHi + 0.5))}\" y=\"{H - B + 4}\" text-anchor=\"middle\">//</text>" +
                 $"<text class=\"tick\" x=\"{N(Px(floatX))}\" y=\"{H - B + 16}\" text-anchor=\"middle\">32 (float)</text>\n");
        h.Append($"<path class=\"float-mark\" d=\"M{N(Px(floatX) - 6)},{H - B} l6,-10 l6,10 z\" fill=\"#333\" data-tip=\"float model: 32 bits, distortion 0 (the axis floor stands for 0)\"/>\n");
        h.Append("</svg>\n");

        // The same figures as a table, and AP when it was measured.
        var withAp = targets.Any(t => t.Accuracy is not null);
        h.Append("<table class=\"num\"><thead><tr><th>target</th><th>rate</th><th>predicted</th><th>of it activations</th><th>measured</th><th>measured / predicted</th><th>uniform width</th><th>uniform predicted</th><th>uniform measured</th>");
        if (withAp)
            h.Append("<th>AP float</th><th>AP quantized</th>");
        h.Append("</tr></thead><tbody>\n");
        foreach (var t in targets)
        {
            h.Append($"<tr><td>{Bits(t.TargetBits)}</td><td>{Rate(t.Rate)}</td><td>{G(t.Distortion.Predicted)}</td>" +
                     $"<td>{(t.Distortion.PredictedActivations is { } pa ? G(pa) : "&ndash;")}</td><td>{G(t.Distortion.Measured)}</td>" +
                     $"<td>{(t.Distortion.Predicted > 0 ? (t.Distortion.Measured / t.Distortion.Predicted).ToString("0.00", Inv) : "&ndash;")}</td>");
            h.Append(t.Baseline switch
            {
                null => "<td colspan=\"3\">not in this report</td>",
                { Skipped: { } why } => $"<td colspan=\"3\">skipped: {E(why)}</td>",
                var b => $"<td>{b.Bits}{(b.SameAsMixed ? " (= mixed)" : "")}</td><td>{G(b.Predicted)}</td><td>{G(b.Measured)}</td>",
            });
            if (withAp)
                h.Append(t.Accuracy is { } a ? $"<td>{(a.FloatAp * 100).ToString("0.0", Inv)}</td><td>{(a.QuantizedAp * 100).ToString("0.0", Inv)}</td>" : "<td></td><td></td>");
            h.Append("</tr>\n");
        }
        h.Append("</tbody></table>\n");
        var selecting = targets.Where(t => t.Selection is not null).ToList();
        if (selecting.Count > 0)
        {
            // The measured column holds the model's choices at the float model's; what the artifact's own choices cost is here.
            h.Append("<p>Choices the model makes from the data were held at the float model's while measuring; the artifact makes its own:</p>\n");
            h.Append("<table class=\"num\"><thead><tr><th>target</th><th>choice</th><th>agreeing with float</th><th>measured, own choices in float order</th><th>measured as it ships</th></tr></thead><tbody>\n");
            foreach (var t in selecting)
                foreach (var (node, op, agreement, chosen) in t.Selection!.Held)
                    h.Append($"<tr><td>{Bits(t.TargetBits)}</td><td>{E(op)} '{E(node)}'</td><td>{(agreement * 100).ToString("0.0", Inv)} % of {chosen}</td>" +
                             $"<td>{(t.Selection.MeasuredMatched is { } m ? G(m) : "&ndash;")}</td><td>{(t.Selection.MeasuredFree is { } f ? G(f) : "&ndash;")}</td></tr>\n");
            h.Append("</tbody></table>\n");
        }
        if (withAp)
            ApChart(h, targets);
        h.Append("</section>\n");
    }

    private static void ApChart(StringBuilder h, IReadOnlyList<PageTarget> targets)
    {
        var measured = targets.Where(t => t.Accuracy is not null).ToList();
        var metric = measured[0].Accuracy!.Metric;
        var floatAp = measured[0].Accuracy!.FloatAp * 100;
        const double W = 640, H = 240, L = 64, R = 150, T = 16, B = 40;
        var values = measured.Select(t => t.Accuracy!.QuantizedAp * 100).Append(floatAp).ToList();
        var yLo = Math.Floor(values.Min() - 1);
        var yHi = Math.Ceiling(values.Max() + 1);
        var xLo = Math.Floor(measured.Min(t => t.Rate) - 0.25);
        var xHi = Math.Ceiling(measured.Max(t => t.Rate) + 0.25);
        double Px(double x) => L + (x - xLo) / (xHi - xLo) * (W - L - R);
        double Py(double y) => T + (yHi - y) / (yHi - yLo) * (H - T - B);
        h.Append($"<h3>Accuracy ({E(metric)})</h3>\n<svg id=\"ap-chart\" class=\"chart\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" role=\"img\" aria-label=\"AP against average bits\">\n");
        for (var x = xLo; x <= xHi; x++)
            h.Append($"<line class=\"grid\" x1=\"{N(Px(x))}\" y1=\"{T}\" x2=\"{N(Px(x))}\" y2=\"{H - B}\"/><text class=\"tick\" x=\"{N(Px(x))}\" y=\"{H - B + 16}\" text-anchor=\"middle\">{x.ToString(Inv)}</text>\n");
        var step = Math.Max(1, Math.Ceiling((yHi - yLo) / 6));
        for (var y = yLo; y <= yHi; y += step)
            h.Append($"<line class=\"grid\" x1=\"{L}\" y1=\"{N(Py(y))}\" x2=\"{W - R}\" y2=\"{N(Py(y))}\"/><text class=\"tick\" x=\"{L - 6}\" y=\"{N(Py(y) + 4)}\" text-anchor=\"end\">{y.ToString(Inv)}</text>\n");
        h.Append($"<line class=\"float-line\" x1=\"{L}\" y1=\"{N(Py(floatAp))}\" x2=\"{W - R}\" y2=\"{N(Py(floatAp))}\" stroke=\"#333\" stroke-dasharray=\"5 4\"><title>float AP {floatAp.ToString("0.0", Inv)}</title></line>\n");
        h.Append($"<text class=\"legend\" x=\"{W - R + 6}\" y=\"{N(Py(floatAp) + 4)}\">float {floatAp.ToString("0.0", Inv)}</text>\n");
        var ordered = measured.OrderBy(t => t.Rate).ToList();
        if (ordered.Count > 1)
            h.Append($"<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"{string.Join(" ", ordered.Select(t => $"{N(Px(t.Rate))},{N(Py(t.Accuracy!.QuantizedAp * 100))}"))}\"/>\n");
        foreach (var t in ordered)
        {
            var tip = $"target {Bits(t.TargetBits)}: AP {(t.Accuracy!.QuantizedAp * 100).ToString("0.0", Inv)} (float {floatAp.ToString("0.0", Inv)})";
            h.Append(Marker(Px(t.Rate), Py(t.Accuracy.QuantizedAp * 100), "#1f77b4", true, false,
                $"class=\"pt\" data-series=\"ap\" data-target=\"{Bits(t.TargetBits)}\" data-tip=\"{E(tip)}\"", tip)).Append('\n');
        }
        h.Append($"<text class=\"axis\" x=\"{N((L + W - R) / 2)}\" y=\"{H - 6}\" text-anchor=\"middle\">average weight bits</text>\n");
        h.Append($"<text class=\"axis\" transform=\"translate(14 {N((T + H - B) / 2)}) rotate(-90)\" text-anchor=\"middle\">AP (points)</text>\n</svg>\n");
    }

    // ---- allocation over the network ----

    /// <summary>One mark of the allocation strip: a unit, a head layer (outside the budget) or a layer kept float.</summary>
    private sealed record Mark(string Kind, string Name, int Bits, string Tip, int UnitIndex);

    private static void Allocation(StringBuilder h, IReadOnlyList<PageTarget> targets)
    {
        h.Append("<section id=\"allocation\">\n<h2>Bit allocation over the network</h2>\n");
        h.Append("<p>Every allocated unit in graph order, one bar per unit (a layer, or a group of its output channels), height and colour by width. " +
                 "Hatched: head layers kept at the head width outside the budget. Grey, at the end: layers kept float. Hover a bar for its name and figures; click it to find its curve.</p>\n");
        h.Append("<div class=\"legend-row\">");
        foreach (var b in targets.SelectMany(t => t.Units.Select(u => u.Bits).Concat(t.Heads.Select(x => x.Bits))).Distinct().Order())
            h.Append($"<span><i style=\"background:{WidthColour(b)}\"></i>{b} bits</span>");
        h.Append("<span><i class=\"hatch\"></i>head</span><span><i style=\"background:#d9d9d9\"></i>float</span></div>\n");
        var unitIndex = targets[0].Units.Select((u, i) => (u.Name, i)).ToDictionary(p => p.Name, p => p.i, StringComparer.Ordinal);
        foreach (var t in targets)
        {
            var marks = Marks(t, unitIndex);
            const double W = 960, H = 110, Top = 8, Base = 96;
            var width = W / Math.Max(1, marks.Count);
            h.Append($"<h3>target {Bits(t.TargetBits)} bits: rate {Rate(t.Rate)}, {t.Units.Count} units, {t.Heads.Count} head layer(s), {t.Skipped.Count} float layer(s)</h3>\n");
            h.Append($"<svg class=\"alloc\" data-target=\"{Bits(t.TargetBits)}\" viewBox=\"0 0 {W} {H}\" width=\"100%\" preserveAspectRatio=\"none\" role=\"img\" aria-label=\"bit allocation at target {Bits(t.TargetBits)}\">\n");
            h.Append($"<defs><pattern id=\"hatch-{t.TargetBits.ToString(Inv).Replace('.', '_')}\" width=\"4\" height=\"4\" patternUnits=\"userSpaceOnUse\" patternTransform=\"rotate(45)\"><rect width=\"2\" height=\"4\" fill=\"#000\" fill-opacity=\"0.45\"/></pattern></defs>\n");
            for (var b = 2; b <= 8; b += 2)
                h.Append($"<line class=\"grid\" x1=\"0\" x2=\"{W}\" y1=\"{N(Base - b / 8.0 * (Base - Top))}\" y2=\"{N(Base - b / 8.0 * (Base - Top))}\"/>\n");
            for (var i = 0; i < marks.Count; i++)
            {
                var m = marks[i];
                var height = m.Kind == "float" ? Base - Top : Math.Min(m.Bits, 8) / 8.0 * (Base - Top);
                var fill = m.Kind == "float" ? "#d9d9d9" : WidthColour(m.Bits);
                var unit = m.UnitIndex >= 0 ? $" data-unit=\"u{m.UnitIndex}\"" : "";
                h.Append($"<rect class=\"{m.Kind}-mark\" x=\"{N(i * width)}\" y=\"{N(Base - height)}\" width=\"{N(Math.Max(width - 0.6, 0.4))}\" height=\"{N(height)}\" fill=\"{fill}\" " +
                         $"data-name=\"{E(m.Name)}\" data-bits=\"{(m.Kind == "float" ? "float" : m.Bits.ToString(Inv))}\"{unit} data-tip=\"{E(m.Tip)}\"/>");
                if (m.Kind == "head")
                    h.Append($"<rect x=\"{N(i * width)}\" y=\"{N(Base - height)}\" width=\"{N(Math.Max(width - 0.6, 0.4))}\" height=\"{N(height)}\" fill=\"url(#hatch-{t.TargetBits.ToString(Inv).Replace('.', '_')})\" pointer-events=\"none\"/>");
                h.Append('\n');
            }
            h.Append($"<text class=\"tick\" x=\"0\" y=\"{H - 2}\">input side</text><text class=\"tick\" x=\"{W}\" y=\"{H - 2}\" text-anchor=\"end\">output side</text>\n</svg>\n");
        }

        h.Append("<h3>Units</h3>\n<p><label>filter units and curves: <input id=\"unit-filter\" type=\"search\" placeholder=\"name or op type\"></label></p>\n");
        h.Append("<table id=\"unit-table\" class=\"num\"><thead><tr><th>#</th><th>unit</th><th>op</th><th>channels</th><th>weights</th>");
        foreach (var t in targets)
            h.Append($"<th>bits @ {Bits(t.TargetBits)}</th>");
        foreach (var t in targets)
            h.Append($"<th>D<sub>u</sub> @ {Bits(t.TargetBits)}</th>");
        h.Append("</tr></thead><tbody>\n");
        var byTarget = targets.Select(t => t.Units.ToDictionary(u => u.Name, StringComparer.Ordinal)).ToList();
        for (var i = 0; i < targets[0].Units.Count; i++)
        {
            var u = targets[0].Units[i];
            h.Append($"<tr id=\"row-u{i}\" data-filter=\"{E((u.Name + " " + u.OpType).ToLowerInvariant())}\"><td>{i + 1}</td><td class=\"name\">{E(u.Name)}</td><td>{E(u.OpType)}</td>" +
                     $"<td>{u.ChannelStart}&ndash;{u.ChannelStart + u.ChannelCount - 1}</td><td>{u.Size.ToString("N0", Inv)}</td>");
            foreach (var d in byTarget)
                h.Append(d.TryGetValue(u.Name, out var x) ? $"<td><span class=\"chip\" style=\"background:{WidthColour(x.Bits)}\"></span>{x.Bits}</td>" : "<td></td>");
            foreach (var d in byTarget)
                h.Append(d.TryGetValue(u.Name, out var x) ? $"<td>{G(x.PredictedDistortion)}</td>" : "<td></td>");
            h.Append("</tr>\n");
        }
        h.Append("</tbody></table>\n");
        var heads = targets[0].Heads;
        if (heads.Count > 0)
        {
            h.Append("<h3>Head layers (outside the budget)</h3>\n<table class=\"num\"><thead><tr><th>layer</th><th>op</th><th>weights</th><th>bits</th><th>why</th></tr></thead><tbody>\n");
            foreach (var x in heads)
                h.Append($"<tr><td class=\"name\">{E(x.Layer)}</td><td>{E(x.OpType)}</td><td>{x.Size.ToString("N0", Inv)}</td><td>{x.Bits}</td><td class=\"text\">{E(x.Reason)}</td></tr>\n");
            h.Append("</tbody></table>\n");
        }
        var skipped = targets[0].Skipped;
        if (skipped.Count > 0)
        {
            h.Append("<h3>Layers kept float</h3>\n<table><thead><tr><th>layer</th><th>op</th><th>why</th></tr></thead><tbody>\n");
            foreach (var x in skipped)
                h.Append($"<tr><td class=\"name\">{E(x.Layer)}</td><td>{E(x.OpType)}</td><td class=\"text\">{E(x.Reason)}</td></tr>\n");
            h.Append("</tbody></table>\n");
        }
        h.Append("</section>\n");
    }

    /// <summary>
    /// Marks in graph order: the quantized layers in the report's layer order, each as its units (channel order) or, for
    /// a head, one mark; units the layer list does not name follow; float layers close the strip.
    /// </summary>
    private static List<Mark> Marks(PageTarget t, IReadOnlyDictionary<string, int> unitIndex)
    {
        var marks = new List<Mark>();
        var placed = new HashSet<string>(StringComparer.Ordinal);
        var unitsByLayer = t.Units.ToLookup(u => u.Layer, StringComparer.Ordinal);
        var heads = t.Heads.ToDictionary(x => x.Layer, StringComparer.Ordinal);
        Mark UnitMark(PageUnit u) => new("unit", u.Name, u.Bits,
            $"{u.Name}\n{u.Bits} bits\n{u.OpType}, channels {u.ChannelStart}-{u.ChannelStart + u.ChannelCount - 1}, {u.Size.ToString("N0", Inv)} weights\npredicted D_u {G(u.PredictedDistortion)}",
            unitIndex.TryGetValue(u.Name, out var i) ? i : -1);
        foreach (var layer in t.Layers)
        {
            if (heads.TryGetValue(layer.Layer, out var head))
                marks.Add(new Mark("head", head.Layer, head.Bits, $"{head.Layer}\n{head.Bits} bits (head)\n{head.OpType}, {head.Size.ToString("N0", Inv)} weights\n{head.Reason}", -1));
            foreach (var u in unitsByLayer[layer.Layer].OrderBy(u => u.ChannelStart))
                if (placed.Add(u.Name))
                    marks.Add(UnitMark(u));
            // A layer applying another's weight takes that layer's units' widths (one weight, stored once).
            if (layer.SharesWeightOf is { } shares && !heads.ContainsKey(layer.Layer) && !unitsByLayer[layer.Layer].Any())
                foreach (var u in unitsByLayer[shares].OrderBy(u => u.ChannelStart))
                    marks.Add(new Mark("tied", layer.Layer, u.Bits,
                        $"{layer.Layer}\n{u.Bits} bits, tied\napplies the weight of {shares}: its unit {u.Name}, one width, stored once",
                        unitIndex.TryGetValue(u.Name, out var i) ? i : -1));
        }
        marks.AddRange(t.Units.Where(u => placed.Add(u.Name)).Select(UnitMark));
        marks.AddRange(t.Skipped.Select(s => new Mark("float", s.Layer, 32, $"{s.Layer}\nfloat\n{s.OpType}: {s.Reason}", -1)));
        return marks;
    }

    // ---- error curves ----

    private static void Curves(StringBuilder h, IReadOnlyList<PageTarget> targets)
    {
        var first = targets[0];
        h.Append("<section id=\"curves\">\n<h2>Error curves</h2>\n");
        h.Append($"<p>D<sub>u</sub>(b): distortion when only the unit is quantized at b bits ({E(first.CurveMode)} curves), log scale per unit. Dots: the width chosen at each target:");
        for (var i = 0; i < targets.Count; i++)
            h.Append($" <span class=\"chip\" style=\"background:{TargetColours[i % TargetColours.Length]}\"></span>{Bits(targets[i].TargetBits)}");
        h.Append("</p>\n<div class=\"grid-curves\">\n");
        var curves = first.Curves.ToDictionary(c => c.Name, StringComparer.Ordinal);
        var chosen = targets.Select(t => t.Units.ToDictionary(u => u.Name, u => u.Bits, StringComparer.Ordinal)).ToList();
        for (var i = 0; i < first.Units.Count; i++)
        {
            var u = first.Units[i];
            if (!curves.TryGetValue(u.Name, out var c) || c.Bits.Count == 0)
                continue;
            const double W = 200, H = 110, L = 30, R = 6, T = 6, B = 18;
            var points = c.Bits.Zip(c.Distortion).OrderBy(p => p.First).ToList();
            var positive = points.Select(p => p.Second).Where(d => d > 0).ToList();
            var yHi = Math.Ceiling(Math.Log10(positive.Count > 0 ? positive.Max() : 1));
            var yLo = Math.Min(Math.Floor(Math.Log10(positive.Count > 0 ? positive.Min() : 1e-9)), yHi - 1);
            var floor = Math.Pow(10, yLo);
            var xLo = points[0].First;
            var xHi = Math.Max(points[^1].First, xLo + 1);
            double Px(double x) => L + (x - xLo) / (xHi - xLo) * (W - L - R);
            double Py(double d) => T + (yHi - Math.Log10(Math.Max(d, floor))) / (yHi - yLo) * (H - T - B);
            h.Append($"<figure class=\"curve\" id=\"curve-u{i}\" data-unit=\"u{i}\" data-filter=\"{E((u.Name + " " + u.OpType).ToLowerInvariant())}\"><figcaption title=\"{E(u.Name)}\">{E(Short(u.Name))}</figcaption>");
            h.Append($"<svg viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" role=\"img\" aria-label=\"error curve of {E(u.Name)}\">");
            h.Append($"<text class=\"tick\" x=\"{L - 3}\" y=\"{N(T + 8)}\" text-anchor=\"end\">1e{yHi.ToString(Inv)}</text><text class=\"tick\" x=\"{L - 3}\" y=\"{H - B}\" text-anchor=\"end\">1e{yLo.ToString(Inv)}</text>");
            h.Append($"<line class=\"grid\" x1=\"{L}\" y1=\"{H - B}\" x2=\"{W - R}\" y2=\"{H - B}\"/>");
            foreach (var (b, _) in points)
                h.Append($"<text class=\"tick\" x=\"{N(Px(b))}\" y=\"{H - 5}\" text-anchor=\"middle\">{b}</text>");
            h.Append($"<polyline fill=\"none\" stroke=\"#555\" stroke-width=\"1.2\" points=\"{string.Join(" ", points.Select(p => $"{N(Px(p.First))},{N(Py(p.Second))}"))}\"/>");
            foreach (var (b, d) in points)
                h.Append($"<circle cx=\"{N(Px(b))}\" cy=\"{N(Py(d))}\" r=\"1.8\" fill=\"#555\" data-tip=\"{b} bits: D_u {G(d)}\"/>");
            for (var k = 0; k < targets.Count; k++)
            {
                if (!chosen[k].TryGetValue(u.Name, out var bits))
                    continue;
                var at = points.FindIndex(p => p.First == bits);
                if (at < 0)
                    continue;
                var tip = $"{u.Name}\ntarget {Bits(targets[k].TargetBits)}: {bits} bits, D_u {G(points[at].Second)}";
                // Targets choosing the same width stack their dots upward so each stays visible.
                var lift = chosen.Take(k).Count(c => c.TryGetValue(u.Name, out var other) && other == bits) * 7;
                h.Append($"<circle class=\"chosen\" data-target=\"{Bits(targets[k].TargetBits)}\" cx=\"{N(Px(bits))}\" cy=\"{N(Py(points[at].Second) - lift)}\" r=\"4\" fill=\"{TargetColours[k % TargetColours.Length]}\" stroke=\"#fff\" data-tip=\"{E(tip)}\"/>");
            }
            h.Append("</svg></figure>\n");
        }
        h.Append("</div>\n</section>\n");
    }

    // ---- sizes, times, notes, manifest ----

    /// <summary>Quantized activations, priced per tensor (the same for every target: their ranges do not depend on the widths).</summary>
    private static void Activations(StringBuilder h, IReadOnlyList<PageTarget> targets)
    {
        h.Append("<section id=\"activations\">\n<h2>Quantized activations</h2>\n");
        var priced = targets.FirstOrDefault(t => t.Activations is { Tensors.Count: > 0 })?.Activations;
        if (priced is null)
        {
            h.Append(targets[0].ActBits == 0
                ? "<p>Activations stay float (<code>--act-bits 0</code>).</p>\n</section>\n"
                : "<p>Not priced in this compile (exact or fast curves carry no measured gains, or no calibration rows were kept): their error is only in the measured distortion.</p>\n</section>\n");
            return;
        }
        h.Append($"<p>The quantized inputs of {priced.Tensors.Sum(t => t.Layers.Count)} layers ({priced.Tensors.Count} tensors, {priced.Bits}-bit) add a predicted {G(priced.Predicted)} " +
                 "to the features' distortion: each tensor's rounding on the calibration rows, through the weights of the layers that read it, times each layer's measured gain. " +
                 "The weights add " + string.Join(", ", targets.Select(t => $"{G(t.Distortion.PredictedWeights ?? t.Distortion.Predicted)} at {Bits(t.TargetBits)} bits")) + "." +
                 (priced.Unpriced > 0 ? $" {priced.Unpriced} layer input(s) could not be priced (see report.json)." : "") +
                 (priced.Tensors.Any(t => t.Bits != priced.Bits) ? $" {priced.Tensors.Count(t => t.Bits != priced.Bits)} tensor(s) are quantized at 16 bits (<code>--act16-tensors</code>)." : "") + "</p>\n");
        var shown = priced.Tensors.Take(20).ToList();
        var largest = shown.Count > 0 ? shown[0].Predicted : 0;
        h.Append($"<table id=\"activation-table\" class=\"num\"><thead><tr><th>tensor</th><th>bits</th><th>step</th><th>predicted</th><th>share</th><th></th><th>read by</th></tr></thead><tbody>\n");
        foreach (var t in shown)
        {
            var share = priced.Predicted > 0 ? t.Predicted / priced.Predicted : 0;
            var width = largest > 0 ? 120 * t.Predicted / largest : 0;
            h.Append($"<tr><td title=\"{E(t.Tensor)}\">{E(Short(t.Tensor))}</td><td>{t.Bits}</td><td>{G(t.Step)}</td><td>{G(t.Predicted)}</td><td>{(share * 100).ToString("0.0", Inv)} %</td>" +
                     $"<td><svg width=\"120\" height=\"10\" aria-hidden=\"true\"><rect width=\"{N(width)}\" height=\"10\" fill=\"#d62728\"/></svg></td>" +
                     $"<td title=\"{E(string.Join(", ", t.Layers))}\">{E(Short(t.Layers[0]))}{(t.Layers.Count > 1 ? $" +{t.Layers.Count - 1}" : "")}</td></tr>\n");
        }
        h.Append("</tbody></table>\n");
        if (priced.Tensors.Count > shown.Count)
            h.Append($"<p>{priced.Tensors.Count - shown.Count} more tensors in report.json (<code>activations.tensors</code>).</p>\n");
        h.Append("</section>\n");
    }

    private static void Sizes(StringBuilder h, IReadOnlyList<PageTarget> targets)
    {
        h.Append("<section id=\"sizes\">\n<h2>Sizes</h2>\n<p>Weights of the quantized layers: ideal packed (bits &times; weights / 8), as stored (INT2/INT4/INT8 containers plus scales), and float; the model file as written.</p>\n");
        h.Append("<table class=\"num\"><thead><tr><th>target</th><th>rate</th><th>ideal packed</th><th>stored</th><th>float</th><th>float / stored</th><th>model file</th></tr></thead><tbody>\n");
        foreach (var t in targets)
        {
            var s = t.Sizes;
            h.Append($"<tr><td>{Bits(t.TargetBits)}</td><td>{Rate(t.Rate)}</td><td>{Bytes(s.IdealPackedBytes)}</td><td>{Bytes(s.QuantizedWeightBytes)}</td><td>{Bytes(s.FloatWeightBytes)}</td>" +
                     $"<td>{((double)s.FloatWeightBytes / Math.Max(1, s.QuantizedWeightBytes)).ToString("0.0", Inv)}&times;</td><td>{Bytes(s.ModelBytes)}</td></tr>\n");
        }
        h.Append("</tbody></table>\n</section>\n");
    }

    private static void Times(StringBuilder h, PageTarget first)
    {
        h.Append("<section id=\"times\">\n<h2>Stage times</h2>\n<table class=\"num\"><thead><tr><th>stage</th><th>seconds</th><th></th></tr></thead><tbody>\n");
        var max = first.Timings.Select(t => t.Seconds).DefaultIfEmpty(0).Max();
        foreach (var (stage, seconds) in first.Timings)
            h.Append($"<tr><td>{E(stage)}</td><td>{seconds.ToString("0.000", Inv)}</td><td class=\"barcell\"><span class=\"bar\" style=\"width:{N(max > 0 ? seconds / max * 100 : 0)}%\"></span></td></tr>\n");
        h.Append($"<tr><td>total</td><td>{first.Timings.Sum(t => t.Seconds).ToString("0.000", Inv)}</td><td></td></tr>\n</tbody></table>\n</section>\n");
    }

    private static void Notes(StringBuilder h, IReadOnlyList<PageTarget> targets)
    {
        h.Append("<section id=\"notes\">\n<h2>Notes and warnings</h2>\n<ul>\n");
        var notes = targets.SelectMany(t => t.Notes.Select(n => (Note: n, t.TargetBits))).GroupBy(p => p.Note, StringComparer.Ordinal).ToList();
        foreach (var g in notes)
        {
            var where = g.Count() == targets.Count ? "" : $" <span class=\"sub\">(target {string.Join(", ", g.Select(p => Bits(p.TargetBits)).Distinct())})</span>";
            h.Append($"<li>{E(g.Key)}{where}</li>\n");
        }
        if (notes.Count == 0)
            h.Append("<li>none</li>\n");
        h.Append("</ul>\n</section>\n");
    }

    private static void Manifest(StringBuilder h, PageManifest m)
    {
        h.Append($"<section id=\"manifest\">\n<h2>Manifest</h2>\n<p>onnxquant {E(m.ToolVersion)}. The inputs (by hash) and every option that decides the models: rerunning the compile with them gives the same model bytes.</p>\n");
        h.Append("<table class=\"kv\"><tbody>\n");
        foreach (var (k, v) in m.Input)
            h.Append($"<tr><th>{E(k)}</th><td>{E(v)}</td></tr>\n");
        foreach (var (k, v) in m.Options)
            h.Append($"<tr><th>{E(k)}</th><td>{E(v)}</td></tr>\n");
        h.Append("</tbody></table>\n<h3>Outputs</h3>\n<table><thead><tr><th>file</th><th>bytes</th><th>sha256</th></tr></thead><tbody>\n");
        foreach (var (path, sha, bytes) in m.Outputs)
            h.Append($"<tr><td>{E(path)}</td><td>{bytes.ToString("N0", Inv)}</td><td class=\"hash\">{E(sha)}</td></tr>\n");
        h.Append("</tbody></table>\n</section>\n");
    }

    // ---- helpers ----

    private static string Marker(double x, double y, string colour, bool filled, bool square, string attributes, string title)
    {
        var fill = filled ? colour : "#fff";
        // Hover text comes from data-tip through the script; a <title> too would pop a second, native tooltip.
        var inner = attributes.Contains("data-tip=", StringComparison.Ordinal) ? "" : $"<title>{E(title)}</title>";
        return square
            ? $"<rect {attributes} x=\"{N(x - 4.5)}\" y=\"{N(y - 4.5)}\" width=\"9\" height=\"9\" fill=\"{fill}\" stroke=\"{colour}\" stroke-width=\"1.6\">{inner}</rect>"
            : $"<circle {attributes} cx=\"{N(x)}\" cy=\"{N(y)}\" r=\"5\" fill=\"{fill}\" stroke=\"{colour}\" stroke-width=\"1.6\">{inner}</circle>";
    }

    /// <summary>Viridis-like: dark for few bits, bright for many, readable in grey when printed.</summary>
    private static string WidthColour(int bits) => bits switch
    {
        <= 1 => "#2d0a3e",
        2 => "#440154",
        3 => "#3b528b",
        4 => "#21918c",
        5 => "#3fbc73",
        6 => "#95d840",
        7 => "#c8e020",
        8 => "#fde725",
        _ => "#fff3b0",
    };

    private static string Short(string name) => name.Length <= 34 ? name : "\u2026" + name[^33..];

    private static string E(string text) => WebUtility.HtmlEncode(text);

    private static string N(double value) => Math.Round(value, 2).ToString("0.##", Inv);

    private static string G(double value) => double.IsFinite(value) ? value.ToString(Math.Abs(value) is > 0 and < 1e-3 ? "0.###e0" : "G4", Inv) : "&ndash;";

    private static string Bits(double bits) => bits.ToString("0.##", Inv);

    private static string Rate(double rate) => rate.ToString("0.000", Inv);

    private static string Bytes(long bytes) => bytes >= 1 << 20
        ? $"{(bytes / 1048576.0).ToString("0.00", Inv)} MiB"
        : $"{(bytes / 1024.0).ToString("0.0", Inv)} KiB";

    private const string Css = """

body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Liberation Sans",sans-serif;color:#1d1d1d;margin:24px auto;max-width:1040px;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}h3{font-size:14px;margin:16px 0 6px}
.sub{color:#666}nav a{margin-right:12px}
table{border-collapse:collapse;margin:8px 0;font-size:12.5px}th,td{border-bottom:1px solid #e4e4e4;padding:3px 8px;text-align:left;vertical-align:top}
table.num td{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}table.num td.name,table.num td.text,td.name{text-align:left;word-break:break-all;white-space:normal;max-width:420px}
table.kv th{font-weight:600;color:#444}td.hash{font-family:ui-monospace,monospace;font-size:11px}
svg{overflow:visible}.chart{max-width:100%;height:auto}
.grid{stroke:#e8e8e8;stroke-width:1}.tick{font-size:10px;fill:#666}.axis{font-size:12px;fill:#333}.legend{font-size:11.5px;fill:#333}
.alloc{display:block;height:120px;border:1px solid #eee;margin-bottom:6px}
.legend-row span{display:inline-block;margin-right:12px;font-size:12px}.legend-row i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:-2px;border:1px solid #999}
.legend-row i.hatch{background:repeating-linear-gradient(45deg,#21918c 0 2px,#555 2px 4px)}
.chip{display:inline-block;width:10px;height:10px;margin:0 4px 0 2px;border:1px solid #999;vertical-align:-1px}
.grid-curves{display:flex;flex-wrap:wrap;gap:6px}figure.curve{margin:0;border:1px solid #eee;padding:2px 4px;break-inside:avoid}
figure.curve figcaption{font-size:10.5px;color:#333;max-width:200px;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
figure.curve.hl{outline:2px solid #d62728}
.barcell{width:240px}.bar{display:inline-block;height:9px;background:#1f77b4}
#tip{position:fixed;z-index:10;background:#222;color:#fff;padding:6px 8px;border-radius:4px;font-size:12px;white-space:pre;pointer-events:none;max-width:560px;overflow:hidden}
[data-tip]{cursor:default}.unit-mark,.head-mark,.float-mark,.tied-mark{cursor:pointer}
@media print{nav,#tip,label{display:none}body{margin:0;max-width:none}section{break-inside:auto}h2{break-after:avoid}.alloc{break-inside:avoid}}

""";

    private const string Script = """

(function(){
var tip=document.getElementById('tip');
document.addEventListener('mouseover',function(e){
 var t=e.target.closest?e.target.closest('[data-tip]'):null;
 if(!t){tip.hidden=true;return;}
 tip.textContent=t.getAttribute('data-tip');tip.hidden=false;move(e);
});
document.addEventListener('mousemove',function(e){if(!tip.hidden)move(e);});
function move(e){
 var x=e.clientX+14,y=e.clientY+14,r=tip.getBoundingClientRect();
 if(x+r.width>window.innerWidth)x=Math.max(0,e.clientX-r.width-14);
 if(y+r.height>window.innerHeight)y=Math.max(0,e.clientY-r.height-14);
 tip.style.left=x+'px';tip.style.top=y+'px';
}
document.addEventListener('click',function(e){
 var t=e.target.closest?e.target.closest('rect[data-unit]'):null;if(!t)return;
 var c=document.getElementById('curve-'+t.getAttribute('data-unit'));if(!c)return;
 document.querySelectorAll('figure.curve.hl').forEach(function(f){f.classList.remove('hl');});
 c.classList.add('hl');c.scrollIntoView({block:'center'});
});
var f=document.getElementById('unit-filter');
if(f)f.addEventListener('input',function(){
 var q=f.value.trim().toLowerCase();
 document.querySelectorAll('[data-filter]').forEach(function(el){el.style.display=(!q||el.getAttribute('data-filter').indexOf(q)>=0)?'':'none';});
});
})();

""";
}
