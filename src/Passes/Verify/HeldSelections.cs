using OnnxQuant.Data;
using OnnxQuant.Frontend;
using OnnxQuant.Passes.Calibration;
using OnnxQuant.Runtime;

namespace OnnxQuant.Passes.Verify;

/// <summary>
/// A choice the graph makes from the data and then acts on: the indices of a TopK, ArgMax or ArgMin that other nodes
/// read (a two-stage DETR, RT-DETR or DINO picks its decoder queries as the encoder's top-scoring positions and
/// gathers them). <paramref name="Indices"/> is the index tensor, <paramref name="Held"/> the graph input that stands
/// for it while the compile measures, <paramref name="Scores"/> the tensor the choice is made on, and
/// <paramref name="Exposed"/> whether the index tensor was made a graph output for that time (so that nothing removes
/// the node while its readers read the input).
/// </summary>
public sealed record HeldSelection(string Node, string OpType, string Indices, string Held, string Scores, bool Exposed);

/// <summary>How often the deployed model makes the float model's choice: the share of chosen indices that agree on
/// the verification samples (as sets for TopK, whose order among near-equal scores is no change in what is chosen).</summary>
public sealed record SelectionAgreement(string Node, string OpType, string Indices, string Scores, double Agreement, long Chosen);

/// <summary>
/// The deployed model's own choices on the verification samples: <paramref name="MeasuredFree"/> is its distortion as
/// it ships, compared element by element (a TopK that picks the same set in another order counts its reordered
/// rows as errors), <paramref name="MeasuredMatched"/> the measured model's with the artifact's choices fed in the float
/// model's order (each index both choose in the float model's place, the others in the remaining places): what the
/// changed choices cost, whatever their order. Either is null when a feature's size changed with the choices (element
/// by element comparison is then undefined).
/// </summary>
public sealed record SelectionReport(double? MeasuredFree, double? MeasuredMatched, IReadOnlyList<SelectionAgreement> Selections);

/// <summary>
/// Holds a model's data-dependent selections at the float model's choice while the compile measures. A choice flips
/// when a score moves past another, and then the features after it compare different queries element by element: on a
/// two-stage DETR with random scores 8-bit weights measured 0.63 of the features' variation, nearly all of it
/// reordered queries. Such a jump says nothing about how much a layer's error costs, so gains, compensation and the
/// verified distortion measure the model with each index tensor fed from the float model's run on the same sample,
/// and the scores the choice is made on become a feature of their own (when the features are the defaults), so that
/// the layers that compute them are priced by how far they move them. The artifact keeps its own selections; the
/// report gives its free-running distortion and how often its choices agree with the float model's.
/// </summary>
public static class HeldSelections
{
    private const string Suffix = "_held_for_measurement";

    /// <summary>The selections whose indices reach a feature; empty when none does.</summary>
    public static IReadOnlyList<HeldSelection> Find(Model model, IReadOnlyList<string> features)
    {
        var graph = model.Graph;
        var wanted = features.ToHashSet(StringComparer.Ordinal);
        var found = new List<HeldSelection>();
        foreach (var node in graph.Nodes)
        {
            var index = node.OpType switch { "TopK" when node.Domain is "" or "ai.onnx" => 1, "ArgMax" or "ArgMin" when node.Domain is "" or "ai.onnx" => 0, _ => -1 };
            if (index < 0 || index >= node.Outputs.Count || node.Inputs.Count == 0 || node.Inputs[0] is not { } scores)
                continue;
            var indices = node.Outputs[index];
            if (indices.IsOmitted || indices.Uses.Count == 0 || scores.ConstantValue is not null || !Reaches(graph, indices, wanted))
                continue;
            found.Add(new HeldSelection(node.Name, node.OpType, indices.Name, graph.UniqueName(indices.Name + Suffix), scores.Name, !indices.IsGraphOutput));
        }
        return found;
    }

