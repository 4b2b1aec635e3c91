using OnnxQuant.Data;
using OnnxQuant.Frontend;
using OnnxQuant.Runtime;

namespace OnnxQuant.Evaluation;

/// <summary>How to evaluate: the decoder (null = chosen from the outputs) and the batch size for batched models.</summary>
public sealed record EvaluationOptions
{
    public DecoderKind? Decoder { get; init; }

    /// <summary>Images per run when the model's batch axis is free; ignored for one-image-per-run models.</summary>
    public int BatchSize { get; init; } = 8;
}

/// <summary>Box metrics, mask metrics (null when the model or the annotations have no masks) and what was run, with
/// the matchings behind them (for <see cref="PairedBootstrap"/>).</summary>
public sealed record EvaluationResult(CocoMatches BboxMatches, CocoMatches? SegmMatches, DecoderKind Decoder, int ImageCount, int DetectionCount)
{
    public CocoMetrics Bbox { get; } = BboxMatches.Metrics();
    public CocoMetrics? Segm { get; } = SegmMatches?.Metrics();
}

/// <summary>
/// Runs a detection model over a dataset in ONNX Runtime batch by batch, decodes each batch's outputs into COCO
/// detections as it comes (only the detections are kept, so memory does not grow with the outputs), and scores them.
/// </summary>
public static class DetectionEvaluator
{
    /// <param name="data">The .npz arrays: one per model input (by name; a single-input model also takes "images" or
    /// the only other array), plus optional "image_ids" [N] naming each sample's image in the annotations (without it,
    /// sample i is the i-th image of the file).</param>
    /// <param name="progress">Called after each run with (images done, images total).</param>
    /// <exception cref="EvaluationException">The data, annotations and model do not fit together.</exception>
    public static EvaluationResult Evaluate(InferenceSession session, IReadOnlyList<NamedArray> data, CocoDataset groundTruth,
        EvaluationOptions? options = null, Action<int, int>? progress = null)
    {
        var plan = Plan.Make(session, data, groundTruth, options);
        var detections = new List<Detection>();
        plan.RunAll(session, (start, n, outputs) => detections.AddRange(plan.Decoder.Decode(outputs, plan.Images.GetRange(start, n), plan.InputHeight, plan.InputWidth)), progress);
        return plan.Score(detections);
    }

    /// <summary>
    /// Runs the model once over the data and keeps its raw outputs, so that they can be scored again with changes
    /// (<see cref="DetectionOutputs.Score"/>) without running the model again. For fixed-size outputs (DETR's logits
    /// and boxes): a Mask R-CNN's outputs follow the detections and are refused.
    /// </summary>
    public static DetectionOutputs Collect(InferenceSession session, IReadOnlyList<NamedArray> data, CocoDataset groundTruth,
        EvaluationOptions? options = null)
    {
        var plan = Plan.Make(session, data, groundTruth, options);
        if (plan.Decoder.OneImagePerRun)
            throw new EvaluationException($"the model's detection outputs ({string.Join(", ", plan.Decoder.OutputNames)}) change size with the detections; only fixed-size outputs (DETR's logits and boxes) can be kept and scored again");
        var batches = new List<DetectionOutputs.Batch>();
        plan.RunAll(session, (start, n, outputs) => batches.Add(new DetectionOutputs.Batch(start, n, outputs)), null);
        return new DetectionOutputs(plan, batches);
    }

    /// <summary>What one evaluation runs: the decoder, the data bound to the inputs, the images and the batching.</summary>
    internal sealed class Plan
    {
        private readonly List<Binding> _bindings;
        private readonly int _batch;
        private readonly bool _padToFixed;

        private Plan(IDetectionDecoder decoder, List<Binding> bindings, List<CocoImage> images, int height, int width, int batch,
            bool padToFixed, CocoDataset groundTruth)
        {
            Decoder = decoder;
            _bindings = bindings;
            Images = images;
            InputHeight = height;
            InputWidth = width;
            _batch = batch;
            _padToFixed = padToFixed;
            GroundTruth = groundTruth;
        }

