using System.Text.Json;

namespace OnnxQuant.Passes.Curves;

/// <summary>Writes the <c>curve_gains</c> array of <c>report.json</c>: how each unit's gain curve was obtained.</summary>
public static class GainReportWriter
{
    public static void Write(Utf8JsonWriter w, IReadOnlyList<UnitGain> gains)
    {
        w.WriteStartArray("curve_gains");
        foreach (var g in gains)
        {
            w.WriteStartObject();
            w.WriteString("unit", g.Unit);
            w.WriteString("local", g.Local);
            w.WriteNumber("reference_bits", g.ReferenceBits);
            w.WriteNumber("gain", g.Gain);
            w.WriteNumber("samples", g.Samples);
            Number(w, "relative_error", g.RelativeError);
            w.WriteNumber("low_width_factor", g.LowWidthFactor);
            if (g.Relay is not null)
                w.WriteString("relay", g.Relay);
            Number(w, "local_measured", g.LocalMeasured);
            Number(w, "local_predicted", g.LocalPredicted);
            Number(w, "local_measured_over_predicted", double.IsFinite(g.MeasuredOverPredicted) ? Math.Round(g.MeasuredOverPredicted, 4) : double.NaN);
            w.WriteEndObject();
        }
        w.WriteEndArray();
    }

    private static void Number(Utf8JsonWriter w, string name, double value)
    {
        if (double.IsFinite(value))
            w.WriteNumber(name, value);
        else
            w.WriteNull(name);
    }
}
