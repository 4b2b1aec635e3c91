using System.Runtime.InteropServices;
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

    /// <summary>
    /// Joins float initializers that still hold one weight's data (copies this pass made that nothing quantized: a layer
    /// kept float by --exclude or a guard) back into one, so a rewritten model stores a float weight as often as its
    /// input did. Only copies that share the data itself are joined, never tensors that merely hold equal values.
    /// </summary>
    public static int Reshare(Graph graph)
    {
        var first = new Dictionary<(object Data, int Offset, int Length, string Dims), Value>();
        var joined = 0;
        foreach (var value in graph.Initializers.ToList())
        {
            if (value.Initializer is not { DataType: DataType.Float } tensor || value.IsGraphInput || value.IsGraphOutput || value.Uses.Count == 0
                || Identity(tensor) is not { } key)
                continue;
            if (first.TryGetValue(key, out var kept))
            {
                graph.ReplaceAllUsesWith(value, kept);
                graph.RemoveInitializer(value);
                joined++;
            }
            else
                first[key] = value;
        }
        return joined;
    }

    private static (object, int, int, string)? Identity(Tensor tensor)
    {
        var dims = string.Join('x', tensor.Dims);
        if (tensor is { IsLoaded: false, External: { } external })
            return (external, 0, 0, dims);
        return MemoryMarshal.TryGetArray(tensor.RawData, out var segment) && segment.Array is { } array
            ? (array, segment.Offset, segment.Count, dims)
            : null;
    }
}