    /// <summary>
    /// Choices on the way to a feature that cannot be held, each described: NonZero and NonMaxSuppression, whose count
    /// changes with the data, and selections inside a Loop or If (a detector's post-processing), whose indices are not
    /// tensors of the graph. Their flips still reach the features.
    /// </summary>
    public static IReadOnlyList<string> Unheld(Model model, IReadOnlyList<string> features)
    {
        var graph = model.Graph;
        var wanted = features.ToHashSet(StringComparer.Ordinal);
        var found = new List<string>();
        foreach (var node in graph.Nodes)
            if (UnheldChoice(node) is { } what && node.Outputs.Any(o => !o.IsOmitted && Reaches(graph, o, wanted)))
                found.Add(what);
        return found;
    }

    /// <summary>
    /// The fixed-size tensors the features are computed from before the choices that cannot be held (see
    /// <see cref="Unheld"/>): the float tensors computed from the input's data that nodes at or after those choices read
    /// from outside them (a Mask R-CNN's pyramid levels and region proposal outputs, which its NMS and RoIAlign read),
    /// and the features that do not follow such a choice, in graph order; empty when no feature follows one.
    /// </summary>
    public static IReadOnlyList<string> FeaturesBefore(Model model, IReadOnlyList<string> features)
    {
        var graph = model.Graph;
        var wanted = features.ToHashSet(StringComparer.Ordinal);
        var choices = graph.Nodes.Where(n => UnheldChoice(n) is not null && n.Outputs.Any(o => !o.IsOmitted && Reaches(graph, o, wanted))).ToList();
        if (choices.Count == 0)
            return [];
        // What the choices decide: everything computed from their outputs.
        var after = Downstream(graph, choices.SelectMany(n => n.Outputs).Where(o => !o.IsOmitted)).ToHashSet<Value>(ReferenceEqualityComparer.Instance);
        // Computed from the input's data, not only from its shape, and through a layer (quantization changes nothing else).
        var data = new HashSet<Value>(graph.Inputs.Where(v => !v.IsInitializer), ReferenceEqualityComparer.Instance);
        var layered = new HashSet<Value>(ReferenceEqualityComparer.Instance);
        foreach (var node in graph.Nodes)
        {
            if (node.OpType is not ("Shape" or "Size") && Reads(node).Any(data.Contains))
                foreach (var output in node.Outputs.Where(o => !o.IsOmitted))
                    data.Add(output);
            if (node.OpType is "Conv" or "ConvTranspose" or "Gemm" or "MatMul" or "Einsum" || Reads(node).Any(layered.Contains))
                foreach (var output in node.Outputs.Where(o => !o.IsOmitted))
                    layered.Add(output);
        }
        var chosen = new List<string>();
        // A float tensor read, or the float tensors a mask or index read is computed from (NonZero(scores > t)).
        void Take(Value input, int depth)
        {
            if (after.Contains(input) || !data.Contains(input) || input.Producer is null || chosen.Contains(input.Name))
                return;
            ElementTypeInference.EnsureTyped(input);
            if (input.Type?.ElementType == DataType.Float && layered.Contains(input))
                chosen.Add(input.Name);
            else if (depth > 0)
                foreach (var source in Reads(input.Producer))
                    Take(source, depth - 1);
        }
        foreach (var node in graph.Nodes.Where(n => choices.Contains(n) || n.Outputs.Any(after.Contains)))
            foreach (var input in Reads(node))
                Take(input, 3);
        foreach (var f in features)
            if (graph.FindValue(f) is { } v && !after.Contains(v) && !chosen.Contains(f))
                chosen.Add(f);
        return chosen;
    }

    /// <summary>A node's inputs and the outer values its subgraphs read.</summary>
    private static IEnumerable<Value> Reads(Node node) =>
        node.Inputs.OfType<Value>().Where(v => !v.IsOmitted).Concat(node.Subgraphs.SelectMany(g => g.OuterReferences()));

