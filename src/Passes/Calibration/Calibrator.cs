using System.Numerics.Tensors;
using OnnxQuant.Frontend;
using OnnxQuant.Passes.Pipeline;
using OnnxQuant.Passes.Quantization;
using OnnxQuant.Runtime;

namespace OnnxQuant.Passes.Calibration;

/// <summary>The calibrated range of one activation tensor.</summary>
public sealed record ActivationRange(string Tensor, float Min, float Max);

/// <summary>Per-channel mean of x^2 of one activation tensor (for the fast curve proxy).</summary>
public sealed record ChannelMoments(string Tensor, int ChannelAxis, double[] SecondMoments);

/// <summary>Calibration result: a range per tensor, tagged with the method and sample count that produced it.</summary>
public sealed record CalibrationTable(CalibrationMethod Method, int Samples, IReadOnlyList<ActivationRange> Ranges,
    IReadOnlyList<ChannelMoments> Moments)
{
    /// <summary>The shape of one sample's value of the tensors whose rows calibration gathered (layer inputs), from
    /// a run of one sample; a tensor not listed has no observed shape.</summary>
    public IReadOnlyDictionary<string, long[]> SampleShapes { get; init; } = new Dictionary<string, long[]>(StringComparer.Ordinal);

    public ActivationRange? Find(string tensor) => Ranges.FirstOrDefault(r => r.Tensor == tensor);
    public ChannelMoments? FindMoments(string tensor) => Moments.FirstOrDefault(m => m.Tensor == tensor);
}

/// <summary>
/// Float runs a later stage wants on inputs other than the calibration samples (the verification's float features):
/// calibration's session already holds the float model, so they cost no session of their own.
/// </summary>
/// <param name="Outputs">The tensors each run returns, in order.</param>
/// <param name="Use">Receives the run function; called at most once, and the function is valid only during the call.</param>
public sealed record FloatRunRequest(IReadOnlyList<string> Outputs, Action<Func<IReadOnlyList<NamedTensor>, IReadOnlyList<NamedTensor>>> Use);

/// <summary>A tensor to calibrate and, when moments are wanted, the axis of its channels (-1 = last).</summary>
public sealed record CalibrationTarget(string Tensor, int? MomentsAxis);

