using System.Globalization;
using OnnxQuant.Frontend;
using OnnxQuant.Passes.Calibration;
using OnnxQuant.Passes.Measurement;
using OnnxQuant.Passes.Pipeline;
using OnnxQuant.Passes.Rewrite;
using OnnxQuant.Passes.Quantization;
using OnnxQuant.Passes.Units;
using OnnxQuant.Runtime;
using OnnxQuant.Solvers;

namespace OnnxQuant.Passes.Curves;

/// <summary>Parameters of the gain curves (part of the curve cache key).</summary>
/// <param name="MinSamples">Samples every gain is measured on before the error bar is looked at.</param>
/// <param name="MaxSamples">Most samples a gain is measured on.</param>
/// <param name="RelativeError">Stop adding samples once the standard error of the gain is below this fraction of it.</param>
/// <param name="LocalRows">Input rows per layer behind the closed-form local error.</param>
/// <param name="RowSamples">Calibration samples the rows are drawn from (evenly spaced over the set; 0 = every sample):
/// only their runs of the calibration pass return the layer inputs whole. Every sample by default: on the bundled
/// DETR, rows from 8, 16 or 32 samples left the compensated uniform 4- and 3-bit models 15 to 26 % more distorted.</param>
/// <param name="CacheMemoryBytes">Cut activations kept in memory; the rest is spilled to a temporary folder (the runs of a segment
/// read each of its values once).</param>
/// <param name="SegmentLayers">Consecutive layers that share one cut session.</param>
/// <param name="LowWidthSamples">Samples the gain at the lowest candidate width is also measured on (0 = not
/// measured), for the widths below the reference; at most the samples of the reference gain.</param>
/// <param name="Relay">Whether a segment whose layers reach the features only through one value (a backbone block's
/// output, a transformer layer's) measures each unit's gain up to that value, and the value's own gain to the features
/// once for the segment (see <see cref="CutCurveMeasurer"/>).</param>
/// <param name="RelayPairs">Unit perturbations the relay's gain is measured on at first, spread over the segment.</param>
/// <param name="RelayMaxPairs">Most perturbations the relay's gain is measured on before the segment falls back to
/// running every unit's perturbation through to the features.</param>
/// <param name="RelayMinLayers">Fewest layers in a segment for it to be relayed.</param>
public sealed record GainSettings(int MinSamples = 2, int MaxSamples = 3, double RelativeError = 0.25, int LocalRows = 512,
    long CacheMemoryBytes = 64L << 20, int SegmentLayers = 8, int LowWidthSamples = 1, int RowSamples = 0,
    bool Relay = true, int RelayPairs = 4, int RelayLowPairs = 2, int RelayMaxPairs = 8, int RelayMinLayers = 4)
{
    public static GainSettings Default { get; } = new();

    /// <summary>Largest over smallest gain beyond a relay value that the probes of one segment may show for one gain to
    /// stand for all its units: (1 + e) / (1 - e) for the error bar e a directly measured gain stops at (1.67 for 25 %),
    /// so the chained gains stray no further from each other than direct ones may. On DETR-R50 the ResNet's probes stay
    /// within 1.54; a transformer layer's query and value projections differ up to 20-fold beyond the residual sum.</summary>
    public double RelaySpread => RelativeError is > 0 and < 1 ? (1 + RelativeError) / (1 - RelativeError) : 1;

    /// <summary>The parts of the curve cache key these settings add.</summary>
    public IEnumerable<string> KeyParts() =>
    [
        "gain-samples=" + MinSamples + ".." + MaxSamples,
        "gain-error=" + RelativeError.ToString(CultureInfo.InvariantCulture),
        "gain-rows=" + LocalRows + (RowSamples > 0 ? "/" + RowSamples.ToString(CultureInfo.InvariantCulture) : ""),
        "gain-low=" + LowWidthSamples.ToString(CultureInfo.InvariantCulture),
        .. Relay ? new[] { "gain-relay=" + RelayPairs + "+" + RelayLowPairs + ".." + RelayMaxPairs + "/" + RelayMinLayers + "/" + RelaySpread.ToString("0.###", CultureInfo.InvariantCulture) } : [],
    ];
}

/// <summary>
/// Where the curve stage's time went (seconds; wall time, so not part of any file the compile writes): the float pass
/// that caches cut activations, building the cut sessions, quantizing the weights at every width (compensation
/// included), the closed-form local errors, and the cut runs.
/// </summary>
/// <param name="FillRuns">Float runs made to cache cut activations the calibration pass did not hand over (0 normally).</param>
public sealed record CurveTiming(double CacheFill, double Sessions, double Quantize, double LocalErrors, double Runs, int FillRuns);

/// <summary>
/// How one unit's gain curve was obtained. <see cref="LocalMeasured"/> is the mean of ||dz||^2 (the layer-output
/// change, measured in ONNX Runtime) over the gain samples, <see cref="LocalPredicted"/> the closed form for the same
/// width over all calibration samples; their ratio checks the closed form.
/// </summary>
/// <param name="LowWidthFactor">Gain at the lowest width over the gain at the reference width, on the first samples
/// (1 when not measured): how much more than linearly a large perturbation propagates.</param>
public sealed record UnitGain(string Unit, int ReferenceBits, double Gain, int Samples, double RelativeError,
    double LocalMeasured, double LocalPredicted, string Local, double LowWidthFactor = 1)
{
    public double MeasuredOverPredicted => LocalPredicted > 0 ? LocalMeasured / LocalPredicted : double.NaN;

    /// <summary>The value the gain was chained through (its gain times the unit's gain up to it), when it was.</summary>
    public string? Relay { get; init; }
}

/// <summary>
/// Error curves on graph cuts. Each layer gets one ONNX Runtime session over its <see cref="GraphCut"/> (the layer and
/// what lies between it and the features), fed with float activations at the cut that one instrumented float pass
/// caches per sample (<see cref="ActivationCache"/>), so a measurement re-runs only the part of the model the weight
/// can change.
/// <para>
/// Gain mode (the default): <c>D_u(b) = g_u * L_u(b)</c>. <c>L_u(b) = tr(dW_u(b) S dW_u(b)^T)</c> per sample is the
/// closed-form layer-local error (<see cref="LayerInputRows"/>, from rows collected in the calibration pass through
/// <see cref="ICalibrationTap"/>); <c>g_u = sum_s d_s / sum_s l_s</c> is the propagation gain measured by injecting the
/// real 4-bit perturbation on samples 0, 1, 2, ... in order: d_s = sum_f ||y_f - y_f^float||^2 / E_f (E_f the mean
/// per-sample feature energy over all calibration samples) and l_s = ||dW x_s||^2 (a bias-free copy of the layer fed
/// dW). Samples are added from <see cref="GainSettings.MinSamples"/> until the standard error of the ratio estimator,
/// sqrt(sum_s (d_s - g l_s)^2 / (n (n - 1))) / mean(l), is below <see cref="GainSettings.RelativeError"/> of g, or
/// <see cref="GainSettings.MaxSamples"/> is reached. Layers whose rows cannot be formed (non-2-D convolutions, odd
/// input layouts) are measured at every width on the gain samples instead, with a note.
/// </para>
/// <para>
/// Relayed gains (gain mode, <see cref="GainSettings.Relay"/>): when every path from a segment's layers to the features
/// passes through one value P (a residual block's sum in a backbone, a transformer layer's residual stream), a unit's
/// feature distortion is a function of the change it makes at P alone, d_s = F(P + dP_s). The segment is then run as a
/// head (its layers up to P) and a tail (P to the features). Four units spread over the segment run their perturbation
/// on sample 0 through both; where their gains beyond P, d / ||dP||^2, agree within <see cref="GainSettings.RelaySpread"/>, every
/// unit's gain is g_u = G * sum_s ||dP_s||^2 / sum_s l_s with G = sum d / sum ||dP||^2 over the perturbations run through
/// the tail (more are added until its standard error is below <see cref="GainSettings.RelativeError"/>), so each unit's
/// own runs stop at P; its bend below the reference width is its own up to P times G's (G at the lowest width over G).
/// Where they disagree (a query projection's and a value projection's perturbations of one attention layer), the
/// segment is measured unit by unit on its whole cut, as without relays.
/// </para>
/// <para>Exact mode: every width on every sample, <c>D_u(b) = sum_s sum_f ||dy_f||^2 / sum_s ||y_f||^2</c>, as before
/// but on the cut.</para>
/// </summary>
public sealed class CutCurveMeasurer : ICalibrationTap, IDisposable
{
    private readonly Model _model;
    private readonly IReadOnlyList<QuantUnit> _units;
    private readonly IReadOnlyList<string> _features;
    private readonly int _samples;
    private readonly CurveOptions _options;
    private readonly RewriteOptions _storage;
    private readonly int _threads;
    private readonly GainSettings _settings;
    private readonly List<QuantLayer> _layers;
    private readonly Dictionary<string, List<LayerInputRows>> _rowsByActivation = new(StringComparer.Ordinal);
    private readonly Dictionary<QuantLayer, LayerInputRows> _rows = [];
    private readonly FeatureEnergy[] _energy;
    private readonly IReadOnlyList<double>? _featureWeights;
    private readonly Dictionary<QuantLayer, WeightTie> _tieOf = [];
    private readonly bool _measure;
    private readonly int _cacheSamples;
    private readonly IReadOnlyList<GraphCut> _segments = [];
    private readonly IReadOnlyList<RelayPlan?> _relays = [];
    private readonly IReadOnlyList<string> _cached = [];
    private readonly ActivationCache _cache;
    private readonly HashSet<string> _sampledOutputs = [];

