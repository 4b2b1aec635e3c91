using System.Text.Json;
using OnnxQuant.Passes.Pipeline;
using OnnxQuant.Solvers;

namespace OnnxQuant.Passes.Artifact;

/// <summary>
/// Writes reports, manifests and front summaries as JSON with a fixed key order, shortest round-trip numbers and
/// "\n" line ends, so identical results give identical bytes. Only <c>timings_s</c> (wall time) varies run to run.
/// </summary>
public static class ReportWriter
{
    private static readonly JsonWriterOptions Options = new() { Indented = true, NewLine = "\n" };

    public static byte[] Report(CompileReport r)
    {
        using var stream = new MemoryStream();
        using (var w = new Utf8JsonWriter(stream, Options))
        {
            w.WriteStartObject();
            w.WriteString("schema", CompileReport.Schema);
            w.WriteString("tool_version", r.ToolVersion);
            w.WriteNumber("target_bits", r.TargetBits);
            w.WriteNumber("rate", r.Rate);
            w.WriteString("solver", r.Solver);
            w.WriteNumber("min_bits", r.MinBits);
            w.WriteStartArray("features");
            foreach (var f in r.Features) w.WriteStringValue(f);
            w.WriteEndArray();
            if (r.FeatureWeights.Count > 0)
            {
                w.WriteStartArray("feature_weights");
                foreach (var weight in r.FeatureWeights) w.WriteNumberValue(weight);
                w.WriteEndArray();
            }
            if (r.TaskWeighting is { } task)
            {
                w.WriteStartObject("task_weighting");
                w.WriteNumber("images", task.Images);
                w.WriteNumber("float_box_ap", Math.Round(task.FloatAp, 6));
                w.WriteNumber("noise", task.Noise);
                w.WriteNumber("trials", task.Trials);
                w.WriteStartArray("outputs");
                foreach (var o in task.Weights)
                {
                    w.WriteStartObject();
                    w.WriteString("feature", o.Feature);
                    w.WriteNumber("weight", o.Weight);
                    w.WriteNumber("box_ap_drop", Math.Round(o.ApDrop, 6));
                    w.WriteEndObject();
                }
                w.WriteEndArray();
                if (task.Note is { } note)
                    w.WriteString("note", note);
                w.WriteEndObject();
            }
            w.WriteString("curve_mode", r.CurveMode.ToString().ToLowerInvariant());
            w.WriteBoolean("curves_from_cache", r.CurvesFromCache);
            w.WriteString("format", r.WeightFormat);
            w.WriteNumber("act_bits", r.ActBits);
            w.WriteString("act_calibration", r.ActCalibration);
            w.WriteNumber("opset", r.Opset);

            w.WriteStartObject("distortion");
            w.WriteNumber("predicted", r.Distortion.Predicted);
            w.WriteNumber("predicted_weights", r.Distortion.PredictedWeights);
            if (r.Distortion.PredictedActivations is { } pa)
                w.WriteNumber("predicted_activations", pa);
            else
                w.WriteNull("predicted_activations");
            w.WriteNumber("measured", r.Distortion.Measured);
            w.WriteNumber("measured_over_predicted", r.Distortion.Predicted > 0 ? Math.Round(r.Distortion.Measured / r.Distortion.Predicted, 4) : 0);
            w.WriteNumber("samples", r.Distortion.Samples);
            w.WriteBoolean("held_out", r.Distortion.HeldOut);
            w.WriteString("metric", r.Distortion.Metric);
            w.WriteEndObject();

            if (r.Activations is { } act)
            {
                w.WriteStartObject("activations");
                w.WriteNumber("bits", act.Bits);
                w.WriteBoolean("priced", act.Priced);
                w.WriteNumber("predicted", act.Total);
                w.WriteStartArray("tensors");
                foreach (var t in act.Tensors)
                {
                    w.WriteStartObject();
                    w.WriteString("tensor", t.Tensor);
                    w.WriteNumber("bits", t.Bits);
                    w.WriteNumber("step", t.Step);
                    w.WriteNumber("predicted", t.Distortion);
                    w.WriteStartArray("layers");
                    foreach (var l in t.Layers) w.WriteStringValue(l);
                    w.WriteEndArray();
                    w.WriteEndObject();
                }
                w.WriteEndArray();
                w.WriteStartArray("raised_to_16_bits");
                foreach (var t in act.RaisedFrom)
                {
                    w.WriteStartObject();
                    w.WriteString("tensor", t.Tensor);
                    w.WriteNumber("predicted_at_base_bits", t.Distortion);
                    w.WriteEndObject();
                }
                w.WriteEndArray();
                w.WriteStartArray("unpriced");
                foreach (var u in act.Unpriced)
                {
                    w.WriteStartObject();
                    w.WriteString("layer", u.Layer);
                    w.WriteString("reason", u.Reason);
                    w.WriteEndObject();
                }
                w.WriteEndArray();
                w.WriteEndObject();
            }

            if (r.Baseline is { } b)
            {
                w.WriteStartObject("uniform_baseline");
                if (b.Skipped is { } reason)
                    w.WriteString("skipped", reason);
                else
                {
                    w.WriteNumber("bits", b.Bits);
                    w.WriteNumber("rate", b.Rate);
                    w.WriteNumber("predicted", b.Predicted);
                    w.WriteNumber("measured", b.Measured);
                    w.WriteBoolean("same_as_mixed", b.SameAsMixed);
                }
                w.WriteEndObject();
            }

            if (r.Accuracy is { } a)
            {
                w.WriteStartObject("accuracy");
                w.WriteString("metric", "bbox AP (COCO, IoU 0.50:0.95)");
                w.WriteNumber("float_ap", a.FloatAp);
                w.WriteNumber("quantized_ap", a.QuantizedAp);
                w.WriteEndObject();
            }

            if (r.Deploy is { } d)
            {
                w.WriteStartObject("deploy");
                w.WriteString("target", d.Target);
                w.WriteNumber("measured_size_target", d.SizeMeasured);
                w.WriteNumber("activation_quantization_cost", d.ActivationCost(r.Distortion.Measured));
                w.WriteNumber("quantized_tensors", d.QuantizedTensors);
                w.WriteStartObject("integer_ops");
                foreach (var (op, count) in d.IntegerOps) w.WriteNumber(op, count);
                w.WriteEndObject();
                w.WriteStartArray("matmulnbits_layers");
                foreach (var l in d.NBitsLayers) w.WriteStringValue(l);
                w.WriteEndArray();
                w.WriteNumber("weight_dequantize_left", d.WeightDequantizeLeft);
                w.WriteNumber("integer_kernels", d.IntegerKernels);
                w.WriteStartArray("bias_fits");
                foreach (var fit in d.BiasFits)
                {
                    w.WriteStartObject();
                    w.WriteString("layer", fit.Layer);
                    w.WriteNumber("channels", fit.Channels);
                    w.WriteNumber("largest_scale_factor", fit.Largest);
                    w.WriteEndObject();
                }
                w.WriteEndArray();
                w.WriteStartObject("optimized_op_types");
                foreach (var (op, count) in d.OptimizedOpTypes) w.WriteNumber(op, count);
                w.WriteEndObject();
                w.WriteEndObject();
            }

            if (r.Selection is { } sel)
            {
                w.WriteStartObject("selection");
                w.WriteString("measured", "with each selection held at the float model's choice (distortion.measured)");
                if (sel.MeasuredMatched is { } matched)
                    w.WriteNumber("measured_matched", matched);
                else
                    w.WriteNull("measured_matched");
                if (sel.MeasuredFree is { } free)
                    w.WriteNumber("measured_free", free);
                else
                    w.WriteNull("measured_free");
                w.WriteStartArray("held");
                foreach (var h in sel.Selections)
                {
                    w.WriteStartObject();
                    w.WriteString("node", h.Node);
                    w.WriteString("op_type", h.OpType);
                    w.WriteString("indices", h.Indices);
                    w.WriteString("scores", h.Scores);
                    w.WriteNumber("agreement", h.Agreement);
                    w.WriteNumber("chosen", h.Chosen);
                    w.WriteEndObject();
                }
                w.WriteEndArray();
                w.WriteEndObject();
            }

            if (r.Smoothing is { } sm)
            {
                w.WriteStartObject("smoothing");
                w.WriteString("mode", sm.Mode);
                w.WriteNumber("samples", sm.Samples);
                w.WriteNumber("scaled", sm.Scaled);
                w.WriteStartArray("sites");
                foreach (var site in sm.Sites)
                {
                    w.WriteStartObject();
                    w.WriteString("tensor", site.Tensor);
                    w.WriteString("root", site.Root);
                    w.WriteString("root_op", site.RootOp);
                    w.WriteNumber("channels", site.Channels);
                    w.WriteStartArray("layers");
                    foreach (var l in site.Layers) w.WriteStringValue(l);
                    w.WriteEndArray();
                    if (site.Rule is { } rule)
                    {
                        w.WriteString("method", rule.Method);
                        w.WriteNumber("alpha", rule.Alpha);
                        w.WriteNumber("min_exponent", site.MinExponent);
                        w.WriteNumber("max_exponent", site.MaxExponent);
                    }
                    else
                        w.WriteString("not_scaled", site.Reason);
                    w.WriteStartObject("relative_error");
                    foreach (var x in site.Relative) w.WriteNumber(x.Bits.ToString(System.Globalization.CultureInfo.InvariantCulture), x.Relative);
                    w.WriteEndObject();
                    w.WriteEndObject();
                }
                w.WriteEndArray();
                w.WriteEndObject();
            }

            w.WriteStartObject("sizes");
            w.WriteNumber("float_weight_bytes", r.Sizes.FloatWeightBytes);
            w.WriteNumber("ideal_packed_bits", r.Sizes.IdealPackedBits);
            w.WriteNumber("ideal_packed_bytes", (r.Sizes.IdealPackedBits + 7) / 8);
            w.WriteNumber("quantized_weight_bytes", r.Sizes.QuantizedWeightBytes);
            w.WriteNumber("model_bytes", r.Sizes.ModelBytes);
            w.WriteEndObject();

            w.WriteStartArray("units");
            foreach (var u in r.Units)
            {
                w.WriteStartObject();
                w.WriteString("name", u.Name);
                w.WriteString("layer", u.Layer);
                w.WriteString("op_type", u.OpType);
                w.WriteNumber("channel_start", u.ChannelStart);
                w.WriteNumber("channel_count", u.ChannelCount);
                w.WriteNumber("size", u.Size);
                w.WriteNumber("bits", u.Bits);
                w.WriteNumber("predicted_distortion", u.PredictedDistortion);
                w.WriteEndObject();
            }
            w.WriteEndArray();

            w.WriteStartArray("heads");
            foreach (var h in r.Heads)
            {
                w.WriteStartObject();
                w.WriteString("layer", h.Layer);
                w.WriteString("op_type", h.OpType);
                w.WriteNumber("size", h.Size);
                w.WriteNumber("bits", h.Bits);
                w.WriteString("reason", h.Reason);
                w.WriteEndObject();
            }
            w.WriteEndArray();

            w.WriteStartArray("skipped");
            foreach (var s in r.Skipped)
            {
                w.WriteStartObject();
                w.WriteString("layer", s.Name);
                w.WriteString("op_type", s.OpType);
                w.WriteString("reason", s.Reason);
                w.WriteEndObject();
            }
            w.WriteEndArray();

            w.WriteStartArray("layers");
            foreach (var l in r.Layers)
            {
                w.WriteStartObject();
                w.WriteString("layer", l.Layer);
                w.WriteString("format", l.Format);
                w.WriteString("container", l.Container.ToString().ToUpperInvariant());
                w.WriteNumber("max_bits", l.MaxBits);
                w.WriteNumber("weights", l.Weights);
                w.WriteNumber("ideal_bits", l.IdealBits);
                w.WriteNumber("bytes", l.Bytes);
                w.WriteNumber("float_bytes", l.FloatBytes);
                if (l.SharesWeightOf is { } shares)
                    w.WriteString("shares_weight_of", shares);
                w.WriteEndObject();
            }
            w.WriteEndArray();

            w.WritePropertyName("curves");
            using (var curves = new MemoryStream())
            {
                CurvesFile.Write(curves, r.Curves);
                using var doc = JsonDocument.Parse(curves.ToArray());
                doc.RootElement.WriteTo(w);
            }

            if (r.CurveGains.Count > 0)
                Curves.GainReportWriter.Write(w, r.CurveGains);

            if (r.Compensated.Count > 0)
            {
                w.WriteStartObject("compensation");
                w.WriteString("mode", r.Compensation);
                w.WriteStartArray("layers");
                foreach (var c in r.Compensated)
                {
                    w.WriteStartObject();
                    w.WriteString("layer", c.Layer);
                    w.WriteBoolean("gptq", c.Gptq);
                    w.WriteBoolean("bias_corrected", c.BiasCorrected);
                    if (c.Shrinkage is { } shrinkage)
                        w.WriteNumber("shrinkage", shrinkage);
                    if (c.BiasNote is { } note)
                        w.WriteString("bias_note", note);
                    w.WriteEndObject();
                }
                w.WriteEndArray();
                w.WriteEndObject();
            }

            if (r.Repair is { } repair)
            {
                w.WriteStartObject("repair");
                w.WriteString("guard", repair.Guard);
                w.WriteBoolean("met", repair.Met);
                w.WriteNumber("rounds", repair.Rounds);
                w.WriteNumber("initial_measured", repair.InitialMeasured);
                w.WriteNumber("final_measured", repair.FinalMeasured);
                if (repair.InitialDrop is { } d0)
                    w.WriteNumber("initial_ap_drop_points", d0);
                if (repair.FinalDrop is { } d1)
                    w.WriteNumber("final_ap_drop_points", d1);
                w.WriteNumber("initial_rate", repair.InitialRate);
                w.WriteNumber("final_rate", repair.FinalRate);
                w.WriteStartArray("raised");
                foreach (var u in repair.Raised)
                {
                    w.WriteStartObject();
                    w.WriteString("unit", u.Unit);
                    w.WriteNumber("from_bits", u.FromBits);
                    w.WriteNumber("to_bits", u.ToBits);
                    w.WriteEndObject();
                }
                w.WriteEndArray();
                w.WriteEndObject();
            }

            w.WriteStartArray("notes");
            foreach (var n in r.Notes) w.WriteStringValue(n);
            w.WriteEndArray();

            w.WriteStartObject("timings_s");
            foreach (var t in r.Timings)
                w.WriteNumber(t.Stage, Math.Round(t.Seconds, 3));
            w.WriteEndObject();
            w.WriteEndObject();
        }
        stream.WriteByte((byte)'\n');
        return stream.ToArray();
    }