/// <summary>
/// Calibration in fixed steps: instrument the model (the tensors become graph outputs), stream the samples through
/// ONNX Runtime (graph optimizations on: ONNX Runtime keeps every graph output's value, so the instrumented
/// tensors survive fusion), feed each batch's values to one
/// observer per tensor, then compute the table. Memory is one observer (bounded histogram) per tensor plus one batch.
/// </summary>
public static class Calibrator
{
    /// <param name="floatRuns">Called once every sample is observed, before the sessions close, with a function that runs
    /// the float model on other inputs through calibration's own session and returns <see cref="FloatRunRequest.Outputs"/>;
    /// not called when one of them is not an output of that session (the caller then needs a session of its own).</param>
    public static CalibrationTable Run(Model model, CalibrationSet data, int samples, IReadOnlyList<CalibrationTarget> targets,
        CalibrationMethod method, int bits, SessionOptions sessionOptions, int runBatch, IStageProgress? progress = null, ICalibrationTap? tap = null,
        FloatRunRequest? floatRuns = null)
    {
        var instrumented = model.Clone();
        var graph = instrumented.Graph;
        var inputNames = graph.Inputs.Select(v => v.Name).ToHashSet(StringComparer.Ordinal);
        var outputs = new List<string>();
        foreach (var target in targets)
        {
            if (inputNames.Contains(target.Tensor))
                continue; // read straight from the data
            var value = graph.FindValue(target.Tensor) ?? throw new InvalidOperationException($"tensor '{target.Tensor}' not in the model");
            if (!value.IsGraphOutput)
            {
                ElementTypeInference.EnsureTyped(value);
                graph.AddOutput(value);
            }
            outputs.Add(target.Tensor);
        }
        foreach (var extra in tap?.ExtraTensors ?? [])
        {
            if (outputs.Contains(extra) || inputNames.Contains(extra))
                continue;
            var value = graph.FindValue(extra) ?? throw new InvalidOperationException($"tensor '{extra}' not in the model");
            if (!value.IsGraphOutput)
            {
                ElementTypeInference.EnsureTyped(value);
                graph.AddOutput(value);
            }
            outputs.Add(extra);
        }
        // Sampling and gathering in the graph use int64 Max/Min and Slice steps (opset 12); older models hand over
        // the tensors whole, as they are.
        var inGraph = (instrumented.OpsetImports.Default ?? 0) >= 12;
        var leading = tap is { LeadingSamples: > 0 } ? Math.Min(tap.LeadingSamples, samples) : 0;
        var capturedSet = (tap?.CapturedTensors ?? []).ToHashSet(StringComparer.Ordinal);
        var observers = targets.ToDictionary(t => t.Tensor, _ => Observers.Create(method, bits), StringComparer.Ordinal);
        var moments = targets.Where(t => t.MomentsAxis is not null)
            .ToDictionary(t => t.Tensor, t => new MomentAccumulator(t.MomentsAxis!.Value), StringComparer.Ordinal);
        var reductions = method == CalibrationMethod.MinMax ? AddReductions(graph, targets.Where(t => t.MomentsAxis is null
            && !inputNames.Contains(t.Tensor) && !(tap?.ExtraTensors.Contains(t.Tensor) ?? false)).Select(t => t.Tensor)) : [];
        // Targets the tap reads only some elements of, on observed samples, once a run has shown their shape.
        var selections = (inGraph ? tap?.SelectableTensors ?? [] : []).Where(reductions.ContainsKey).Distinct().Order(StringComparer.Ordinal)
            .Select(t => AddSelection(graph, graph.FindValue(t)!)).ToList();
        // Graph outputs cost every run, fetched or not: ONNX Runtime cannot reuse their buffers, and a captured tensor
        // (a layer output, a cut value) keeps its producer from being fused (Conv + Relu, residual adds). So the runs
        // that read the reductions use graphs without the reduced targets as outputs, and only the leading runs' graph
        // has the captures; the graph with every target whole serves the runs that need them (no reductions, a
        // selection that failed, a NaN to find).
        var originalOutputs = model.Graph.Outputs.Select(v => v.Name).ToHashSet(StringComparer.Ordinal);
        var reducedOnly = reductions.Keys.Where(t => !originalOutputs.Contains(t)).ToHashSet(StringComparer.Ordinal);
        var lean = reductions.Count > 0 ? WithoutOutputs(instrumented, reducedOnly) : null;
        // Captured tensors are outputs only of the leading runs' graph: ONNX Runtime runs every node of a graph whatever a run
        // fetches, so what the other runs need not compute must not be in their graphs.
        var captured = new List<string>();
        var sampleOf = new Dictionary<string, string>(StringComparer.Ordinal);
        if (leading > 0)
            foreach (var name in tap!.CapturedTensors)
            {
                if (inputNames.Contains(name) || outputs.Contains(name) || captured.Contains(name))
                    continue;
                var value = graph.FindValue(name) ?? throw new InvalidOperationException($"tensor '{name}' not in the model");
                if (!value.IsGraphOutput && inGraph && tap.CaptureElements(name) is { } elements)
                {
                    // Only a sample of it is wanted: the graph selects it, so the whole tensor is never copied out.
                    var sample = AddStridedSample(graph, value, elements);
                    sampleOf[sample] = name;
                    captured.Add(sample);
                    continue;
                }
                if (!value.IsGraphOutput)
                {
                    ElementTypeInference.EnsureTyped(value);
                    graph.AddOutput(value);
                }
                captured.Add(name);
            }
        var shapes = new Dictionary<string, long[]>(StringComparer.Ordinal);
        var leadingModel = lean is not null && leading > 0 ? WithoutOutputs(instrumented, reducedOnly.Where(t => !capturedSet.Contains(t)).ToHashSet(StringComparer.Ordinal)) : null;
        using var sessions = outputs.Count + captured.Count > 0 ? new Sessions(instrumented, leadingModel, lean, sessionOptions) : null;
        var floatOutputs = outputs.ToHashSet(StringComparer.Ordinal);
        // A run returns every target whole only where the tap reads the values and cannot select them; elsewhere a
        // min/max target comes back as its graph-reduced min, max and sum. The leading runs add the captured tensors.
        var reducedRun = outputs.Where(o => !reductions.ContainsKey(o))
            .Concat(reductions.Values.SelectMany(r => new[] { r.Min, r.Max, r.Sum })).ToList();
        var capturedReduced = outputs.Where(o => capturedSet.Contains(o) && reductions.ContainsKey(o)).ToList();
        var observed = tap?.ObservedSamples ?? new HashSet<int>();
        var alone = Enumerable.Range(0, samples).Where(s => s < leading || observed.Contains(s)).ToHashSet();
        if (sessions is not null && reductions.Count > 0 && selections.Count > 0 && observed.Count > 0)
        {
            // The selections need each tensor's shape: one run asks only for the shapes (the whole tensors of every
            // target, a gigabyte on a 512x512 detector, are never copied out).
            var (_, _, batch) = data.Runs(observed.Min(), 1, 1).First();
            var inputs = batch.Select(b => b.ToNamedTensor())
                .Concat(selections.Select(x => new NamedTensor(x.Indices, TensorData.FromInt64s([0L], [1])))).ToList();
            foreach (var (x, output) in selections.Zip(sessions.For(leading > 0, whole: false).Run(inputs, selections.Select(x => x.Shape).ToList())))
                shapes[x.Tensor] = output.Data.GetArray<long>();
        }
        // A snapshot: later runs replace entries of `shapes` (never the arrays) when a tensor's shape changes.
        var sampleShapes = new Dictionary<string, long[]>(shapes, StringComparer.Ordinal);
        foreach (var (start, count, batch) in Plan(data, samples, alone, runBatch))
        {
            var isLeading = start < leading;
            foreach (var input in batch)
            {
                var isObserved = observers.TryGetValue(input.Name, out var o);
                var capture = isLeading && capturedSet.Contains(input.Name);
                if (!isObserved && !capture)
                    continue;
                var t = TensorData.FromBytes(input.DataType, input.Data, input.Shape);
                if (capture)
                    tap!.Capture(input.Name, start, t);
                if (!isObserved)
                    continue;
                var values = t.ToFloats();
                o!.Observe(values);
                if (moments.TryGetValue(input.Name, out var m))
                    m.Add(values, input.Shape);
                tap?.Observe(input.Name, start, count, values, input.Shape);
            }
            if (sessions is not null)
            {
                // A run of an observed sample hands over the selected elements when the tap wants a selection of every
                // selected tensor (shapes known from the shape run); otherwise it returns the targets whole.
                var positions = observed.Contains(start) && count == 1 && selections.Count > 0
                    && selections.All(x => shapes.ContainsKey(x.Tensor))
                    ? selections.Select(x => tap!.Selection(x.Tensor, start, shapes[x.Tensor])).ToList() : null;
                var select = positions is not null && positions.All(p => p is not null);
                var whole = reductions.Count == 0 || (observed.Contains(start) && !select);
                var wanted = (whole ? outputs : select ? reducedRun.Concat(selections.SelectMany(x => new[] { x.Selected, x.Shape })) : reducedRun)
                    .Concat(isLeading ? captured.Concat(whole ? [] : capturedReduced) : []).ToList();
                if (wanted.Count == 0)
                    continue;
                var inputs = batch.Select(b => b.ToNamedTensor()).ToList();
                for (var i = 0; i < selections.Count; i++)
                {
                    // Every run feeds the index inputs; a run that does not ask for the selections gathers nothing.
                    var index = select ? positions![i]!.Select(p => Math.Max(0, p)).ToArray() : [0L];
                    inputs.Add(new NamedTensor(selections[i].Indices, TensorData.FromInt64s(index, [index.Length])));
                }
                var result = sessions.For(isLeading, whole).Run(inputs, wanted);
                if (select)
                    for (var i = 0; i < selections.Count; i++)
                    {
                        var x = selections[i];
                        var shape = result.First(o => o.Name == x.Shape).Data.GetArray<long>();
                        if (shape.SequenceEqual(shapes[x.Tensor]))
                        {
                            tap!.ObserveSelection(x.Tensor, start, shape, result.First(o => o.Name == x.Selected).Data.AsFloats());
                            continue;
                        }
                        // Another shape than the run that set the positions (a data-dependent shape): this tensor of
                        // this sample is read whole after all.
                        var again = sessions.For(isLeading, whole: true).Run(inputs, [x.Tensor])[0].Data;
                        shapes[x.Tensor] = again.Shape;
                        tap!.Observe(x.Tensor, start, count, again.AsFloats(), again.Shape);
                    }
                var scalars = new Dictionary<string, float>(StringComparer.Ordinal);
                foreach (var output in result)
                {
                    if (isLeading && sampleOf.TryGetValue(output.Name, out var sampled))
                    {
                        tap!.Capture(sampled, start, output.Data);
                        continue;
                    }
                    if (isLeading && capturedSet.Contains(output.Name))
                    {
                        tap!.Capture(output.Name, start, output.Data);
                        if (!whole && reductions.ContainsKey(output.Name))
                            continue; // observed through its reductions, as on the other runs
                    }
                    if (select && selections.Any(x => x.Selected == output.Name || x.Shape == output.Name))
                        continue;
                    if (!floatOutputs.Contains(output.Name))
                    {
                        if (!whole)
                            scalars[output.Name] = output.Data.AsFloats()[0];
                        continue;
                    }
                    // Read only here (observers, rows, energy), so no copy of each output.
                    var values = output.Data.AsFloats();
                    if (whole && count == 1 && selections.Any(x => x.Tensor == output.Name))
                        shapes[output.Name] = output.Data.Shape;
                    // Min propagates NaN, so one vectorized pass finds it.
                    if (values.Length > 0 && float.IsNaN(TensorPrimitives.Min(values)))
                        throw NaN(output.Name, start);
                    if (observers.TryGetValue(output.Name, out var observer))
                        observer.Observe(values);
                    if (moments.TryGetValue(output.Name, out var m))
                        m.Add(values, output.Data.Shape);
                    tap?.Observe(output.Name, start, count, values, output.Data.Shape);
                }
                if (!whole)
                    foreach (var (tensor, r) in reductions)
                    {
                        // The graph's min and max need not propagate NaN, a sum does; a NaN sum (or an overflowing
                        // one) is checked on the whole tensor as on the other runs.
                        if (float.IsNaN(scalars[r.Sum]) && sessions.For(isLeading, whole: true).Run(inputs, [tensor]).Any(x => float.IsNaN(TensorPrimitives.Min(x.Data.AsFloats()))))
                            throw NaN(tensor, start);
                        observers[tensor].Observe([scalars[r.Min], scalars[r.Max]]);
                    }
            }
            progress?.Advance(count);
        }
        if (floatRuns is not null && sessions is not null)
        {
            // The session the other runs use: the lean graph's outputs, or the instrumented graph's when nothing is reduced.
            var available = (lean ?? instrumented).Graph.Outputs.Select(v => v.Name).ToHashSet(StringComparer.Ordinal);
            if (floatRuns.Outputs.All(available.Contains))
                floatRuns.Use(inputs =>
                {
                    // The selection index inputs are fed on every run; gathering nothing costs nothing.
                    var fed = inputs.Concat(selections.Select(x => new NamedTensor(x.Indices, TensorData.FromInt64s([0L], [1])))).ToList();
                    return sessions.For(isLeading: false, whole: false).Run(fed, floatRuns.Outputs);
                });
        }
        var ranges = targets.Select(t =>
        {
            var (min, max) = observers[t.Tensor].ComputeRange();
            return new ActivationRange(t.Tensor, StableRounding.Round(min), StableRounding.Round(max));
        }).ToList();
        var momentList = targets.Where(t => moments.ContainsKey(t.Tensor))
            .Select(t => new ChannelMoments(t.Tensor, t.MomentsAxis!.Value, moments[t.Tensor].Result())).ToList();
        return new CalibrationTable(method, samples, ranges, momentList) { SampleShapes = sampleShapes };
    }