    /// <summary>Most elements of a layer output kept for ||dz||^2 (a fixed stride over the tensor).</summary>
    internal const int OutputSampleElements = 1 << 16;

    /// <param name="model">The canonical model (not modified).</param>
    /// <param name="measure">Whether curves will be measured (false: only compensation statistics are collected).</param>
    public CutCurveMeasurer(Model model, IReadOnlyList<QuantUnit> units, IReadOnlyList<string> features, int samples,
        CurveOptions options, RewriteOptions storage, int threads, GainSettings? settings = null, bool measure = true,
        IReadOnlyList<double>? featureWeights = null, IReadOnlyList<WeightTie>? ties = null)
    {
        _featureWeights = featureWeights;
        ties ??= [];
        foreach (var tie in ties)
            foreach (var layer in tie.Layers)
                _tieOf[layer] = tie;
        _model = model;
        _units = units;
        _features = features;
        _samples = samples;
        _options = options;
        _storage = storage;
        _threads = threads;
        _settings = settings ?? GainSettings.Default;
        _layers = units.Select(u => u.Layer).Distinct().ToList();
        _energy = features.Select(_ => new FeatureEnergy()).ToArray();
        _measure = measure;
        _cache = new ActivationCache(_settings.CacheMemoryBytes);
        // Known (cached or pinned) curves fetch the same tensors from the calibration pass as a measurement, and drop
        // them: ONNX Runtime never fuses a node away whose output is fetched, so what is fetched moves the layer inputs
        // in their last bits, and with them compensation's statistics and the artifact's bytes.
        if (options.Mode != CurveMode.Fast)
        {
            var exactMode = options.Mode == CurveMode.Exact;
            _cacheSamples = exactMode ? samples : Math.Min(samples, _settings.MaxSamples);
            _segments = _layers.Chunk(Math.Max(1, _settings.SegmentLayers)).Select(c => GraphCut.Find(model, c, features)).ToList();
            _relays = _segments.Select(c => exactMode || !_settings.Relay ? null : PlanRelay(model, c, features, _settings)).ToList();
            // What the cut runs read: the cut values, the float features and (gain mode) each layer's float output; a
            // relayed segment's head and tail read theirs (the segment's), and the relay value comes from the head.
            _cached = _segments.SelectMany(c => c.CutValues.Concat(exactMode ? [] : c.OutputOf.Values))
                .Concat(_relays.OfType<RelayPlan>().SelectMany(r => r.Head.CutValues.Concat(r.Tail.CutValues.Where(v => v != r.Value))))
                .Concat(features).Distinct(StringComparer.Ordinal).ToList();
            _sampledOutputs = exactMode ? [] : _segments.SelectMany(c => c.OutputOf.Values)
                .Where(n => !_segments.Any(c => c.CutValues.Contains(n)) && !features.Contains(n)).ToHashSet(StringComparer.Ordinal);
        }
        // Rows also feed compensation (second-order rounding, bias correction), whatever the curve mode.
        if (options.Mode == CurveMode.Exact && storage.Compensation == Compensation.None)
            return;
        _rowSamples = RowSampleSet(samples, _settings.RowSamples > 0 ? _settings.RowSamples : samples);
        var perSample = Math.Max(1, (_settings.LocalRows + _rowSamples.Count - 1) / _rowSamples.Count);
        for (var i = 0; i < _layers.Count; i++)
        {
            var layer = _layers[i];
            var node = model.Graph.FindInitializer(layer.WeightName)!.Uses[0].Node;
            var rows = new LayerInputRows(layer, node, perSample, i + 1);
            _rows[layer] = rows;
            if (!_rowsByActivation.TryGetValue(layer.Activation, out var list))
                _rowsByActivation[layer.Activation] = list = [];
            list.Add(rows);
        }
        // Tied layers are compensated with their rows together, so each width is quantized once for all of them.
        foreach (var tie in ties)
        {
            var measured = tie.Layers.Where(_rows.ContainsKey).ToList();
            foreach (var copy in measured.Skip(1))
                Memo.Alias(copy.Name, measured[0].Name);
        }
    }

    /// <summary>A relayed segment: <see cref="Head"/> runs its layers up to <see cref="Value"/>, <see cref="Tail"/> from
    /// that value to the features.</summary>
    private sealed record RelayPlan(string Value, GraphCut Head, GraphCut Tail);

    /// <summary>The segment's relay, where one exists and most of a run of the segment's cut lies beyond it.</summary>
    private static RelayPlan? PlanRelay(Model model, GraphCut segment, IReadOnlyList<string> features, GainSettings settings)
    {
        if (segment.Layers.Count < Math.Max(2, settings.RelayMinLayers))
            return null;
        if (GraphCut.CommonRelay(model, segment.Layers, features) is not { } value)
            return null;
        var tail = GraphCut.FindFrom(model, value, features);
        if (2 * tail.Nodes < segment.Nodes)
            return null;
        return new RelayPlan(value, GraphCut.Find(model, segment.Layers, [value]), tail);
    }

    /// <summary>0 .. n-1 in an order whose every prefix spreads over the range: both ends, then midpoints.</summary>
    internal static IReadOnlyList<int> SpreadOrder(int n)
    {
        var order = new List<int>();
        if (n <= 0)
            return order;
        order.Add(0);
        if (n == 1)
            return order;
        order.Add(n - 1);
        var intervals = new Queue<(int Lo, int Hi)>();
        intervals.Enqueue((0, n - 1));
        while (intervals.Count > 0)
        {
            var (lo, hi) = intervals.Dequeue();
            if (hi - lo < 2)
                continue;
            var mid = (lo + hi) / 2;
            order.Add(mid);
            intervals.Enqueue((lo, mid));
            intervals.Enqueue((mid, hi));
        }
        return order;
    }

    /// <summary>The samples the input rows come from: <paramref name="count"/> of them, evenly spaced, sample 0 first.</summary>
    internal static IReadOnlySet<int> RowSampleSet(int samples, int count)
    {
        var n = Math.Clamp(count, 1, Math.Max(1, samples));
        return Enumerable.Range(0, n).Select(i => (int)((long)i * samples / n)).ToHashSet();
    }

    private readonly IReadOnlySet<int> _rowSamples = new HashSet<int>();

    public IReadOnlySet<int> ObservedSamples => _rows.Count > 0 ? _rowSamples : new HashSet<int>();

    /// <summary>Whether the calibration pass must feed this object (input rows, feature energy, cut activations).</summary>
    public bool CollectsRows => _rows.Count > 0 || _cached.Count > 0;

    /// <summary>The samples whose cut activations the calibration pass hands over (one per run).</summary>
    public int LeadingSamples => _cacheSamples;

