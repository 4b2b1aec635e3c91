using OnnxQuant.Frontend;
using OnnxQuant.Runtime;

namespace OnnxQuant.Evaluation;

/// <summary>The output conventions the evaluator can decode.</summary>
public enum DecoderKind
{
    /// <summary>DETR: class logits [B, Q, C+1] (last class = no object) and boxes [B, Q, 4] as normalised (cx, cy, w, h).</summary>
    Detr,

    /// <summary>Mask R-CNN as torchvision exports it, one image per run: boxes [N, 4] in pixels (x1, y1, x2, y2),
    /// labels [N] (category ids), scores [N], and optionally masks [N, 1, H, W] of probabilities.</summary>
    MaskRcnn,
}

/// <summary>
/// Turns one run's outputs into COCO detections for the images of that run. Implementations check the actual
/// output shapes and say which output does not fit and why.
/// </summary>
public interface IDetectionDecoder
{
    DecoderKind Kind { get; }

    /// <summary>The outputs to fetch, in the order <see cref="Decode"/> expects them.</summary>
    IReadOnlyList<string> OutputNames { get; }

    /// <summary>True when the model takes one image per run (batch size 1 whatever the input shape allows).</summary>
    bool OneImagePerRun { get; }

    /// <summary>True when the detections carry masks (so mask AP can be computed).</summary>
    bool ProducesMasks { get; }

    /// <param name="outputs">The outputs named by <see cref="OutputNames"/>, in that order.</param>
    /// <param name="images">The images of this run, in batch order.</param>
    /// <param name="inputHeight">Height of the model input the boxes refer to (pixels).</param>
    /// <param name="inputWidth">Width of the model input.</param>
    IReadOnlyList<Detection> Decode(IReadOnlyList<TensorData> outputs, IReadOnlyList<CocoImage> images, int inputHeight, int inputWidth);
}

/// <summary>
/// DETR's post-processing: softmax over classes, the best real class (excluding the last, "no object") and its
/// probability as the score, every query kept (COCO evaluation then keeps the best 100 per image); boxes from
/// normalised (cx, cy, w, h) to pixel (x, y, w, h) of the annotated image size.
/// Class index i is the i-th category in id order when the model has exactly as many classes as the annotation file
/// has categories; otherwise class index i is category id i (the original COCO DETR's 91-slot convention).
/// </summary>
public sealed class DetrDecoder(string logitsName, string boxesName, IReadOnlyList<long> sortedCategoryIds) : IDetectionDecoder
{
    public DecoderKind Kind => DecoderKind.Detr;
    public IReadOnlyList<string> OutputNames => [logitsName, boxesName];
    public bool OneImagePerRun => false;
    public bool ProducesMasks => false;

    public IReadOnlyList<Detection> Decode(IReadOnlyList<TensorData> outputs, IReadOnlyList<CocoImage> images, int inputHeight, int inputWidth)
    {
        var logits = outputs[0];
        var boxes = outputs[1];
        var ls = logits.Shape;
        var bs = boxes.Shape;
        if (ls.Length != 3 || ls[2] < 2)
            throw new EvaluationException($"DETR output '{logitsName}' has shape [{string.Join(", ", ls)}]; expected [batch, queries, classes + 1]");
        if (bs.Length != 3 || bs[2] != 4 || bs[0] != ls[0] || bs[1] != ls[1])
            throw new EvaluationException(
                $"DETR output '{boxesName}' has shape [{string.Join(", ", bs)}]; expected [{ls[0]}, {ls[1]}, 4] to match '{logitsName}'");
        if (ls[0] < images.Count)
            throw new EvaluationException($"DETR outputs hold {ls[0]} images but the batch had {images.Count}");
        int queries = (int)ls[1], classes = (int)ls[2] - 1;
        var byPosition = classes == sortedCategoryIds.Count;
        var l = logits.ToFloats();
        var b = boxes.ToFloats();
        var result = new List<Detection>(images.Count * queries);
        var probs = new double[classes + 1];
        for (var i = 0; i < images.Count; i++)
        {
            var image = images[i];
            for (var q = 0; q < queries; q++)
            {
                var offset = ((long)i * queries + q) * (classes + 1);
                var max = double.NegativeInfinity;
                for (var c = 0; c <= classes; c++)
                    max = Math.Max(max, l[offset + c]);
                double sum = 0;
                for (var c = 0; c <= classes; c++)
                    sum += probs[c] = Math.Exp(l[offset + c] - max);
                var best = 0;
                for (var c = 1; c < classes; c++)
                    if (probs[c] > probs[best])
                        best = c;
                var score = probs[best] / sum;
                if (double.IsNaN(score))
                    throw new EvaluationException($"DETR output '{logitsName}' holds NaN or infinite logits (image {image.Id}, query {q})");
                var bo = ((long)i * queries + q) * 4;
                double cx = b[bo], cy = b[bo + 1], w = b[bo + 2], h = b[bo + 3];
                var box = new BoxXywh((cx - w / 2) * image.Width, (cy - h / 2) * image.Height, w * image.Width, h * image.Height);
                result.Add(new Detection(image.Id, byPosition ? sortedCategoryIds[best] : best, score, box));
            }
        }
        return result;
    }
}