    /// <summary>A copy of <paramref name="model"/> without the named graph outputs.</summary>
    private static Model WithoutOutputs(Model model, IReadOnlySet<string> names)
    {
        var copy = model.Clone();
        for (var i = copy.Graph.Outputs.Count - 1; i >= 0; i--)
            if (names.Contains(copy.Graph.Outputs[i].Name))
                copy.Graph.RemoveOutput(i);
        return copy;
    }

    /// <summary>
    /// The calibration's sessions, each created when first needed: the leading runs' graph (reductions, selections,
    /// captures) until the leading runs are done, then the lean graph (reductions and selections); the graph with every
    /// target whole beside them when a run needs it, and for every run when nothing is reduced.
    /// </summary>
    private sealed class Sessions(Model wholeModel, Model? leading, Model? lean, SessionOptions options) : IDisposable
    {
        private InferenceSession? _whole, _reduced;
        private bool _reducedIsLeading;

        public InferenceSession For(bool isLeading, bool whole)
        {
            if (whole || lean is null)
                return _whole ??= InferenceSession.Create(() => ModelIO.ToBytes(wholeModel), options);
            var wantLeading = isLeading && leading is not null;
            if (_reduced is null || _reducedIsLeading != wantLeading)
            {
                _reduced?.Dispose();
                _reduced = null;
                _reduced = InferenceSession.Create(() => ModelIO.ToBytes(wantLeading ? leading! : lean), options);
                _reducedIsLeading = wantLeading;
            }
            return _reduced;
        }