    public IReadOnlyCollection<string> CapturedTensors => _cached;

    public int? CaptureElements(string tensor) => _sampledOutputs.Contains(tensor) ? OutputSampleElements : null;

    public void Capture(string tensor, int sample, TensorData value)
    {
        if (!_measure || sample >= _cacheSamples || _cache.Contains(tensor, sample))
            return;
        // A layer output only serves ||dz||^2, which a fixed stride of its elements estimates (quantization noise is
        // spread over the whole tensor): the cache keeps at most OutputSampleElements of it.
        _cache.Put(tensor, sample, _sampledOutputs.Contains(tensor) ? Sampled(value) : value);
    }

    /// <summary>Every stride-th element, the stride chosen from the length alone; the squared norm of what is kept times
    /// <see cref="StrideOf"/> estimates the whole.</summary>
    internal static float[] Strided(float[] values)
    {
        var stride = StrideOf(values.Length);
        if (stride == 1)
            return values;
        var kept = new float[(values.Length + stride - 1) / stride];
        for (var i = 0; i < kept.Length; i++)
            kept[i] = values[i * stride];
        return kept;
    }

    private static TensorData Sampled(TensorData value)
    {
        var kept = Strided(value.ToFloats());
        return TensorData.FromFloats(kept, [kept.Length]);
    }

    internal static int StrideOf(int length) => Math.Max(1, (length + OutputSampleElements - 1) / OutputSampleElements);

    private string? _rowFolder;

    /// <summary>
    /// Moves every layer's input rows to a private temporary folder once calibration is over (200 MB on DETR-R50):
    /// the curves read each layer's once, the rewrites only where the memo lacks a width; the floats are the same.
    /// </summary>
    public void SpillRows()
    {
        if (_rows.Count == 0 || _rowFolder is not null)
            return;
        _rowFolder = ScratchFolder.Create("rows");
        var index = 0;
        foreach (var layer in _layers)
            if (_rows.TryGetValue(layer, out var rows))
                rows.Spill(Path.Combine(_rowFolder, $"{index++}.bin"));
    }

    private void DeleteRows()
    {
        if (_rowFolder is not null && Directory.Exists(_rowFolder))
            Directory.Delete(_rowFolder, true);
        _rowFolder = null;
    }

    public void Dispose()
    {
        _cache.Dispose();
        Memo.Dispose();
        DeleteRows();
    }

    /// <summary>The calibration rows of a layer's input; null when this measurer keeps none for it.</summary>
    public LayerInputRows? RowsOf(QuantLayer layer) => _rows.GetValueOrDefault(layer);

    /// <summary>Input statistics of a layer (by name) for compensation, from the rows the calibration pass fed; null
    /// without compensation or rows. Computed on demand and kept up to <see cref="StatisticsBudgetBytes"/>.</summary>
    public InputStatistics? Statistics(string layer)
    {
        if (_storage.Compensation == Compensation.None)
            return null;
        _statistics ??= new InputStatisticsCache(name =>
        {
            var layer = _rows.Keys.FirstOrDefault(l => l.Name == name);
            if (layer is null)
                return null;
            // Tied layers are compensated together: one quantized weight serves every input.
            if (_tieOf.TryGetValue(layer, out var tie))
                return LayerInputRows.Combined(tie.Layers.Where(_rows.ContainsKey).Select(l => _rows[l]).ToList());
            return _rows[layer].Statistics();
        }, StatisticsBudgetBytes);
        return _statistics.Find(layer);
    }

    private InputStatisticsCache? _statistics;

    /// <summary>S and factors kept at once. The curves use each layer's once (every width in one pass) and the rewrites
    /// find their widths in the memo, so little more than the largest layer's is ever reused.</summary>
    internal const long StatisticsBudgetBytes = 256L << 20;

    /// <summary>The compensated weights the curves measured, for the rewrites to reuse (they are the same).</summary>
    public CompensationMemo Memo { get; } = new(MemoBudgetBytes);

    /// <summary>Quantized widths kept in memory; the rest wait on disk for the rewrites (DETR-R50's six widths are 250 MB).</summary>
    internal const long MemoBudgetBytes = 64L << 20;

    /// <summary>The features: their energy over all calibration samples normalizes the gain measurements.</summary>
    public IReadOnlyCollection<string> ExtraTensors => _options.Mode == CurveMode.Gain ? _features.ToList() : [];

    public IReadOnlyCollection<string> SelectableTensors => _rowsByActivation.Keys.ToList();

    public long[]? Selection(string tensor, int sample, long[] shape)
    {
        if (!_rowsByActivation.TryGetValue(tensor, out var rows) || !_rowSamples.Contains(sample))
            return null;
        var positions = new List<long>();
        foreach (var r in rows)
        {
            // A layer whose rows cannot be formed wants nothing; if that is every layer of the tensor, so be it.
            if (r.SelectionPositions(shape, sample) is { } p)
                positions.AddRange(p);
        }
        return positions.ToArray();
    }

    public void ObserveSelection(string tensor, int sample, long[] shape, float[] selected)
    {
        if (!_rowsByActivation.TryGetValue(tensor, out var rows) || !_rowSamples.Contains(sample))
            return;
        var offset = 0;
        foreach (var r in rows)
        {
            if (r.SelectionPositions(shape, sample) is not { } p)
                continue;
            r.AddSelected(shape, sample, selected.AsSpan(offset, p.Length));
            offset += p.Length;
        }
    }

    public void Observe(string tensor, int firstSample, int count, float[] values, long[] shape)
    {
        if (_rowsByActivation.TryGetValue(tensor, out var rows) && count == 1 && _rowSamples.Contains(firstSample))
            foreach (var r in rows)
                r.Add(values, shape, firstSample, count);
        for (var f = 0; f < _features.Count; f++)
            if (_features[f] == tensor)
                _energy[f].Add(values, count);
    }