/// <summary>
/// Mask R-CNN's outputs for one image: boxes in input pixels (x1, y1, x2, y2) scaled to the annotated image size,
/// labels taken as category ids, scores as they are, and masks (probabilities pasted into the input frame)
/// thresholded above 0.5 and run-length encoded.
/// </summary>
public sealed class MaskRcnnDecoder(string boxesName, string labelsName, string scoresName, string? masksName) : IDetectionDecoder
{
    public DecoderKind Kind => DecoderKind.MaskRcnn;
    public IReadOnlyList<string> OutputNames => masksName is null ? [boxesName, labelsName, scoresName] : [boxesName, labelsName, scoresName, masksName];
    public bool OneImagePerRun => true;
    public bool ProducesMasks => masksName is not null;

    public IReadOnlyList<Detection> Decode(IReadOnlyList<TensorData> outputs, IReadOnlyList<CocoImage> images, int inputHeight, int inputWidth)
    {
        if (images.Count != 1)
            throw new ArgumentException("Mask R-CNN outputs describe one image per run", nameof(images));
        var image = images[0];
        var bs = outputs[0].Shape;
        if (bs.Length != 2 || bs[1] != 4)
            throw new EvaluationException($"Mask R-CNN output '{boxesName}' has shape [{string.Join(", ", bs)}]; expected [N, 4] (x1, y1, x2, y2)");
        var n = (int)bs[0];
        if (outputs[1].Shape is not [var nl] || nl != n)
            throw new EvaluationException($"Mask R-CNN output '{labelsName}' has shape [{string.Join(", ", outputs[1].Shape)}]; expected [{n}]");
        if (outputs[2].Shape is not [var ns] || ns != n)
            throw new EvaluationException($"Mask R-CNN output '{scoresName}' has shape [{string.Join(", ", outputs[2].Shape)}]; expected [{n}]");
        var boxes = outputs[0].ToFloats();
        var labels = ToLongs(outputs[1]);
        var scores = outputs[2].ToFloats();
        float[]? masks = null;
        int mh = 0, mw = 0;
        if (masksName is not null)
        {
            var ms = outputs[3].Shape;
            if (ms.Length != 4 || ms[0] != n || ms[1] != 1)
                throw new EvaluationException(
                    $"Mask R-CNN output '{masksName}' has shape [{string.Join(", ", ms)}]; expected [{n}, 1, height, width]");
            (mh, mw) = ((int)ms[2], (int)ms[3]);
            masks = outputs[3].ToFloats();
        }
        double sx = (double)image.Width / inputWidth, sy = (double)image.Height / inputHeight;
        var result = new List<Detection>(n);
        var bitmap = new byte[image.Height * image.Width];
        for (var i = 0; i < n; i++)
        {
            if (!float.IsFinite(scores[i]) || !float.IsFinite(boxes[4 * i]) || !float.IsFinite(boxes[4 * i + 1])
                || !float.IsFinite(boxes[4 * i + 2]) || !float.IsFinite(boxes[4 * i + 3]))
                throw new EvaluationException($"Mask R-CNN outputs hold NaN or infinite values (image {image.Id}, detection {i})");
            double x1 = boxes[4 * i] * sx, y1 = boxes[4 * i + 1] * sy, x2 = boxes[4 * i + 2] * sx, y2 = boxes[4 * i + 3] * sy;
            Rle? mask = null;
            if (masks is not null)
            {
                // Nearest-neighbour from the mask frame to the annotated image (the identity when sizes agree).
                var plane = (long)i * mh * mw;
                for (var y = 0; y < image.Height; y++)
                {
                    var my = Math.Min(mh - 1, (int)((y + 0.5) * mh / image.Height));
                    for (var x = 0; x < image.Width; x++)
                    {
                        var mx = Math.Min(mw - 1, (int)((x + 0.5) * mw / image.Width));
                        bitmap[y * image.Width + x] = masks[plane + (long)my * mw + mx] > 0.5f ? (byte)1 : (byte)0;
                    }
                }
                mask = Rle.FromRowMajor(bitmap, image.Height, image.Width);
            }
            result.Add(new Detection(image.Id, labels[i], scores[i], BoxXywh.FromCorners(x1, y1, x2, y2), mask));
        }
        return result;
    }

    private long[] ToLongs(TensorData t) => t.DataType switch
    {
        DataType.Int64 => t.GetArray<long>(),
        DataType.Int32 => Array.ConvertAll(t.GetArray<int>(), x => (long)x),
        _ => Array.ConvertAll(t.ToFloats(), x => (long)x),
    };
}

/// <summary>The model cannot be evaluated as asked: its outputs do not fit a decoder, or the data does not fit the model.</summary>
public sealed class EvaluationException(string message) : Exception(message);