        public void Dispose()
        {
            _whole?.Dispose();
            _reduced?.Dispose();
        }
    }

    private static CompileException NaN(string tensor, int sample) =>
        new($"tensor '{tensor}' is NaN on calibration sample {sample}; the model produces NaN on this data");

    /// <summary>The runs in sample order: the samples in <paramref name="alone"/> one per run, the others batched.</summary>
    private static IEnumerable<(int Start, int Count, IReadOnlyList<InputBatch> Inputs)> Plan(CalibrationSet data, int samples,
        IReadOnlySet<int> alone, int runBatch)
    {
        for (var s = 0; s < samples;)
        {
            var end = s + 1;
            if (!alone.Contains(s))
                while (end < samples && !alone.Contains(end))
                    end++;
            foreach (var run in data.Runs(s, end - s, alone.Contains(s) ? 1 : runBatch))
                yield return run;
            s = end;
        }
    }

    /// <summary>
    /// Adds ReduceMin, ReduceMax and ReduceSum (over all axes, to scalars) of each tensor as graph outputs. The min
    /// and max are exact whatever the kernel's order, so the ranges are the same as from the whole tensors.
    /// </summary>
    internal static Dictionary<string, (string Min, string Max, string Sum)> AddReductions(Graph graph, IEnumerable<string> tensors)
    {
        var result = new Dictionary<string, (string Min, string Max, string Sum)>(StringComparer.Ordinal);
        foreach (var tensor in tensors)
        {
            var value = graph.FindValue(tensor)!;
            if (value.Type is not TensorType { ElementType: DataType.Float } || result.ContainsKey(tensor))
                continue;
            string Reduce(string op)
            {
                var node = new Node(op, [value], [graph.UniqueName(tensor + "_calibration_" + op)], name: graph.UniqueName(tensor + "_calibration_" + op),
                    attributes: [Frontend.Attribute.FromInt("keepdims", 0)]);
                node.Outputs[0].Type = new TensorType(DataType.Float, Shape.Of());
                graph.AddNode(node);
                graph.AddOutput(node.Outputs[0]);
                return node.Outputs[0].Name;
            }
            result[tensor] = (Reduce("ReduceMin"), Reduce("ReduceMax"), Reduce("ReduceSum"));
        }
        return result;
    }