    /// <summary>Measures every unit's curve. In gain mode the calibration pass must have run with this object as its tap.</summary>
    public CurveSet Measure(CalibrationSet data, SessionOptions sessionOptions, IProgressSink progress)
    {
        var exact = _options.Mode == CurveMode.Exact;
        var bits = _options.CandidateBits.OrderBy(b => b).ToArray();
        var referenceBits = CurveMeasurer.ReferenceBits(bits);
        if (!_measure)
            throw new InvalidOperationException("this measurer was created to collect statistics only");
        var cacheSamples = _cacheSamples;
        var segments = _segments;
        var cache = _cache;
        var fillClock = System.Diagnostics.Stopwatch.StartNew();
        // Normally the calibration pass captured everything; a sample it did not (no calibration pass) is run here.
        var missing = Enumerable.Range(0, cacheSamples).Where(smp => _cached.Any(n => !cache.Contains(n, smp))).ToList();
        if (missing.Count > 0)
            FillCache(cache, data, missing, sessionOptions);
        fillClock.Stop();
        var sessionClock = new System.Diagnostics.Stopwatch();
        var quantizeClock = new System.Diagnostics.Stopwatch();
        var localClock = new System.Diagnostics.Stopwatch();
        var runClock = new System.Diagnostics.Stopwatch();
        var energy = new double[_features.Count];
        for (var f = 0; f < _features.Count; f++)
        {
            var e = _energy[f];
            if (exact || e.Samples == 0)
            {
                e = new FeatureEnergy();
                for (var s = 0; s < cacheSamples; s++)
                    e.Add(cache.Get(_features[f], s).ToFloats(), 1);
            }
            energy[f] = e.PerSample / Measurement.FeatureMetric.Weight(_featureWeights, f);
        }

        var exactWorkers = Math.Clamp(_threads > 0 ? _threads : Environment.ProcessorCount, 1, Math.Min(MaxExactSessions, Math.Max(1, _samples)));
        var notes = new List<string>();
        var gains = new List<UnitGain>();
        var curves = new List<UnitCurve>(_units.Count);
        var runs = 0;
        double cutNodes = 0;
        var relayOutcomes = new List<RelayOutcome>();
        using (var stage = progress.Begin("curves", _units.Count))
        {
            for (var segmentIndex = 0; segmentIndex < segments.Count; segmentIndex++)
            {
                var cut = segments[segmentIndex];
                var plan = _relays.Count > segmentIndex ? _relays[segmentIndex] : null;
                cutNodes += cut.Nodes * cut.Layers.Count;
                sessionClock.Start();
                // Every cached sample gives the same shape to a cut value when the model has a fixed batch; a shape
                // that varies is left unknown.
                (DataType Type, long[]? Shape) TypeOf(string n)
                {
                    var (type, shape) = cache.Describe(n, 0);
                    var fixedShape = Enumerable.Range(1, cacheSamples - 1).All(smp => cache.Describe(n, smp).Shape.SequenceEqual(shape));
                    return (type, fixedShape ? shape : null);
                }
                // A relayed segment runs its head (its layers up to the relay value) and its tail (from that value to the
                // features) where others run their whole cut.
                var head = plan?.Head ?? cut;
                using var sessions = OpenSessions(head.Build(_model, TypeOf, withLayerOutputs: !exact), exact ? exactWorkers : 0, sessionOptions);
                sessionClock.Stop();
                var floatWeights = cut.Layers.ToDictionary(l => l,
                    l => _model.Graph.FindInitializer(l.WeightName)!.Initializer!.ToFloatArray());
                // One runner per session. Exact curves run them in parallel: each times itself, and the clock of the
                // stage is the wall time of the parallel section.
                var runners = sessions.Select(session => new CutRunner(session, head, cache, plan is null ? _features : [plan.Value],
                    plan is null ? energy : [1.0], floatWeights, exact ? new System.Diagnostics.Stopwatch() : runClock, keep: !exact)).ToArray();
                var runner = runners[0];
                CutRunner? tail = null;
                SessionGroup? tailSessions = null;
                if (plan is not null)
                {
                    // The relay value's float samples come from the head (a few short runs), not from calibration: a
                    // backbone's block sums at full resolution would add to calibration's peak what they save in time.
                    var relayShapes = new List<long[]>();
                    var relayType = DataType.Float;
                    for (var smp = 0; smp < cacheSamples; smp++)
                    {
                        var value = runner.FloatRun(smp, plan.Value);
                        relayShapes.Add(value.Shape);
                        relayType = value.DataType;
                        runner.Hold(plan.Value, smp, value);
                    }
                    var relayShape = relayShapes.All(x => x.SequenceEqual(relayShapes[0])) ? relayShapes[0] : null;
                    sessionClock.Start();
                    tailSessions = OpenSessions(plan.Tail.Build(_model, n => n == plan.Value ? (relayType, relayShape) : TypeOf(n),
                        withLayerOutputs: false), 0, sessionOptions);
                    sessionClock.Stop();
                    tail = new CutRunner(tailSessions[0], plan.Tail, cache, _features, energy, new Dictionary<QuantLayer, float[]>(), runClock, keep: true);
                }
                using var tailScope = tailSessions;

                // The relayed units, in the order the loop below meets them. The first spread ones' perturbations on
                // sample 0 run through head and tail before anything else: whether their gains beyond the relay value
                // agree decides how the segment is measured.
                var relayedUnits = plan is null ? [] : cut.Layers.Where(HasLocalError).SelectMany(l => _units.Where(u => u.Layer == l)).ToList();
                var spread = SpreadOrder(relayedUnits.Count);
                var probes = new Dictionary<(int Index, int Sample, bool Low), RelayPair>();
                var lowWidth = _settings.LowWidthSamples > 0 && bits[0] < referenceBits;
                if (tail is not null)
                {
                    foreach (var i in spread.Take(_settings.RelayPairs))
                        probes[(i, 0, false)] = Through(runner, tail, relayedUnits[i], i, 0, referenceBits, false, floatWeights, quantizeClock);
                    if (lowWidth)
                        foreach (var i in spread.Take(_settings.RelayLowPairs))
                            probes[(i, 0, true)] = Through(runner, tail, relayedUnits[i], i, 0, bits[0], true, floatWeights, quantizeClock);
                }
                var chainSegment = tail is not null && relayedUnits.Count > 0 && Agree(probes.Values.Where(x => !x.Low).ToList())
                    && Agree(probes.Values.Where(x => x.Low).ToList(), required: false);

                // A relayed segment whose units disagree beyond the value is measured as any other, on its whole cut (one
                // run costs less than a head run and a tail run).
                sessionClock.Start();
                if (tail is not null && !chainSegment)
                {
                    // Head and tail are done with: their weights leave before the whole cut's arrive.
                    sessions.Dispose();
                    tailSessions!.Dispose();
                }
                using var wholeSessions = tail is not null && !chainSegment ? OpenSessions(cut.Build(_model, TypeOf, withLayerOutputs: true), 0, sessionOptions) : null;
                sessionClock.Stop();
                var whole = wholeSessions is null ? null : new CutRunner(wholeSessions[0], cut, cache, _features, energy, floatWeights, runClock, keep: true);

                // A unit's perturbation run through to the features (a probe already run is not run again): on the
                // whole cut, or in a chained segment (a unit without a closed-form local error) through head and tail.
                (double Distortion, double Local) Direct(int s, QuantUnit unit, float[] w, bool loc, bool low)
                {
                    if (loc && probes.TryGetValue((relayedUnits.IndexOf(unit), s, low), out var probe))
                        return (probe.D, probe.L);
                    if ((whole ?? (tail is null ? runner : null)) is { } direct)
                        return direct.Run(s, unit.Layer, w, loc);
                    TensorData? at = null;
                    var (_, change) = runner.Run(s, unit.Layer, w, loc, t => at = t);
                    return (tail!.RunRelay(s, at!), change);
                }

                var relayed = new List<RelayedUnit>();
                var pairs = probes.Values.ToList();
                var slots = new List<(UnitCurve? Curve, UnitGain? Gain)>();

                foreach (var layer in cut.Layers)
                {
                    var rows = exact ? null : _rows[layer];
                    var local = rows is not null && rows.Fallback is null && rows.RowCount > 0;
                    var weight = floatWeights[layer];
                    var layout = layer.Layout(_storage.Format, _storage.BlockSize);
                    var statistics = Statistics(layer.Name);
                    var gptq = _storage.Compensation.HasFlag(Compensation.Gptq);
                    var quantized = new Dictionary<int, float[]>();
                    // The same quantizer as the rewrite, so the curves price the weights that are written.
                    // Each width is read from the memo once (it may wait on disk): its values and the output errors
                    // second-order rounding reported with them.
                    var outputErrors = new Dictionary<int, double[]?>();
                    float[] Quantized(int b)
                    {
                        if (quantized.TryGetValue(b, out var q))
                            return q;
                        quantizeClock.Start();
                        var stored = Memo.Quantize(layer.Name, weight, layout, Enumerable.Repeat(b, layout.Channels).ToArray(), () => statistics, gptq);
                        q = quantized[b] = stored.Dequantize();
                        outputErrors[b] = stored.OutputErrors;
                        quantizeClock.Stop();
                        return q;
                    }
                    if (local)
                    {
                        quantizeClock.Start();
                        Memo.Prepare(layer.Name, weight, layout, bits, () => statistics, gptq, _threads);
                        quantizeClock.Stop();
                        foreach (var b in bits)
                            Quantized(b);
                    }
                    localClock.Start();
                    var centered = statistics is not null && _storage.Compensation.HasFlag(Compensation.Bias);
                    // Second-order rounding reports each channel's dW S dW^T on the way; rounding to nearest needs a pass
                    // over the rows.
                    // A tied layer's rounding reports the error over every tied input; its own curve needs its own.
                    var tied = _tieOf.ContainsKey(layer);
                    var reported = local && gptq && statistics is not null && !tied
                        ? bits.Select(b => { Quantized(b); return outputErrors[b]; }).ToList()
                        : null;
                    var channelErrors = !local ? null
                        : reported is not null && reported.All(e => e is not null) ? rows!.ChannelErrors(weight, Quantized, bits, reported!, statistics!, centered)
                        : rows!.ChannelErrors(weight, Quantized, bits, centered, _threads);
                    localClock.Stop();
                    if (!exact && !local)
                        notes.Add($"layer '{layer.Name}': no closed-form local error ({rows!.Fallback ?? "no input rows"}); its curve is measured at every width on the gain samples");
                    var channelOf = layer.OutputChannelOfElements();

                    foreach (var unit in _units.Where(u => u.Layer == layer))
                    {
                        float[] Perturbed(int b) => UnitWeight(unit, weight, Quantized(b), channelOf);

                        double[] values;
                        double? unitGain = null;
                        UnitGain? record = null;
                        if (exact)
                        {
                            values = new double[bits.Length];
                            for (var k = 0; k < bits.Length; k++)
                            {
                                var w = Perturbed(bits[k]);
                                var distortions = new double[_samples];
                                runClock.Start();
                                try
                                {
                                    Parallel.For(0, runners.Length, new ParallelOptions { MaxDegreeOfParallelism = runners.Length }, worker =>
                                    {
                                        for (var s = worker; s < _samples; s += runners.Length)
                                            distortions[s] = runners[worker].Run(s, layer, w, false).Distortion;
                                    });
                                }
                                catch (AggregateException e) when (e.InnerExceptions.Count > 0)
                                {
                                    // What a run says (a feature whose size depends on the data, ONNX Runtime's own
                                    // error) reaches the user as it would from one session.
                                    System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(e.InnerExceptions[0]).Throw();
                                }
                                runClock.Stop();
                                // Summed in sample order, whichever worker ran a sample.
                                double sum = 0;
                                foreach (var d in distortions)
                                    sum += d;
                                values[k] = StableRounding.Round(sum / _samples);
                            }
                        }
                        else if (chainSegment && local)
                        {
                            // Relayed: the gain up to the relay value now, its gain to the features once the segment's
                            // units are all measured.
                            var index = relayedUnits.IndexOf(unit);
                            var reference = Perturbed(referenceBits);
                            var p = new List<double>();
                            var l = new List<double>();
                            double toRelay = 0, relative = double.NaN;
                            while (p.Count < cacheSamples)
                            {
                                var s = p.Count;
                                if (!probes.TryGetValue((index, s, false), out var probe))
                                {
                                    var (ps, ls) = runner.Run(s, layer, reference, true);
                                    probe = new RelayPair(index, s, false, StableRounding.Round(ps), StableRounding.Round(ls), double.NaN);
                                }
                                p.Add(probe.P);
                                l.Add(probe.L);
                                if (p.Count < Math.Min(_settings.MinSamples, cacheSamples))
                                    continue;
                                (toRelay, relative) = RatioEstimate(p, l);
                                if (relative <= _settings.RelativeError)
                                    break;
                            }
                            var unitLocal = channelErrors!.Select(e => e.Skip(unit.ChannelStart).Take(unit.ChannelCount).Sum()).ToArray();
                            (double P, double L, int LowSamples)? low = null;
                            if (lowWidth && toRelay > 0)
                            {
                                var m = Math.Min(_settings.LowWidthSamples, p.Count);
                                var lowWeight = Perturbed(bits[0]);
                                double pl = 0, ll = 0;
                                for (var s = 0; s < m; s++)
                                {
                                    if (!probes.TryGetValue((index, s, true), out var probe))
                                    {
                                        var (ps, ls) = runner.Run(s, layer, lowWeight, true);
                                        probe = new RelayPair(index, s, true, StableRounding.Round(ps), StableRounding.Round(ls), double.NaN);
                                    }
                                    pl += probe.P;
                                    ll += probe.L;
                                }
                                low = (pl, ll, m);
                            }
                            relayed.Add(new RelayedUnit(unit, index, slots.Count, p, l, toRelay, relative, unitLocal, low));
                            slots.Add((null, null));
                            continue;
                        }
                        else
                        {
                            // The gain at the reference width, with samples added until its error bar is tight.
                            var reference = Perturbed(referenceBits);
                            var d = new List<double>();
                            var l = new List<double>();
                            double gain = 0, relative = double.NaN;
                            while (d.Count < cacheSamples)
                            {
                                var (ds, ls) = Direct(d.Count, unit, reference, true, false);
                                d.Add(StableRounding.Round(ds));
                                l.Add(StableRounding.Round(ls));
                                if (d.Count < Math.Min(_settings.MinSamples, cacheSamples))
                                    continue;
                                (gain, relative) = RatioEstimate(d, l);
                                if (relative <= _settings.RelativeError)
                                    break;
                            }
                            unitGain = StableRounding.Round(gain);
                            if (local)
                            {
                                var unitLocal = channelErrors!.Select(e => e.Skip(unit.ChannelStart).Take(unit.ChannelCount).Sum()).ToArray();
                                var refIndex = Array.IndexOf(bits, referenceBits);
                                // Large perturbations propagate more than linearly: the gain at the lowest width, relative to
                                // the reference gain on the same first samples, bends the curve below the reference width.
                                var factor = 1.0;
                                if (_settings.LowWidthSamples > 0 && bits[0] < referenceBits && gain > 0)
                                {
                                    var lowWeight = Perturbed(bits[0]);
                                    var m = Math.Min(_settings.LowWidthSamples, d.Count);
                                    double dl = 0, ll = 0;
                                    for (var s = 0; s < m; s++)
                                    {
                                        var (ds, ls) = Direct(s, unit, lowWeight, true, true);
                                        dl += StableRounding.Round(ds);
                                        ll += StableRounding.Round(ls);
                                    }
                                    var (gRef, _) = RatioEstimate(d.Take(m).ToList(), l.Take(m).ToList());
                                    if (ll > 0 && dl > 0 && gRef > 0)
                                        factor = StableRounding.Round(dl / ll / gRef);
                                }
                                values = new double[bits.Length];
                                for (var k = 0; k < bits.Length; k++)
                                    values[k] = StableRounding.Round(gain * GainFactor(unitLocal, k, refIndex, factor) * unitLocal[k]);
                                record = new UnitGain(unit.Name, referenceBits, StableRounding.Round(gain), d.Count, Round3(relative),
                                    StableRounding.Round(l.Average()), StableRounding.Round(unitLocal[refIndex]), "full", factor);
                            }
                            else
                            {
                                values = new double[bits.Length];
                                for (var k = 0; k < bits.Length; k++)
                                {
                                    if (bits[k] == referenceBits)
                                    {
                                        values[k] = StableRounding.Round(d.Average());
                                        continue;
                                    }
                                    var wk = Perturbed(bits[k]);
                                    double sum = 0;
                                    for (var s = 0; s < d.Count; s++)
                                        sum += StableRounding.Round(Direct(s, unit, wk, false, false).Distortion);
                                    values[k] = StableRounding.Round(sum / d.Count);
                                }
                                record = new UnitGain(unit.Name, referenceBits, StableRounding.Round(gain), d.Count, Round3(relative),
                                    StableRounding.Round(l.Average()), double.NaN, "measured");
                            }
                        }
                        slots.Add((new UnitCurve(unit.Name, unit.Size, bits, values) { Gain = unitGain }, record));
                    }
                }

                if (tail is not null && relayedUnits.Count > 0 && !chainSegment)
                {
                    var measured = probes.Values.Where(x => !x.Low).ToList();
                    var (g, relative) = RatioEstimate(measured.Select(x => x.D).ToList(), measured.Select(x => x.P).ToList());
                    relayOutcomes.Add(new RelayOutcome(plan!.Value, StableRounding.Round(g), Round3(relative), measured.Count, false, []));
                }
                if (relayed.Count > 0)
                {
                    var outcome = ResolveRelay(plan!, relayed, pairs, bits, referenceBits, runner, tail!, floatWeights, cacheSamples, quantizeClock);
                    relayOutcomes.Add(outcome);
                    foreach (var (r, curve, gain) in outcome.Units)
                        slots[r.Slot] = (curve, gain);
                }
                foreach (var (curve, gain) in slots)
                {
                    curves.Add(curve!);
                    if (gain is not null)
                        gains.Add(gain);
                    stage.Advance();
                }
                runs += runners.Sum(r => r.Runs) + (tail?.Runs ?? 0) + (whole?.Runs ?? 0);
            }
        }
        var spilled = cache.SpilledBytes;
        var inMemory = cache.MemoryBytes;
        // The cut activations serve only these runs, and S with its factor is cheaper to recompute from the rows than
        // to hold through the rewrites, which take their widths from the memo.
        cache.Dispose();
        _statistics = null;
        var modelNodes = _model.Graph.Nodes.Count;
        var timing = new CurveTiming(fillClock.Elapsed.TotalSeconds, sessionClock.Elapsed.TotalSeconds, quantizeClock.Elapsed.TotalSeconds,
            localClock.Elapsed.TotalSeconds, runClock.Elapsed.TotalSeconds, missing.Count);
        notes.Insert(0, $"curves on graph cuts: {segments.Count} session(s) of up to {_settings.SegmentLayers} layers, each layer's cut holding " +
                        $"{100 * cutNodes / Math.Max(1, _layers.Count) / Math.Max(1, modelNodes):0}% of the model's nodes on average; " +
                        $"{cacheSamples} sample(s) of cut activations cached ({inMemory >> 20} MiB in memory, {spilled >> 20} MiB spilled)");
        if (!exact && gains.Count > 0)
            notes.Insert(1, $"gain curves: D_u(b) = g_u(b) * L_u(b); gains measured at {referenceBits} bits on {gains.Min(g => g.Samples)}..{gains.Max(g => g.Samples)} samples " +
                            $"(mean {gains.Average(g => g.Samples).ToString("0.0", CultureInfo.InvariantCulture)}), local errors from {_settings.LocalRows} input rows per layer");
        if (relayOutcomes.Count > 0)
        {
            var chained = relayOutcomes.Where(o => o.Chained).ToList();
            var text = $"gain relays: {relayOutcomes.Count} of {segments.Count} segments reach the features only through one value; ";
            text += chained.Count > 0
                ? $"in {chained.Count} the {chained.Sum(o => o.Units.Count)} units' gains are their gain up to that value times its gain to the " +
                  $"features, measured on {chained.Min(o => o.Pairs)}..{chained.Max(o => o.Pairs)} of their perturbations (standard error " +
                  $"{chained.Max(o => o.Relative).ToString("0.###", CultureInfo.InvariantCulture)} at most)"
                : "in none did the units' gains beyond it agree";
            var direct = relayOutcomes.Count - chained.Count;
            if (direct > 0)
                text += $"; in {direct} the units' gains beyond the value differed more than {_settings.RelaySpread.ToString("0.##", CultureInfo.InvariantCulture)}-fold, " +
                        "and every unit's perturbation was run through to the features";
            notes.Add(text);
        }
        return new CurveSet(curves, _options.Mode, false, runs) { Gains = gains, Notes = notes, Timing = timing };
    }

