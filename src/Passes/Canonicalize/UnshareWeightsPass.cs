using OnnxQuant.Frontend;
using OnnxQuant.Passes.Pipeline;

namespace OnnxQuant.Passes.Canonicalize;

/// <summary>
/// Gives every Conv, Gemm and MatMul that reads a float weight also read by other nodes its own initializer holding the
/// same values (the data is shared, not copied). One-stage detector heads (RetinaNet, FCOS, the RPN of an R-CNN) apply
/// one weight at every pyramid level; each application is a node of its own with its own input. With a node per
/// weight, every later stage (calibration, curves, rewrite) sees ordinary layers; discovery ties the copies back
/// together (<see cref="Units.WeightTie"/>: identical values get one width and one quantized weight), and a
/// BatchNormalization folded into one application changes only that copy.
/// </summary>
public sealed class UnshareWeightsPass : IPass
{
    public string Name => "unshare-weights";

    public PassResult Run(Model model)
    {
        var graph = model.Graph;
        var copies = 0;
        foreach (var weight in graph.Initializers.ToList())
        {
            if (weight.Initializer is not { DataType: DataType.Float } tensor || weight.Uses.Count < 2 || weight.IsGraphInput || weight.IsGraphOutput)
                continue;
            var layerUses = weight.Uses.Where(u => u.InputIndex == 1 && u.Node.OpType is "Conv" or "Gemm" or "MatMul"
                && GraphQueries.IsDefaultDomain(u.Node) && u.Node.Inputs[0] is { ConstantValue: null }).ToList();
            if (layerUses.Count == 0)
                continue;
            // The original keeps one layer use when nothing else reads it.
            var keep = layerUses.Count == weight.Uses.Count ? 1 : 0;
            foreach (var use in layerUses.Skip(keep))
            {
                var copy = graph.AddInitializer(graph.UniqueName(weight.Name + "_shared"), tensor.Clone());
                use.Node.ReplaceInput(use.InputIndex, copy);
                copies++;
            }
        }
        return PassResult.Changed(copies);
    }
}