    /// <summary>
    /// Adds a graph output holding every stride-th element of <paramref name="value"/> flattened, the stride
    /// <c>max(1, ceil(n / elements))</c> computed in the graph from the tensor's length n (so no static shape is
    /// needed), and returns its name.
    /// </summary>
    internal static string AddStridedSample(Graph graph, Value value, int elements)
    {
        var name = value.Name + "_calibration_sample";
        Value Constant(string suffix, long v) =>
            graph.AddInitializer(graph.UniqueName(name + "_" + suffix), Frontend.Tensor.FromInt64s(suffix, [1], [v]));
        Node Add(string op, IReadOnlyList<Value?> inputs, string suffix)
        {
            var node = new Node(op, inputs, [graph.UniqueName(name + "_" + suffix)], name: graph.UniqueName(name + "_" + suffix));
            graph.AddNode(node);
            return node;
        }
        var flat = Add("Reshape", [value, Constant("flat_shape", -1)], "flat");
        var size = Add("Shape", [flat.Outputs[0]], "size");
        var rounded = Add("Add", [size.Outputs[0], Constant("round_up", elements - 1)], "rounded");
        var stride = Add("Div", [rounded.Outputs[0], Constant("elements", elements)], "stride");
        var step = Add("Max", [stride.Outputs[0], Constant("one", 1)], "step");
        var slice = Add("Slice", [flat.Outputs[0], Constant("start", 0), Constant("end", long.MaxValue), Constant("axis", 0), step.Outputs[0]], "slice");
        ElementTypeInference.EnsureTyped(value);
        if (value.Type is TensorType { ElementType: var type })
            slice.Outputs[0].Type = new TensorType(type, new Shape([Dim.Unknown]));
        graph.AddOutput(slice.Outputs[0]);
        return slice.Outputs[0].Name;
    }