    /// <summary>A file the compile wrote, with its hash.</summary>
    public sealed record OutputFile(string Path, string Sha256, long Bytes);

    public const string ManifestSchema = "onnxquant.manifest/1";

    public static byte[] Manifest(string toolVersion, string modelFile, string modelSha256, string dataSha256, int samples,
        IReadOnlyList<OptionEntry> options, IReadOnlyList<OutputFile> outputs)
    {
        using var stream = new MemoryStream();
        using (var w = new Utf8JsonWriter(stream, Options))
        {
            w.WriteStartObject();
            w.WriteString("schema", ManifestSchema);
            w.WriteString("tool_version", toolVersion);
            w.WriteStartObject("input");
            w.WriteString("model", modelFile);
            w.WriteString("model_sha256", modelSha256);
            w.WriteString("calibration_sha256", dataSha256);
            w.WriteNumber("calibration_samples", samples);
            w.WriteEndObject();
            w.WriteStartObject("options");
            foreach (var option in options)
                w.WriteString(option.Key, option.Value);
            w.WriteEndObject();
            w.WriteStartArray("outputs");
            foreach (var o in outputs)
            {
                w.WriteStartObject();
                w.WriteString("path", o.Path);
                w.WriteString("sha256", o.Sha256);
                w.WriteNumber("bytes", o.Bytes);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteEndObject();
        }
        stream.WriteByte((byte)'\n');
        return stream.ToArray();
    }
}