        /// <summary>The same plan scored against other annotations of the same images.</summary>
        public Plan With(CocoDataset groundTruth) => new(Decoder, _bindings, Images, InputHeight, InputWidth, _batch, _padToFixed, groundTruth);

        public IDetectionDecoder Decoder { get; }
        public List<CocoImage> Images { get; }
        public int InputHeight { get; }
        public int InputWidth { get; }
        public CocoDataset GroundTruth { get; }

        public static Plan Make(InferenceSession session, IReadOnlyList<NamedArray> data, CocoDataset groundTruth, EvaluationOptions? options)
        {
            options ??= new EvaluationOptions();
            if (options.BatchSize < 1)
                throw new ArgumentOutOfRangeException(nameof(options), $"batch size must be at least 1, got {options.BatchSize}");
            var decoder = DecoderSelector.Select(session.Outputs, groundTruth, options.Decoder);
            var bindings = Bind(session.Inputs, data);
            var count = bindings[0].Count;
            var images = ImagesOf(data, groundTruth, count);
            var (inputHeight, inputWidth) = ImageSize(bindings);

            var unbatched = bindings.Any(b => b.Unbatched);
            var fixedBatch = bindings.Select(b => b.Input.Dims.Count > 0 && !b.Unbatched ? b.Input.Dims[0] : -1).Where(d => d > 0).Distinct().ToList();
            if (fixedBatch.Count > 1)
                throw new EvaluationException($"the model's inputs declare different batch sizes: {string.Join(", ", fixedBatch)}");
            var batch = unbatched || decoder.OneImagePerRun ? 1 : fixedBatch.Count == 1 ? (int)fixedBatch[0] : options.BatchSize;
            if (decoder.OneImagePerRun && fixedBatch is [> 1])
                throw new EvaluationException($"Mask R-CNN outputs describe one image, but the model's batch axis is fixed at {fixedBatch[0]}");
            return new Plan(decoder, bindings, images, inputHeight, inputWidth, batch, fixedBatch.Count == 1, groundTruth);
        }

        /// <summary>Runs every batch and hands its decoder outputs to <paramref name="consume"/> (start, count, outputs).</summary>
        public void RunAll(InferenceSession session, Action<int, int, IReadOnlyList<TensorData>> consume, Action<int, int>? progress)
        {
            var count = Images.Count;
            for (var start = 0; start < count; start += _batch)
            {
                var n = Math.Min(_batch, count - start);
                var feeds = _bindings.Select(b => new NamedTensor(b.Input.Name, b.Slice(start, n, _padToFixed ? _batch : n))).ToList();
                IReadOnlyList<NamedTensor> outputs;
                try
                {
                    outputs = session.Run(feeds, Decoder.OutputNames);
                }
                catch (OrtException ex)
                {
                    throw new EvaluationException($"running images {start}..{start + n - 1} failed: {ex.Message}");
                }
                consume(start, n, outputs.Select(o => o.Data).ToList());
                progress?.Invoke(start + n, count);
            }
        }

        public EvaluationResult Score(IReadOnlyList<Detection> detections)
        {
            // Only the images that were run are scored: objects on other images of the file are not misses.
            var evaluated = Images.Select(i => i.Id).ToHashSet();
            var subset = new CocoDataset(Images.OrderBy(i => i.Id).ToList(), GroundTruth.Categories,
                GroundTruth.Annotations.Where(a => evaluated.Contains(a.ImageId)).ToList());
            var bbox = CocoEvaluator.Match(subset, detections, IouType.Bbox);
            var hasMasks = Decoder.ProducesMasks && subset.Annotations.All(a => a.Segmentation is not null);
            var segm = hasMasks ? CocoEvaluator.Match(subset, detections, IouType.Segm) : null;
            return new EvaluationResult(bbox, segm, Decoder.Kind, Images.Count, detections.Count);
        }
    }

    /// <summary>A model input and the data array that feeds it.</summary>
    private sealed record Binding(TensorInfo Input, NpyArray Array, bool Unbatched)
    {
        public int Count => (int)Array.Shape[0];

