using OnnxQuant.Frontend;
using OnnxQuant.Runtime;

namespace OnnxQuant.Evaluation;

/// <summary>
/// Picks the decoder from a model's outputs. Roles are found by element type and rank, names break ties
/// ("logits", "boxes", "labels", "scores", "masks"), so extra outputs such as exposed backbone features do not
/// confuse it. A model that fits both conventions, or neither, is an error that lists its outputs.
/// </summary>
public static class DecoderSelector
{
    public static IDetectionDecoder Select(IReadOnlyList<TensorInfo> outputs, CocoDataset groundTruth, DecoderKind? forced = null)
    {
        var categories = groundTruth.Categories.Select(c => c.Id).Order().ToArray();
        string? detrWhy = null, maskWhy = null;
        IDetectionDecoder? detr = forced is null or DecoderKind.Detr ? TryDetr(outputs, categories, out detrWhy) : null;
        IDetectionDecoder? mask = forced is null or DecoderKind.MaskRcnn ? TryMaskRcnn(outputs, out maskWhy) : null;
        var listing = string.Join(", ", outputs.Select(o => o.ToString()));
        return (forced, detr, mask) switch
        {
            (DecoderKind.Detr, not null, _) => detr,
            (DecoderKind.Detr, null, _) => throw new EvaluationException($"--decoder detr does not fit the model's outputs ({listing}): {detrWhy}"),
            (DecoderKind.MaskRcnn, _, not null) => mask,
            (DecoderKind.MaskRcnn, _, null) => throw new EvaluationException($"--decoder maskrcnn does not fit the model's outputs ({listing}): {maskWhy}"),
            (_, not null, null) => detr,
            (_, null, not null) => mask,
            (_, not null, not null) => throw new EvaluationException(
                $"the model's outputs ({listing}) fit both DETR and Mask R-CNN conventions; choose one with --decoder detr|maskrcnn"),
            _ => throw new EvaluationException(
                $"cannot tell how to decode the model's outputs ({listing}): not DETR ({detrWhy}) and not Mask R-CNN ({maskWhy})"),
        };
    }

    private static DetrDecoder? TryDetr(IReadOnlyList<TensorInfo> outputs, long[] categories, out string? why)
    {
        var rank3 = outputs.Where(o => IsFloat(o) && o.Dims.Count == 3).ToList();
        var boxes = Pick(rank3.Where(o => LastDim(o) is 4 or -1).ToList(), ["pred_boxes", "boxes"], "box");
        if (boxes is null)
        {
            why = "no float output [batch, queries, 4] for the boxes";
            return null;
        }
        var logits = Pick(rank3.Where(o => o != boxes && LastDim(o) != 4).ToList(), ["pred_logits", "logits"], "logit");
        if (logits is null)
        {
            why = "no float output [batch, queries, classes + 1] for the class logits";
            return null;
        }
        why = null;
        return new DetrDecoder(logits.Name, boxes.Name, categories);
    }

    private static MaskRcnnDecoder? TryMaskRcnn(IReadOnlyList<TensorInfo> outputs, out string? why)
    {
        var boxes = Pick(outputs.Where(o => IsFloat(o) && o.Dims.Count == 2 && LastDim(o) is 4 or -1).ToList(), ["boxes"], "box");
        var labels = Pick(outputs.Where(o => o.DataType is DataType.Int64 or DataType.Int32 && o.Dims.Count == 1).ToList(), ["labels"], "label");
        var scores = Pick(outputs.Where(o => IsFloat(o) && o.Dims.Count == 1).ToList(), ["scores"], "score");
        var masks = Pick(outputs.Where(o => IsFloat(o) && o.Dims.Count == 4 && o.Dims[1] is 1 or -1).ToList(), ["masks"], "mask");
        why = boxes is null ? "no float output [N, 4] for the boxes"
            : labels is null ? "no integer output [N] for the labels"
            : scores is null ? "no float output [N] for the scores"
            : null;
        return why is null ? new MaskRcnnDecoder(boxes!.Name, labels!.Name, scores!.Name, masks?.Name) : null;
    }

    /// <summary>
    /// The one candidate for a role: an exact conventional name first, then a name containing the keyword, then the
    /// only candidate; null when there is none or the choice is ambiguous.
    /// </summary>
    private static TensorInfo? Pick(List<TensorInfo> candidates, string[] exact, string keyword)
    {
        foreach (var name in exact)
            if (candidates.FirstOrDefault(c => c.Name == name) is { } hit)
                return hit;
        var named = candidates.Where(c => c.Name.Contains(keyword, StringComparison.OrdinalIgnoreCase)).ToList();
        if (named.Count >= 1)
            return named[0]; // exporters list the final head before auxiliary ones
        return candidates.Count == 1 ? candidates[0] : null;
    }

    private static bool IsFloat(TensorInfo o) => o.Kind == ValueKind.Tensor && o.DataType is DataType.Float or DataType.Float16 or DataType.Double;

    private static long LastDim(TensorInfo o) => o.Dims.Count == 0 ? -1 : o.Dims[^1];
}
