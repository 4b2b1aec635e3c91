using System.CommandLine;
using System.Text;
using System.Text.Json;
using OnnxQuant.Frontend;
using OnnxQuant.Passes;
using OnnxQuant.Passes.Canonicalize;
using OnnxQuant.Passes.Pipeline;
using OnnxQuant.Passes.Units;
using Spectre.Console;

namespace OnnxQuant.Cli;

/// <summary>`onnxquant inspect model.onnx [--json]`: what a model is made of, as tables or one JSON object.</summary>
internal static class InspectCommand
{
    public static Command Create()
    {
        var model = new Argument<FileInfo>("model") { Description = "The ONNX model file" };
        var json = new Option<bool>("--json") { Description = "Print one JSON object instead of tables" };
        var command = new Command("inspect", "Summarize a model: IR version, opsets, inputs/outputs, op types, parameters, quantizable layers");
        command.Arguments.Add(model);
        command.Options.Add(json);
        command.SetAction(parse =>
        {
            var path = parse.GetValue(model)!.FullName;
            var loaded = ModelIO.Load(path);
            var summary = ModelSummary.Of(loaded);
            var layers = Quantizable(loaded);
            var notes = Intake.Notes(loaded);
            var output = parse.InvocationConfiguration.Output;
            if (parse.GetValue(json))
                output.WriteLine(ToJson(summary, layers, notes));
            else
                WriteTables(summary, layers, notes, path, output);
            return ExitCodes.Ok;
        });
        return command;
    }

    /// <summary>What compile would quantize (the same discovery compile runs), or why that cannot be told.</summary>
    /// <param name="Canonicalization">What canonicalization changed before the layers were found, as compile's report
    /// says it.</param>
    internal sealed record QuantizableView(UnitDiscoveryResult? Discovery, string? Unavailable, string? Canonicalization = null);

    private static QuantizableView Quantizable(Model model)
    {
        try
        {
            var discovery = UnitDiscovery.Preview(model, out var canonicalization);
            return new QuantizableView(discovery, null, canonicalization);
        }
        catch (Exception ex) when (ex is CompileException or PassFailedException or FrontendException)
        {
            return new QuantizableView(null, ex.Message);
        }
    }