    /// <summary>What makes a node a choice that cannot be held, described; null for any other node.</summary>
    private static string? UnheldChoice(Node node) => node.OpType switch
    {
        "NonZero" or "NonMaxSuppression" when node.Domain is "" or "ai.onnx" => $"{node.OpType} '{node.Name}'",
        _ => node.Subgraphs.SelectMany(g => g.AllNodes()).FirstOrDefault(n => n.OpType is "TopK" or "NonZero" or "NonMaxSuppression" or "ArgMax" or "ArgMin")
            is { } inner ? $"{inner.OpType} inside {node.OpType} '{node.Name}'" : null,
    };

    /// <summary>Whether a feature is computed from <paramref name="start"/>.</summary>
    private static bool Reaches(Graph graph, Value start, HashSet<string> features) =>
        Downstream(graph, [start]).Any(v => features.Contains(v.Name));

    /// <summary>The values computed from <paramref name="starts"/> (themselves included), lazily, each once; through
    /// subgraphs, a subgraph's reader standing for the node that holds it.</summary>
    private static IEnumerable<Value> Downstream(Graph graph, IEnumerable<Value> starts)
    {
        var seen = new HashSet<Value>(ReferenceEqualityComparer.Instance);
        var pending = new Stack<Value>(starts);
        while (pending.Count > 0)
        {
            var value = pending.Pop();
            if (!seen.Add(value))
                continue;
            yield return value;
            foreach (var use in value.Uses)
            {
                var node = use.Node;
                while (node.Graph is { } g && g != graph && g.ParentNode is { } parent)
                    node = parent;
                foreach (var output in node.Outputs.Where(o => !o.IsOmitted))
                    pending.Push(output);
            }
        }
    }

    /// <summary>Makes each index tensor's readers read a graph input instead (in place).</summary>
    public static void Freeze(Model model, IReadOnlyList<HeldSelection> held)
    {
        var graph = model.Graph;
        foreach (var h in held)
        {
            var indices = graph.FindValue(h.Indices) ?? throw new InvalidOperationException($"selection '{h.Indices}' not in the model");
            ElementTypeInference.EnsureTyped(indices);
            var input = new Value(h.Held, indices.FullType);
            graph.AddInput(input);
            foreach (var use in indices.Uses.ToArray())
                use.Node.ReplaceInput(use.InputIndex, input);
            if (h.Exposed)
                graph.AddOutput(indices);
        }
    }

    /// <summary>A copy of <paramref name="model"/> (measured with its selections held) that makes its own selections again.</summary>
    public static Model Thawed(Model model, IReadOnlyList<HeldSelection> held)
    {
        if (held.Count == 0)
            return model;
        var clone = model.Clone();
        var graph = clone.Graph;
        foreach (var h in held)
        {
            var input = graph.Inputs.FirstOrDefault(v => v.Name == h.Held);
            var indices = graph.FindValue(h.Indices);
            if (input is null || indices is null)
                throw new InvalidOperationException($"held selection '{h.Indices}' lost by the rewrite");
            foreach (var use in input.Uses.ToArray())
                use.Node.ReplaceInput(use.InputIndex, indices);
            graph.RemoveInput(input);
            if (h.Exposed)
                for (var i = graph.Outputs.Count - 1; i >= 0; i--)
                    if (ReferenceEquals(graph.Outputs[i], indices))
                        graph.RemoveOutput(i);
        }
        return clone;
    }