    /// <summary>Whether the curves have a closed-form local error for the layer (gain mode).</summary>
    private bool HasLocalError(QuantLayer layer) => _rows.TryGetValue(layer, out var rows) && rows.Fallback is null && rows.RowCount > 0;

    /// <summary>The layer's weight with the unit's output channels taken from <paramref name="quantized"/>.</summary>
    private static float[] UnitWeight(QuantUnit unit, float[] weight, float[] quantized, int[] channelOf)
    {
        if (unit.IsWholeLayer)
            return quantized;
        var w = (float[])weight.Clone();
        for (var i = 0; i < w.Length; i++)
            if (channelOf[i] >= unit.ChannelStart && channelOf[i] < unit.ChannelStart + unit.ChannelCount)
                w[i] = quantized[i];
        return w;
    }

    /// <summary>A relayed unit as its head runs left it: ||dP||^2 (<see cref="P"/>) and ||dz||^2 (<see cref="L"/>) per
    /// sample at the reference width, their ratio's estimate, and the same sums at the lowest width on the first
    /// <see cref="LowSamples"/> samples. <see cref="Index"/> is its place among the segment's relayed units.</summary>
    private sealed record RelayedUnit(QuantUnit Unit, int Index, int Slot, IReadOnlyList<double> P, IReadOnlyList<double> L, double ToRelay,
        double Relative, double[] UnitLocal, (double P, double L, int LowSamples)? Low);