    /// <summary>The summary as one JSON object with stable key order.</summary>
    internal static string ToJson(ModelSummary s, QuantizableView layers, IReadOnlyList<string> notes)
    {
        var buffer = new MemoryStream();
        using (var w = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteNumber("ir_version", s.IrVersion);
            w.WriteStartObject("opsets");
            foreach (var o in s.Opsets) w.WriteNumber(DomainName(o.Domain), o.Version);
            w.WriteEndObject();
            w.WriteString("producer", s.Producer);
            w.WriteNumber("nodes", s.TopLevelNodes);
            w.WriteNumber("nodes_with_subgraphs", s.AllNodes);
            w.WriteNumber("subgraphs", s.Subgraphs);
            w.WriteNumber("functions", s.Functions);
            w.WriteStartObject("op_types");
            foreach (var (op, count) in s.OpTypes.OrderBy(kv => kv.Key, StringComparer.Ordinal)) w.WriteNumber(op, count);
            w.WriteEndObject();
            w.WriteNumber("parameters", s.ParameterCount);
            w.WriteNumber("parameter_bytes", s.ParameterBytes);
            w.WriteStartObject("parameters_by_type");
            foreach (var p in s.Parameters)
            {
                w.WriteStartObject(ModelSummary.TypeName(p.DataType));
                w.WriteNumber("tensors", p.Tensors);
                w.WriteNumber("elements", p.Elements);
                w.WriteNumber("bytes", p.Bytes);
                w.WriteEndObject();
            }
            w.WriteEndObject();
            WriteIo(w, "inputs", s.Inputs);
            WriteIo(w, "outputs", s.Outputs);
            w.WriteStartArray("quantizable");
            foreach (var q in layers.Discovery?.Layers ?? [])
            {
                w.WriteStartObject();
                w.WriteString("node", q.Name);
                w.WriteString("op_type", q.OpType);
                w.WriteString("weight", q.WeightName);
                w.WriteString("weight_type", ModelSummary.TypeName(DataType.Float));
                w.WriteStartArray("weight_shape");
                foreach (var d in q.WeightShape) w.WriteNumberValue(d);
                w.WriteEndArray();
                w.WriteNumber("parameters", q.Size);
                w.WriteBoolean("reaches_output", q.ReachesFeature);
                if (layers.Discovery!.TieOf(q) is { } tie && tie.Representative != q)
                    w.WriteString("shares_weight_of", tie.Representative.Name);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteStartArray("not_quantized");
            foreach (var q in layers.Discovery?.Skipped ?? [])
            {
                w.WriteStartObject();
                w.WriteString("node", q.Name);
                w.WriteString("op_type", q.OpType);
                w.WriteString("reason", q.Reason);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            if (layers.Unavailable is { } why)
                w.WriteString("quantizable_unavailable", why);
            if (layers.Canonicalization is { } changed)
                w.WriteString("canonicalization", changed);
            w.WriteStartArray("warnings");
            foreach (var n in notes) w.WriteStringValue(n);
            w.WriteEndArray();
            w.WriteEndObject();
        }
        return Encoding.UTF8.GetString(buffer.ToArray());
    }

    private static void WriteIo(Utf8JsonWriter w, string key, IReadOnlyList<IoSummary> values)
    {
        w.WriteStartArray(key);
        foreach (var v in values)
        {
            w.WriteStartObject();
            w.WriteString("name", v.Name);
            w.WriteString("type", v.ElementType);
            if (v.Shape is null)
                w.WriteNull("shape");
            else
            {
                // Fixed dims as numbers, symbolic dims as their names, unknown dims as null.
                w.WriteStartArray("shape");
                foreach (var d in v.Shape)
                {
                    if (d.Value is { } n) w.WriteNumberValue(n);
                    else if (d.Param is { } p) w.WriteStringValue(p);
                    else w.WriteNullValue();
                }
                w.WriteEndArray();
            }
            w.WriteEndObject();
        }
        w.WriteEndArray();
    }

    private static string DomainName(string domain) => domain.Length == 0 ? "ai.onnx" : domain;

    private static string Shape(IReadOnlyList<Dim>? dims) => dims is null ? "?" : "[" + string.Join(", ", dims) + "]";

    private static void WriteTables(ModelSummary s, QuantizableView layers, IReadOnlyList<string> notes, string path, TextWriter output)
    {
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(output),
            Ansi = AnsiSupport.No,
            ColorSystem = ColorSystemSupport.NoColors,
            Interactive = InteractionSupport.No,
        });
        console.Profile.Width = 120;
        var header = new Table().Title(Markup.Escape(Path.GetFileName(path))).AddColumns("property", "value");
        AddRow(header, "IR version", s.IrVersion.ToString());
        AddRow(header, "opsets", string.Join(", ", s.Opsets.Select(o => $"{DomainName(o.Domain)} {o.Version}")));
        AddRow(header, "producer", s.Producer.Length > 0 ? s.Producer : "-");
        AddRow(header, "nodes", $"{s.TopLevelNodes} top-level; {s.AllNodes} counting {s.Subgraphs} subgraph(s) and {s.Functions} function(s), as op types do");
        AddRow(header, "parameters", $"{s.ParameterCount:N0} ({FormatBytes(s.ParameterBytes)})");
        console.Write(header);
        foreach (var n in notes)
            console.WriteLine("warning: " + n);

        var io = new Table().Title("inputs and outputs").AddColumns("kind", "name", "type", "shape");
        foreach (var v in s.Inputs) AddRow(io, "input", v.Name, v.ElementType, Shape(v.Shape));
        foreach (var v in s.Outputs) AddRow(io, "output", v.Name, v.ElementType, Shape(v.Shape));
        console.Write(io);

        var ops = new Table().Title("op types").AddColumns("op type", "count");
        foreach (var (op, count) in s.OpTypes) AddRow(ops, op, count.ToString());
        console.Write(ops);

        if (s.Parameters.Count > 0)
        {
            var p = new Table().Title("parameters by data type").AddColumns("type", "tensors", "elements", "bytes");
            foreach (var x in s.Parameters)
                AddRow(p, ModelSummary.TypeName(x.DataType), x.Tensors.ToString(), x.Elements.ToString("N0"), FormatBytes(x.Bytes));
            console.Write(p);
        }

        if (layers.Discovery is not { } found)
        {
            console.WriteLine($"quantizable layers: not determined ({layers.Unavailable})");
            return;
        }
        if (layers.Canonicalization is { } changed)
            console.WriteLine(changed);
        var q = new Table().Title($"quantizable layers: {found.Layers.Count}").AddColumns("node", "op", "weight", "shape", "parameters");
        foreach (var l in found.Layers)
            AddRow(q, l.Name.Length > 0 ? l.Name : "-", l.OpType, l.WeightName, "[" + string.Join(", ", l.WeightShape) + "]", l.Size.ToString("N0"));
        console.Write(q);
        if (found.Ties.Count > 0)
            console.WriteLine($"shared weights: {found.Ties.Count} weight(s) applied by {found.Ties.Sum(t => t.Layers.Count())} of these layers; " +
                              "each is tied (one width, stored once): " + string.Join("; ", found.Ties.Take(3).Select(t => string.Join(", ", t.Layers.Select(l => l.Name)))) +
                              (found.Ties.Count > 3 ? "; ..." : ""));
        if (found.Skipped.Count > 0)
        {
            var skipped = new Table().Title($"kept in float: {found.Skipped.Count}").AddColumns("node", "op", "reason");
            foreach (var l in found.Skipped)
                AddRow(skipped, l.Name, l.OpType, l.Reason);
            console.Write(skipped);
        }
    }

    /// <summary>Adds a row of plain text (names and shapes may contain Spectre markup characters such as '[').</summary>
    private static void AddRow(Table table, params string[] cells) =>
        table.AddRow(cells.Select(c => (Spectre.Console.Rendering.IRenderable)new Text(c)).ToArray());

    private static string FormatBytes(long bytes) => bytes switch
    {
        >= 1L << 30 => $"{bytes / (double)(1L << 30):F2} GiB",
        >= 1L << 20 => $"{bytes / (double)(1L << 20):F2} MiB",
        >= 1L << 10 => $"{bytes / 1024.0:F1} KiB",
        _ => $"{bytes} B",
    };
}