    /// <summary>The graph's side of a selection: an index input, the gathered elements and the tensor's shape.</summary>
    private sealed record Selection(string Tensor, string Indices, string Selected, string Shape);

    /// <summary>
    /// Adds an int64 input of flattened positions and outputs gathering those elements of <paramref name="value"/>
    /// and its shape. Positions past the end are clamped in the graph, so a tensor of an unexpected shape gives a run
    /// whose shape output tells the caller, never a failed run.
    /// </summary>
    private static Selection AddSelection(Graph graph, Value value)
    {
        var name = value.Name + "_calibration_select";
        Value Constant(string suffix, long v) =>
            graph.AddInitializer(graph.UniqueName(name + "_" + suffix), Frontend.Tensor.FromInt64s(suffix, [1], [v]));
        Node Add(string op, IReadOnlyList<Value?> inputs, string suffix, IReadOnlyList<Frontend.Attribute>? attributes = null)
        {
            var node = new Node(op, inputs, [graph.UniqueName(name + "_" + suffix)], name: graph.UniqueName(name + "_" + suffix),
                attributes: attributes ?? []);
            graph.AddNode(node);
            return node;
        }
        var indices = new Value(graph.UniqueName(name + "_indices"), new TensorType(DataType.Int64, new Shape([Dim.Unknown])));
        graph.AddInput(indices);
        var flat = Add("Reshape", [value, Constant("flat_shape", -1)], "flat");
        var length = Add("Shape", [flat.Outputs[0]], "length");
        var last = Add("Sub", [length.Outputs[0], Constant("one", 1)], "last");
        var clamped = Add("Min", [indices, last.Outputs[0]], "clamped");
        var gather = Add("Gather", [flat.Outputs[0], clamped.Outputs[0]], "gathered", [Frontend.Attribute.FromInt("axis", 0)]);
        var shape = Add("Shape", [value], "shape");
        ElementTypeInference.EnsureTyped(value);
        gather.Outputs[0].Type = new TensorType(DataType.Float, new Shape([Dim.Unknown]));
        shape.Outputs[0].Type = new TensorType(DataType.Int64, new Shape([Dim.Unknown]));
        graph.AddOutput(gather.Outputs[0]);
        graph.AddOutput(shape.Outputs[0]);
        return new Selection(value.Name, indices.Name, gather.Outputs[0].Name, shape.Outputs[0].Name);
    }

    private sealed class MomentAccumulator(int axis)
    {
        private double[]? _sum;
        private long _count;

        public void Add(float[] values, long[] shape)
        {
            var rank = shape.Length;
            var a = axis < 0 ? rank + axis : axis;
            if (a < 0 || a >= rank)
                return;
            var channels = (int)shape[a];
            var inner = shape.Skip(a + 1).Aggregate(1L, (x, y) => x * y);
            _sum ??= new double[channels];
            if (_sum.Length != channels)
                return;
            for (long i = 0; i < values.Length; i++)
            {
                var c = (int)(i / inner % channels);
                _sum[c] += (double)values[i] * values[i];
            }
            _count += values.Length / channels;
        }

        public double[] Result() => _sum is null ? [] : _sum.Select(s => s / Math.Max(1, _count)).ToArray();
    }
}