    /// <summary>
    /// Runs the float model (only what the selections need) on samples [0, <paramref name="samples"/>) of
    /// <paramref name="data"/> and [0, <paramref name="verifyEnd"/>) of <paramref name="verify"/> (the same set, or
    /// the verification file's) and returns both with the float choices as one more input each (the held inputs of
    /// <see cref="Freeze"/>). The returned sets read the given ones' arrays: dispose them first.
    /// </summary>
    public static (CalibrationSet Data, CalibrationSet Verify) Record(Model model, IReadOnlyList<HeldSelection> held,
        CalibrationSet data, int samples, CalibrationSet verify, int verifyEnd, SessionOptions sessionOptions)
    {
        var pruned = model.Clone();
        var graph = pruned.Graph;
        var outputs = held.Select(h => graph.FindValue(h.Indices)!).ToList();
        foreach (var value in outputs)
            ElementTypeInference.EnsureTyped(value);
        graph.KeepOnlyOutputs(outputs);
        var names = held.Select(h => h.Indices).ToList();
        using var session = InferenceSession.Create(ModelIO.ToBytes(pruned), sessionOptions);

        IReadOnlyList<(InputSpec, NpyArray)> Choices(CalibrationSet set, int count)
        {
            var perSample = new List<IReadOnlyList<NamedTensor>>();
            for (var s = 0; s < count; s++)
                perSample.Add(session.Run(set.Batch(s, 1).Select(b => b.ToNamedTensor()).ToList(), names));
            return held.Select((h, k) =>
            {
                var first = perSample[0][k].Data;
                var bytes = new List<byte>();
                foreach (var sample in perSample)
                {
                    if (!sample[k].Data.Shape.SequenceEqual(first.Shape))
                        throw new CompileException($"the number of indices {h.OpType} '{h.Node}' chooses changes with the data ({string.Join("x", first.Shape)} " +
                                                   $"and {string.Join("x", sample[k].Data.Shape)}), so its choice cannot be held while measuring and a flipped choice " +
                                                   "would pass for a layer's error: name features it does not reach with --feature (backbone or encoder outputs)");
                    bytes.AddRange(sample[k].Data.ToBytes());
                }
                var shape = first.Shape;
                return (new InputSpec(h.Held, first.DataType, shape.Select(d => (long?)d).ToList()),
                    new NpyArray(first.DataType, [count, .. shape], bytes.ToArray()));
            }).ToList();
        }

        var shared = ReferenceEquals(verify, data);
        var extended = data.WithInputs(Choices(data, shared ? Math.Max(samples, verifyEnd) : samples));
        return (extended, shared ? extended : verify.WithInputs(Choices(verify, verifyEnd)));
    }

    /// <summary>The share of the float model's choices the deployed model makes, per selection, on the verification runs.</summary>
    internal static IReadOnlyList<SelectionAgreement> Agreement(Model model, IReadOnlyList<HeldSelection> held,
        IReadOnlyList<IReadOnlyList<NamedTensor>> runs, IReadOnlyList<IReadOnlyList<NamedTensor>> chosen)
    {
        var graph = model.Graph;
        var result = new List<SelectionAgreement>();
        for (var k = 0; k < held.Count; k++)
        {
            var h = held[k];
            var axis = TopKAxis(model, h);
            long agree = 0, total = 0;
            for (var r = 0; r < runs.Count; r++)
            {
                var reference = runs[r].First(t => t.Name == h.Held).Data;
                var deployed = chosen[r][k].Data;
                var (a, n) = Compare(reference.GetArray<long>(), deployed.GetArray<long>(), reference.Shape, axis);
                agree += a;
                total += n;
            }
            result.Add(new SelectionAgreement(h.Node, h.OpType, h.Indices, h.Scores, total == 0 ? 1 : Math.Round(agree / (double)total, 6), total));
        }
        return result;
    }