        /// <summary>Samples start..start+n, padded to <paramref name="total"/> by repeating the last one.</summary>
        public TensorData Slice(int start, int n, int total)
        {
            var rows = Array.SliceFirstAxis(start, n);
            if (total > n)
            {
                var bytes = rows.RawBytes;
                var rowBytes = bytes.Length / n;
                var padded = new byte[rowBytes * total];
                bytes.CopyTo(padded, 0);
                for (var k = n; k < total; k++)
                    Buffer.BlockCopy(bytes, (n - 1) * rowBytes, padded, k * rowBytes, rowBytes);
                var shape = rows.Shape;
                shape[0] = total;
                rows = new NpyArray(rows.DataType, shape, padded);
            }
            var feedShape = Unbatched ? rows.Shape[1..] : rows.Shape;
            // Same element type: the bytes go as they are; otherwise (e.g. float64 data for a float input) convert.
            return Input.DataType == rows.DataType
                ? TensorData.FromBytes(rows.DataType, rows.RawBytes, feedShape)
                : TensorData.FromFloats(rows.ToFloats(), feedShape);
        }
    }

    private static List<Binding> Bind(IReadOnlyList<TensorInfo> inputs, IReadOnlyList<NamedArray> data)
    {
        var names = string.Join(", ", data.Select(d => $"{d.Name} {d.Array}"));
        var bindings = new List<Binding>();
        foreach (var input in inputs)
        {
            var match = data.FirstOrDefault(d => d.Name == input.Name);
            if (match is null && inputs.Count == 1)
            {
                var candidates = data.Where(d => d.Name != "image_ids").ToList();
                match = candidates.FirstOrDefault(d => d.Name == "images") ?? (candidates.Count == 1 ? candidates[0] : null);
            }
            if (match is null)
                throw new EvaluationException($"no data array for model input {input}; the data holds: {names}");
            var array = match.Array;
            bool unbatched;
            if (array.Shape.Length == input.Dims.Count)
                unbatched = false;
            else if (array.Shape.Length == input.Dims.Count + 1)
                unbatched = true; // the model takes one sample without a batch axis (e.g. torchvision's [3, H, W])
            else
                throw new EvaluationException(
                    $"data array '{match.Name}' {array} does not fit model input {input}: ranks {array.Shape.Length} and {input.Dims.Count}");
            var dims = unbatched ? input.Dims : input.Dims.Skip(1).ToList();
            var sample = array.Shape.Skip(1).ToList();
            for (var k = 0; k < sample.Count; k++)
            {
                var declared = dims[k];
                if (declared >= 0 && declared != sample[k])
                    throw new EvaluationException(
                        $"data array '{match.Name}' {array} does not fit model input {input}: dimension {k + 1} is {sample[k]}, the model wants {declared}");
            }
            if (input.DataType != array.DataType && input.DataType != DataType.Float)
                throw new EvaluationException($"data array '{match.Name}' is {array.DataType} but model input '{input.Name}' is {input.DataType}");
            bindings.Add(new Binding(input, array, unbatched));
        }
        if (bindings.Count == 0)
            throw new EvaluationException("the model has no inputs to feed");
        var counts = bindings.Select(b => b.Count).Distinct().ToList();
        if (counts.Count > 1)
            throw new EvaluationException($"the data arrays hold different numbers of samples: {string.Join(", ", bindings.Select(b => $"{b.Input.Name}={b.Count}"))}");
        if (counts[0] == 0)
            throw new EvaluationException("the data holds no samples");
        return bindings;
    }