    /// <summary>One perturbation of a relayed unit (<see cref="Unit"/>, its index) on <see cref="Sample"/>, at the lowest
    /// width or the reference one: ||dP||^2, ||dz||^2 and, when it was run on through the tail, the feature distortion
    /// (NaN otherwise).</summary>
    private sealed record RelayPair(int Unit, int Sample, bool Low, double P, double L, double D);

    /// <summary>How a chained segment ended: the relay value's gain and its error bar over the perturbations run through
    /// its tail, whether the units' gains stayed chained through it or (the perturbations added for the error bar
    /// disagreeing) were measured through to the features one by one, and each unit's curve and gain record.</summary>
    private sealed record RelayOutcome(string Value, double Gain, double Relative, int Pairs, bool Chained,
        IReadOnlyList<(RelayedUnit Unit, UnitCurve Curve, UnitGain Gain)> Units);

    /// <summary>Whether the perturbations' gains beyond the relay value agree within <see cref="GainSettings.RelaySpread"/>;
    /// with <paramref name="required"/> false, fewer than two informative ones agree by default.</summary>
    private bool Agree(IReadOnlyList<RelayPair> pairs, bool required = true)
    {
        var informative = pairs.Where(x => x.P > 0).ToList();
        if (informative.Count < 2)
            return !required;
        if (informative.Any(x => !(x.D > 0)))
            return false;
        var ratios = informative.Select(x => x.D / x.P).ToList();
        return ratios.Max() <= _settings.RelaySpread * ratios.Min();
    }

    /// <summary>A relayed unit's perturbation at <paramref name="bits"/> run through the head and on through the tail.</summary>
    private RelayPair Through(CutRunner head, CutRunner tail, QuantUnit unit, int index, int sample, int bits, bool low,
        IReadOnlyDictionary<QuantLayer, float[]> floatWeights, System.Diagnostics.Stopwatch quantizeClock)
    {
        var layer = unit.Layer;
        var weight = floatWeights[layer];
        var layout = layer.Layout(_storage.Format, _storage.BlockSize);
        var gptq = _storage.Compensation.HasFlag(Compensation.Gptq);
        quantizeClock.Start();
        // Every width at once, as the segment's own loop would quantize them (that loop then finds them in the memo).
        Memo.Prepare(layer.Name, weight, layout, _options.CandidateBits, () => Statistics(layer.Name), gptq, _threads);
        var q = Memo.Quantize(layer.Name, weight, layout, Enumerable.Repeat(bits, layout.Channels).ToArray(), () => Statistics(layer.Name), gptq).Dequantize();
        quantizeClock.Stop();
        TensorData? at = null;
        var (p, l) = head.Run(sample, layer, UnitWeight(unit, weight, q, layer.OutputChannelOfElements()), true, t => at = t);
        return new RelayPair(index, sample, low, StableRounding.Round(p), StableRounding.Round(l), StableRounding.Round(tail.RunRelay(sample, at!)));
    }