    /// <summary>
    /// Runs the deployed model (<paramref name="shipped"/>) as it ships and <paramref name="measured"/> (the same model
    /// with its selections held) fed the deployed model's choices in the float model's order; see <see cref="SelectionReport"/>.
    /// </summary>
    public static SelectionReport Measure(Model measured, Model shipped, IReadOnlyList<HeldSelection> held, Verifier verifier)
    {
        var indices = held.Select(h => h.Indices).ToList();
        var (free, chosen) = verifier.MeasureWith(shipped, indices);
        var axes = held.Select(h => TopKAxis(shipped, h)).ToList();
        var position = held.Select((h, k) => (h.Held, k)).ToDictionary(p => p.Held, p => p.k, StringComparer.Ordinal);
        var (matched, _) = verifier.MeasureWith(measured, [], (r, batch) => batch.Select(t =>
        {
            if (!position.TryGetValue(t.Name, out var k))
                return t;
            var reference = t.Data;
            var aligned = Align(reference.GetArray<long>(), chosen[r][k].Data.GetArray<long>(), reference.Shape, axes[k]);
            return new NamedTensor(t.Name, TensorData.FromInt64s(aligned, reference.Shape));
        }).ToList());
        return new SelectionReport(free is { } f ? Quantization.StableRounding.Round(f) : null, matched is { } m ? Quantization.StableRounding.Round(m) : null,
            Agreement(shipped, held, verifier.Runs, chosen));
    }

    private static long? TopKAxis(Model model, HeldSelection h) =>
        model.Graph.Nodes.FirstOrDefault(n => n.Outputs.Any(o => o.Name == h.Indices)) is { OpType: "TopK" } node ? node.GetInt("axis", -1) : null;

    /// <summary>
    /// The deployed choices in the float order: along a TopK's axis each index both chose keeps the float model's
    /// place and the deployed model's other choices fill the remaining places in its order; without an axis (ArgMax)
    /// the deployed choices as they are.
    /// </summary>
    internal static long[] Align(long[] reference, long[] deployed, long[] shape, long? topkAxis)
    {
        if (topkAxis is not { } axisAttr || reference.Length != deployed.Length || shape.Length == 0)
            return deployed;
        var (k, inner, outer) = Rows(reference.Length, shape, axisAttr);
        var aligned = new long[reference.Length];
        for (long o = 0; o < outer; o++)
            for (long i = 0; i < inner; i++)
            {
                long At(long j) => (o * k + j) * inner + i;
                var mine = new HashSet<long>();
                for (long j = 0; j < k; j++)
                    mine.Add(deployed[At(j)]);
                var kept = new HashSet<long>();
                var free = new Queue<long>();
                for (long j = 0; j < k; j++)
                    if (mine.Contains(reference[At(j)]) && kept.Add(reference[At(j)]))
                        aligned[At(j)] = reference[At(j)];
                    else
                        free.Enqueue(j);
                for (long j = 0; j < k; j++)
                    if (!kept.Contains(deployed[At(j)]) && free.Count > 0)
                        aligned[At(free.Dequeue())] = deployed[At(j)];
            }
        return aligned;
    }

    private static (long K, long Inner, long Outer) Rows(long length, long[] shape, long axisAttr)
    {
        var axis = (int)(axisAttr < 0 ? axisAttr + shape.Length : axisAttr);
        var k = shape[axis];
        var inner = shape.Skip(axis + 1).Aggregate(1L, (x, y) => x * y);
        return (k, inner, length / Math.Max(1, k * inner));
    }

    /// <summary>Agreeing choices and all choices: along a TopK's axis as sets (each row of k), else element by element.</summary>
    internal static (long Agree, long Total) Compare(long[] reference, long[] deployed, long[] shape, long? topkAxis)
    {
        if (reference.Length != deployed.Length)
            return (0, reference.Length);
        if (topkAxis is not { } axisAttr || shape.Length == 0)
            return (reference.Zip(deployed).LongCount(p => p.First == p.Second), reference.Length);
        var (k, inner, outer) = Rows(reference.Length, shape, axisAttr);
        long agree = 0;
        for (long o = 0; o < outer; o++)
            for (long i = 0; i < inner; i++)
            {
                var set = new HashSet<long>();
                for (long j = 0; j < k; j++)
                    set.Add(reference[(o * k + j) * inner + i]);
                for (long j = 0; j < k; j++)
                    if (set.Remove(deployed[(o * k + j) * inner + i]))
                        agree++;
            }
        return (agree, reference.Length);
    }
}