    private static List<CocoImage> ImagesOf(IReadOnlyList<NamedArray> data, CocoDataset gt, int count)
    {
        var ids = data.FirstOrDefault(d => d.Name == "image_ids")?.Array;
        if (ids is null)
        {
            if (gt.Images.Count != count)
                throw new EvaluationException(
                    $"the data holds {count} samples and no 'image_ids' array, but the annotations list {gt.Images.Count} images; add image_ids [N] to the .npz");
            return gt.Images.ToList();
        }
        if (ids.Shape is not [var n] || n != count)
            throw new EvaluationException($"'image_ids' {ids} should be a vector of {count} ids, one per sample");
        var result = new List<CocoImage>(count);
        var seen = new HashSet<long>();
        foreach (var id in ids.ToInt64s())
        {
            if (!gt.ImagesById.TryGetValue(id, out var image))
                throw new EvaluationException($"'image_ids' names image {id}, which the annotations do not list");
            if (!seen.Add(id))
                throw new EvaluationException($"'image_ids' names image {id} twice");
            result.Add(image);
        }
        return result;
    }

    /// <summary>Height and width of the image input: the last two axes of the first input of rank 3 or more.</summary>
    private static (int Height, int Width) ImageSize(List<Binding> bindings)
    {
        var image = bindings.FirstOrDefault(b => b.Array.Shape.Length >= 4 || (b.Unbatched && b.Array.Shape.Length >= 3))
                    ?? throw new EvaluationException("no model input looks like images ([N, C, H, W])");
        var s = image.Array.Shape;
        return ((int)s[^2], (int)s[^1]);
    }
}

/// <summary>
/// A detection model's raw outputs over a dataset (<see cref="DetectionEvaluator.Collect"/>), scored on demand, with
/// or without a change to the outputs: what a perturbation of one output costs in AP, without running the model again.
/// </summary>
public sealed class DetectionOutputs
{
    private readonly DetectionEvaluator.Plan _plan;
    private readonly IReadOnlyList<Batch> _batches;

    internal DetectionOutputs(DetectionEvaluator.Plan plan, IReadOnlyList<Batch> batches)
    {
        _plan = plan;
        _batches = batches;
    }

    /// <summary>One run's outputs, in <see cref="OutputNames"/> order, for images [Start, Start + Count).</summary>
    internal sealed record Batch(int Start, int Count, IReadOnlyList<TensorData> Outputs);

    /// <summary>The outputs the decoder reads, in the order <see cref="Score"/>'s change receives them.</summary>
    public IReadOnlyList<string> OutputNames => _plan.Decoder.OutputNames;

    public DecoderKind Decoder => _plan.Decoder.Kind;

    public int ImageCount => _plan.Images.Count;

    /// <summary>Every run's values of output <paramref name="output"/> (index into <see cref="OutputNames"/>), in run order.</summary>
    public IEnumerable<float[]> Values(int output) => _batches.Select(b => b.Outputs[output].ToFloats());

    /// <summary>Every image's detections, decoded from the kept outputs as they are.</summary>
    public IReadOnlyList<Detection> Detections() => Decode(null);

    /// <summary>The same outputs, scored against other annotations of the same images (e.g. pseudo-labels).</summary>
    public DetectionOutputs Against(CocoDataset groundTruth) => new(_plan.With(groundTruth), _batches);

    /// <summary>
    /// Scores the kept outputs; <paramref name="change"/> (output index, run index, values), when given, returns the
    /// values to decode instead of an output's own (same length).
    /// </summary>
    public EvaluationResult Score(Func<int, int, float[], float[]>? change = null) => _plan.Score(Decode(change));

    private List<Detection> Decode(Func<int, int, float[], float[]>? change)
    {
        var detections = new List<Detection>();
        for (var r = 0; r < _batches.Count; r++)
        {
            var batch = _batches[r];
            var outputs = batch.Outputs;
            if (change is not null)
                outputs = outputs.Select((o, k) =>
                {
                    var values = o.ToFloats();
                    var changed = change(k, r, values);
                    // An output handed back as it came is decoded from the kept tensor, not a copy.
                    return ReferenceEquals(changed, values) ? o : TensorData.FromFloats(changed, o.Shape);
                }).ToList();
            detections.AddRange(_plan.Decoder.Decode(outputs, _plan.Images.GetRange(batch.Start, batch.Count), _plan.InputHeight, _plan.InputWidth));
        }
        return detections;
    }
}