    /// <summary>
    /// Ends a chained segment. The relay value's gain G = sum d / sum ||dP||^2 over the perturbations run through the
    /// tail (the spread probes, more until its standard error is below <see cref="GainSettings.RelativeError"/> or
    /// <see cref="GainSettings.RelayMaxPairs"/> are run); every unit's gain is G times its gain up to the value, and its
    /// bend below the reference width its own bend up to the value times the value's (G at the lowest width over G).
    /// When the perturbations added for the error bar disagree beyond <see cref="GainSettings.RelaySpread"/>, every unit's
    /// perturbations run on through the tail instead (the gains a direct measurement gives).
    /// </summary>
    private RelayOutcome ResolveRelay(RelayPlan plan, IReadOnlyList<RelayedUnit> relayed, List<RelayPair> pairs, int[] bits, int referenceBits,
        CutRunner head, CutRunner tail, IReadOnlyDictionary<QuantLayer, float[]> floatWeights, int cacheSamples, System.Diagnostics.Stopwatch quantizeClock)
    {
        RelayPair Run(int index, int sample, bool low) =>
            Through(head, tail, relayed[index].Unit, index, sample, low ? bits[0] : referenceBits, low, floatWeights, quantizeClock);
        List<RelayPair> Measured(bool low) => pairs.Where(x => x.Low == low && !double.IsNaN(x.D)).ToList();
        (double Gain, double Relative) Estimate(bool low)
        {
            var chosen = Measured(low);
            return RatioEstimate(chosen.Select(x => x.D).ToList(), chosen.Select(x => x.P).ToList());
        }

        var spread = SpreadOrder(relayed.Count);
        var candidates = Enumerable.Range(0, cacheSamples)
            .SelectMany(s => spread.Where(i => relayed[i].P.Count > s).Select(i => (Index: i, Sample: s)))
            .Where(c => !pairs.Any(x => !x.Low && x.Unit == c.Index && x.Sample == c.Sample)).ToList();
        var (g, relative) = Estimate(false);
        var chained = true;
        for (var next = 0; !(relative <= _settings.RelativeError) && Measured(false).Count < _settings.RelayMaxPairs && next < candidates.Count; next++)
        {
            pairs.Add(Run(candidates[next].Index, candidates[next].Sample, false));
            (g, relative) = Estimate(false);
            if (!Agree(Measured(false)))
            {
                chained = false;
                break;
            }
        }
        var referencePairs = Measured(false).Count;
        var (gLow, _) = Estimate(true);
        var lowMeasured = Measured(true).Any(x => x.P > 0);
        var refIndex = Array.IndexOf(bits, referenceBits);
        var units = new List<(RelayedUnit, UnitCurve, UnitGain)>();
        foreach (var r in relayed)
        {
            double gain, unitRelative, factor = 1;
            var i = r.Index;
            if (chained)
            {
                gain = g * r.ToRelay;
                unitRelative = double.IsFinite(r.Relative) ? Math.Sqrt(r.Relative * r.Relative + relative * relative) : r.Relative;
                if (r.Low is { } low && lowMeasured && g > 0 && gLow > 0 && low.L > 0 && low.P > 0)
                {
                    var (toRelayFirst, _) = RatioEstimate(r.P.Take(low.LowSamples).ToList(), r.L.Take(low.LowSamples).ToList());
                    if (toRelayFirst > 0)
                        factor = StableRounding.Round(low.P / low.L / toRelayFirst * gLow / g);
                }
            }
            else
            {
                var d = Enumerable.Range(0, r.P.Count)
                    .Select(s => (pairs.FirstOrDefault(x => !x.Low && x.Unit == i && x.Sample == s && !double.IsNaN(x.D)) ?? Run(i, s, false)).D).ToList();
                (gain, unitRelative) = RatioEstimate(d, r.L);
                if (r.Low is { } low && gain > 0)
                {
                    double dl = 0;
                    for (var s = 0; s < low.LowSamples; s++)
                        dl += (pairs.FirstOrDefault(x => x.Low && x.Unit == i && x.Sample == s && !double.IsNaN(x.D)) ?? Run(i, s, true)).D;
                    var (gRef, _) = RatioEstimate(d.Take(low.LowSamples).ToList(), r.L.Take(low.LowSamples).ToList());
                    if (low.L > 0 && dl > 0 && gRef > 0)
                        factor = StableRounding.Round(dl / low.L / gRef);
                }
            }
            gain = StableRounding.Round(gain);
            var values = new double[bits.Length];
            for (var k = 0; k < bits.Length; k++)
                values[k] = StableRounding.Round(gain * GainFactor(r.UnitLocal, k, refIndex, factor) * r.UnitLocal[k]);
            var unit = r.Unit;
            units.Add((r, new UnitCurve(unit.Name, unit.Size, bits, values) { Gain = gain },
                new UnitGain(unit.Name, referenceBits, gain, r.P.Count, Round3(unitRelative), StableRounding.Round(r.L.Average()),
                    StableRounding.Round(r.UnitLocal[refIndex]), "full", factor) { Relay = chained ? plan.Value : null }));
        }
        return new RelayOutcome(plan.Value, StableRounding.Round(g), Round3(relative), referencePairs, chained, units);
    }

    /// <summary>
    /// g(b) / g(ref): 1 at and above the reference width; below it, log g moves linearly in log L from the reference
    /// gain to <paramref name="lowFactor"/> times it at the lowest width.
    /// </summary>
    internal static double GainFactor(double[] local, int k, int refIndex, double lowFactor)
    {
        if (k >= refIndex || lowFactor == 1 || local[0] <= 0 || local[refIndex] <= 0 || local[k] <= 0)
            return 1;
        var span = Math.Log(local[0] / local[refIndex]);
        if (span <= 0)
            return 1;
        var t = Math.Clamp(Math.Log(local[k] / local[refIndex]) / span, 0, 1);
        return Math.Exp(t * Math.Log(lowFactor));
    }

    /// <summary>What the curve cache key adds for curves measured here (the engine, and the gain settings). The engine's
    /// version moves when a layer's curve changes how it is obtained (cut/3: 1-D and 3-D convolutions and
    /// non-overlapping deconvolutions from the closed form instead of measurements at every width), so a cache filled
    /// before gives no curve a fresh compile would not measure.</summary>
    public static IEnumerable<string> KeyParts(GainSettings? settings = null) =>
        new[] { "engine=cut/3" }.Concat((settings ?? GainSettings.Default).KeyParts());

    /// <summary>g = sum d / sum l and the relative standard error of that ratio estimator (NaN with one sample).</summary>
    internal static (double Gain, double Relative) RatioEstimate(IReadOnlyList<double> d, IReadOnlyList<double> l)
    {
        var n = d.Count;
        double sd = d.Sum(), sl = l.Sum();
        if (sl <= 0)
            return (0, sd <= 0 ? 0 : double.PositiveInfinity);
        var g = sd / sl;
        if (n < 2)
            return (g, double.NaN);
        if (g == 0)
            return (0, 0);
        double residual = 0;
        for (var i = 0; i < n; i++)
            residual += (d[i] - g * l[i]) * (d[i] - g * l[i]);
        var se = Math.Sqrt(residual / (n * (n - 1.0))) / (sl / n);
        return (g, se / g);
    }

    private static double Round3(double v) => double.IsFinite(v) ? Math.Round(v, 3) : v;

    /// <summary>Runs the model once per missing sample with every cached tensor as an output.</summary>
    private void FillCache(ActivationCache cache, CalibrationSet data, IReadOnlyList<int> samples, SessionOptions sessionOptions)
    {
        var inputs = _model.Graph.Inputs.Where(v => !v.IsInitializer).Select(v => v.Name).ToHashSet(StringComparer.Ordinal);
        var wantedSet = _cached.ToHashSet(StringComparer.Ordinal);
        var outputs = _cached.Where(n => !inputs.Contains(n)).ToList();
        var instrumented = _model.Clone();
        var graph = instrumented.Graph;
        foreach (var name in outputs)
        {
            var value = graph.FindValue(name)!;
            if (!value.IsGraphOutput)
            {
                ElementTypeInference.EnsureTyped(value);
                graph.AddOutput(value);
            }
        }
        // ONNX Runtime keeps every graph output's value through its optimizations, as in calibration.
        using var session = InferenceSession.Create(ModelIO.ToBytes(instrumented), sessionOptions);
        foreach (var s in samples)
        {
            var batch = data.Batch(s, 1).Select(b => new NamedTensor(b.Name, TensorData.FromBytes(b.DataType, b.Data, b.Shape))).ToList();
            foreach (var input in batch)
                if (wantedSet.Contains(input.Name))
                    Capture(input.Name, s, input.Data);
            foreach (var output in session.Run(batch, outputs))
                Capture(output.Name, s, output.Data);
        }
    }

