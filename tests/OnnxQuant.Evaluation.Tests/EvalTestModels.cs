using OnnxQuant.Frontend;
using Attribute = OnnxQuant.Frontend.Attribute;

namespace OnnxQuant.Evaluation.Tests;

/// <summary>
/// Tiny ONNX models whose "detections" are read straight out of their input, so a test controls every output value
/// through the data it feeds and can compute the expected AP by hand.
/// </summary>
internal static class EvalTestModels
{
    /// <summary>
    /// DETR-shaped: input "images" [N, 2, 8, 8]; channel 0 rows 0..Q-1 hold each query's (cx, cy, w, h), channel 1
    /// rows hold its C+1 class logits. Outputs pred_logits [N, Q, C+1], pred_boxes [N, Q, 4] and an exposed feature
    /// "backbone_feature" [N, 2, 8, 8] (which the decoder must ignore).
    /// </summary>
    /// <param name="cxShift">Added to every box's cx, to make a second, worse model for side-by-side tests.</param>
    public static Model Detr(int queries, int classes, float cxShift = 0)
    {
        var g = new Graph("detr_like");
        var n = Dim.Symbolic("N");
        var images = new Value("images", new TensorType(DataType.Float, new Shape([n, 2, 8, 8])));
        g.AddInput(images);
        var boxes = SliceSqueeze(g, images, [0, 0, 0], [1, queries, 4], [1, 2, 3], [1], cxShift == 0 ? "pred_boxes" : "raw_boxes");
        if (cxShift != 0)
        {
            var shift = g.AddInitializer("box_shift", Tensor.FromFloats("box_shift", [4], [cxShift, 0, 0, 0]));
            var add = new Node("Add", [boxes, shift], ["pred_boxes"]);
            g.AddNode(add);
            boxes = add.Outputs[0];
        }
        boxes.Type = new TensorType(DataType.Float, new Shape([n, queries, 4]));
        var logits = SliceSqueeze(g, images, [1, 0, 0], [2, queries, classes + 1], [1, 2, 3], [1], "pred_logits");
        logits.Type = new TensorType(DataType.Float, new Shape([n, queries, classes + 1]));
        var feature = new Node("Identity", [images], ["backbone_feature"]);
        g.AddNode(feature);
        feature.Outputs[0].Type = new TensorType(DataType.Float, new Shape([n, 2, 8, 8]));
        g.AddOutput(feature.Outputs[0]);
        g.AddOutput(logits);
        g.AddOutput(boxes);
        return Finish(g);
    }

    /// <summary>
    /// Mask R-CNN-shaped, one image per run: input "image" [1+M, 16, 16]; channel 0 row i holds detection i's
    /// (x1, y1, x2, y2, score, label), channel 1+i its mask probabilities. Outputs boxes [M, 4], labels [M] (int64),
    /// scores [M], masks [M, 1, 16, 16].
    /// </summary>
    public static Model MaskRcnn(int detections)
    {
        var g = new Graph("maskrcnn_like");
        var image = new Value("image", new TensorType(DataType.Float, new Shape([1 + detections, 16, 16])));
        g.AddInput(image);
        var boxes = SliceSqueeze(g, image, [0, 0, 0], [1, detections, 4], [0, 1, 2], [0], "boxes");
        boxes.Type = new TensorType(DataType.Float, new Shape([detections, 4]));
        var scores = SliceSqueeze(g, image, [0, 0, 4], [1, detections, 5], [0, 1, 2], [0, 2], "scores");
        scores.Type = new TensorType(DataType.Float, new Shape([detections]));
        var labelsFloat = SliceSqueeze(g, image, [0, 0, 5], [1, detections, 6], [0, 1, 2], [0, 2], "labels_float");
        var cast = new Node("Cast", [labelsFloat], ["labels"], attributes: [Attribute.FromInt("to", (long)DataType.Int64)]);
        g.AddNode(cast);
        cast.Outputs[0].Type = new TensorType(DataType.Int64, new Shape([detections]));
        var planes = Slice(g, image, [1], [1 + detections], [0], "mask_planes");
        var axes = g.AddInitializer("masks_axes", Tensor.FromInt64s("masks_axes", [1], [1]));
        var unsqueeze = new Node("Unsqueeze", [planes, axes], ["masks"]);
        g.AddNode(unsqueeze);
        unsqueeze.Outputs[0].Type = new TensorType(DataType.Float, new Shape([detections, 1, 16, 16]));
        g.AddOutput(boxes);
        g.AddOutput(cast.Outputs[0]);
        g.AddOutput(scores);
        g.AddOutput(unsqueeze.Outputs[0]);
        return Finish(g);
    }

    private static Model Finish(Graph g)
    {
        var model = new Model(g) { ProducerName = "onnxquant-tests" };
        model.OpsetImports.Default = 17;
        return model;
    }

    private static Value Slice(Graph g, Value x, long[] starts, long[] ends, long[] axes, string name)
    {
        var s = g.AddInitializer(name + "_starts", Tensor.FromInt64s(name + "_starts", [starts.Length], starts));
        var e = g.AddInitializer(name + "_ends", Tensor.FromInt64s(name + "_ends", [ends.Length], ends));
        var a = g.AddInitializer(name + "_axes", Tensor.FromInt64s(name + "_axes", [axes.Length], axes));
        var node = new Node("Slice", [x, s, e, a], [name]);
        g.AddNode(node);
        return node.Outputs[0];
    }

    private static Value SliceSqueeze(Graph g, Value x, long[] starts, long[] ends, long[] axes, long[] squeeze, string name)
    {
        var sliced = Slice(g, x, starts, ends, axes, name + "_slice");
        var sq = g.AddInitializer(name + "_sq", Tensor.FromInt64s(name + "_sq", [squeeze.Length], squeeze));
        var node = new Node("Squeeze", [sliced, sq], [name]);
        g.AddNode(node);
        return node.Outputs[0];
    }

    /// <summary>Builds the DETR model's input for one image: per query a normalised box and the index of the class
    /// it is confident in (classes = no object).</summary>
    public static float[] DetrSample(int classes, IReadOnlyList<(float Cx, float Cy, float W, float H, int Class)> queries)
    {
        var x = new float[2 * 8 * 8];
        for (var q = 0; q < queries.Count; q++)
        {
            var (cx, cy, w, h, cls) = queries[q];
            x[q * 8 + 0] = cx;
            x[q * 8 + 1] = cy;
            x[q * 8 + 2] = w;
            x[q * 8 + 3] = h;
            for (var c = 0; c <= classes; c++)
                x[64 + q * 8 + c] = c == cls ? 8f : 0f;
        }
        return x;
    }

    /// <summary>Builds the Mask R-CNN model's input for one image.</summary>
    public static float[] MaskRcnnSample(int detections, IReadOnlyList<(float X1, float Y1, float X2, float Y2, float Score, int Label, Func<int, int, float> Mask)> dets)
    {
        var x = new float[(1 + detections) * 256];
        for (var i = 0; i < dets.Count; i++)
        {
            var d = dets[i];
            float[] row = [d.X1, d.Y1, d.X2, d.Y2, d.Score, d.Label];
            row.CopyTo(x, i * 16);
            for (var y = 0; y < 16; y++)
            for (var c = 0; c < 16; c++)
                x[(1 + i) * 256 + y * 16 + c] = d.Mask(y, c);
        }
        return x;
    }
}