    /// <summary>
    /// The sessions of one cut: one with <paramref name="options"/> for gain curves (<paramref name="exactWorkers"/> 0);
    /// for exact curves one-thread sessions side by side, one per thread. The cut models of a model small enough for
    /// exact curves are too small for ONNX Runtime to spread one run over the cores, and a one-thread kernel gives every
    /// run the same value whatever --threads is. Each session holds its own copy of the cut's weights and activations,
    /// so at most <see cref="ExactSessionBytes"/> of cut models are open at once; where that leaves fewer sessions than
    /// threads, each session gets the threads left over. The serialized model is not kept beyond this call.
    /// </summary>
    private static SessionGroup OpenSessions(Model cutModel, int exactWorkers, SessionOptions options)
    {
        if (exactWorkers == 0)
            return new SessionGroup([InferenceSession.Create(() => ModelIO.ToBytes(cutModel), options)]);
        var bytes = ModelIO.ToBytes(cutModel);
        var workers = (int)Math.Clamp(ExactSessionBytes / Math.Max(1, bytes.LongLength), 1, exactWorkers);
        var perSession = options with { IntraOpThreads = workers == exactWorkers ? 1 : Math.Max(1, exactWorkers / workers) };
        return new SessionGroup(Enumerable.Range(0, workers).Select(_ => InferenceSession.Create(bytes, perSession)));
    }

    /// <summary>One-thread sessions exact curves run side by side on one cut, at most: beyond a few, the cores share
    /// memory bandwidth, and each session holds the cut's weights.</summary>
    internal const int MaxExactSessions = 8;

    /// <summary>Serialized bytes of cut models exact curves hold open at once.</summary>
    internal const long ExactSessionBytes = 1L << 30;

    /// <summary>Sessions of one cut model, closed together.</summary>
    private sealed class SessionGroup(IEnumerable<InferenceSession> sessions) : IDisposable
    {
        private readonly List<InferenceSession> _sessions = Open(sessions);

        private static List<InferenceSession> Open(IEnumerable<InferenceSession> sessions)
        {
            var opened = new List<InferenceSession>();
            try
            {
                foreach (var session in sessions)
                    opened.Add(session);
                return opened;
            }
            catch
            {
                foreach (var session in opened)
                    session.Dispose();
                throw;
            }
        }

        public InferenceSession this[int index] => _sessions[index];

        public IEnumerable<TResult> Select<TResult>(Func<InferenceSession, TResult> selector) => _sessions.Select(selector);

        public void Dispose()
        {
            foreach (var session in _sessions)
                session.Dispose();
        }
    }

    /// <summary>One run of a segment's cut session on one cached sample, one layer's weight replaced.</summary>
    /// <param name="keep">Whether the segment's values are kept once read (gain mode: a few samples; exact mode reads every
    /// sample and keeps none).</param>
    private sealed class CutRunner(InferenceSession session, GraphCut cut, ActivationCache cache, IReadOnlyList<string> features,
        double[] energy, IReadOnlyDictionary<QuantLayer, float[]> floatWeights, System.Diagnostics.Stopwatch clock, bool keep)
    {
        private readonly Dictionary<QuantLayer, TensorData> _float = floatWeights.ToDictionary(p => p.Key, p => TensorData.FromFloats(p.Value, p.Key.WeightShape));
        // The segment's cached values, read once per sample: the cache may have spilled them to disk, and every unit of
        // the segment runs on the same few samples.
        private readonly Dictionary<(string, int), TensorData> _values = [];
        private readonly Dictionary<(string, int), float[]> _floats = [];

        private TensorData Value(string name, int sample)
        {
            if (!keep)
                return cache.Get(name, sample);
            if (!_values.TryGetValue((name, sample), out var value))
                _values[(name, sample)] = value = cache.Get(name, sample);
            return value;
        }

        private float[] Floats(string name, int sample)
        {
            if (!keep)
                return cache.Get(name, sample).ToFloats();
            if (!_floats.TryGetValue((name, sample), out var value))
                _floats[(name, sample)] = value = cache.Get(name, sample).ToFloats();
            return value;
        }

        private int _runs;

        /// <summary>The float value of <paramref name="output"/> on <paramref name="sample"/>: every layer's float weight.</summary>
        public TensorData FloatRun(int sample, string output)
        {
            clock.Start();
            Interlocked.Increment(ref _runs);
            try
            {
                var inputs = cut.CutValues.Select(n => new NamedTensor(n, Value(n, sample))).ToList();
                inputs.AddRange(cut.Layers.Select(l => new NamedTensor(l.WeightName, _float[l])));
                return session.Run(inputs, [output])[0].Data;
            }
            finally
            {
                clock.Stop();
            }
        }

        /// <summary>Holds <paramref name="value"/> as the float reference of the output <paramref name="name"/> on
        /// <paramref name="sample"/> (a value the cache does not have).</summary>
        public void Hold(string name, int sample, TensorData value) => _floats[(name, sample)] = value.ToFloats();

        /// <summary>Runs made so far (the runners of exact curves run side by side).</summary>
        public int Runs => Volatile.Read(ref _runs);

        /// <summary>Feature distortion d_s and, with <paramref name="local"/>, ||z - z_float||^2 at the layer's output;
        /// <paramref name="first"/> is handed the first feature's perturbed value (a relay value, for the tail).</summary>
        public (double Distortion, double Local) Run(int sample, QuantLayer layer, float[] weight, bool local, Action<TensorData>? first = null)
        {
            clock.Start();
            Interlocked.Increment(ref _runs);
            try
            {
                return RunOnce(sample, layer, weight, local, first);
            }
            finally
            {
                clock.Stop();
            }
        }

        /// <summary>Feature distortion d_s of a relay cut fed <paramref name="relay"/> for its relay value.</summary>
        public double RunRelay(int sample, TensorData relay)
        {
            clock.Start();
            Interlocked.Increment(ref _runs);
            try
            {
                var inputs = cut.CutValues.Select(n => new NamedTensor(n, n == cut.Relay ? relay : Value(n, sample))).ToList();
                var outputs = session.Run(inputs, cut.Features);
                return Distortion(outputs, cut.Features, sample, $"value '{cut.Relay}'");
            }
            finally
            {
                clock.Stop();
            }
        }

        private double Distortion(IReadOnlyList<NamedTensor> outputs, IReadOnlyList<string> names, int sample, string what)
        {
            double distortion = 0;
            for (var i = 0; i < names.Count; i++)
            {
                var name = names[i];
                var reference = Floats(name, sample);
                var perturbed = outputs[i].Data.ToFloats();
                // A data-dependent size (detections after NMS) cannot be compared element by element: a user error in
                // the choice of features, not a bug.
                if (perturbed.Length != reference.Length)
                    throw new CompileException($"feature '{name}' has {reference.Length} values in float and {perturbed.Length} once {what} is " +
                                               "quantized: its size depends on the data (detections after NMS?); name fixed-size tensors with --feature " +
                                               "(backbone or pyramid outputs, or the head's raw scores)");
                distortion += FeatureMetric.SquaredDistance(perturbed, reference) / energy[IndexOf(features, name)];
            }
            return distortion;
        }

        private (double Distortion, double Local) RunOnce(int sample, QuantLayer layer, float[] weight, bool local, Action<TensorData>? first)
        {
            var inputs = cut.CutValues.Select(n => new NamedTensor(n, Value(n, sample))).ToList();
            foreach (var l in cut.Layers)
                inputs.Add(new NamedTensor(l.WeightName, l == layer ? TensorData.FromFloats(weight, l.WeightShape) : _float[l]));
            var names = cut.FeaturesOf[layer].ToList();
            if (local)
                names.Add(cut.OutputOf[layer]);
            var outputs = session.Run(inputs, names);
            var distortion = Distortion(outputs, cut.FeaturesOf[layer], sample, $"layer '{layer.Name}'");
            if (first is not null && cut.FeaturesOf[layer].Count > 0)
                first(outputs[0].Data);
            double change = 0;
            if (local)
            {
                var full = outputs[^1].Data.ToFloats();
                var reference = Floats(cut.OutputOf[layer], sample);
                var perturbed = reference.Length == full.Length ? full : Strided(full);
                change = FeatureMetric.SquaredDistance(perturbed, reference) * (full.Length / (double)reference.Length);
            }
            return (distortion, change);
        }

        private static int IndexOf(IReadOnlyList<string> list, string name)
        {
            for (var i = 0; i < list.Count; i++)
                if (list[i] == name)
                    return i;
            return -1;
        }
    }
}
