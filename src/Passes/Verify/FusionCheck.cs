using OnnxQuant.Frontend;
using OnnxQuant.Runtime;

namespace OnnxQuant.Passes.Verify;

/// <summary>What ONNX Runtime made of a speed artifact after its graph optimizations.</summary>
/// <param name="WeightDequantizeLeft">DequantizeLinear nodes still reading a constant (a weight or bias): each one
/// dequantizes a parameter on every run and keeps its layer on a float kernel.</param>
/// <param name="Offenders">The consumers of those nodes, as "node (op type)".</param>
/// <param name="OpTypes">Node count per op type of the optimized graph.</param>
public sealed record FusionReport(int WeightDequantizeLeft, IReadOnlyList<string> Offenders, IReadOnlyDictionary<string, int> OpTypes)
{
    /// <summary>The constants those DequantizeLinear nodes read (a layer's quantized weight or bias).</summary>
    public IReadOnlyList<string> DequantizedConstants { get; init; } = [];

    /// <summary>Op types that compute on integers (ONNX Runtime's fused QDQ kernels and MatMulNBits).</summary>
    public static bool IsIntegerKernel(string opType) =>
        opType.StartsWith("QLinear", StringComparison.Ordinal) || opType is "QGemm" or "MatMulIntegerToFloat" or "MatMulNBits"
            or "ConvInteger" or "MatMulInteger" or "DynamicQuantizeMatMul" or "NhwcQLinearConv";

    public int IntegerKernels => OpTypes.Where(p => IsIntegerKernel(p.Key)).Sum(p => p.Value);
}

/// <summary>
/// Asks ONNX Runtime for the model it really runs (the session's optimized model file, all optimizations on) and
/// counts the DequantizeLinear nodes left on a weight path: a DequantizeLinear whose input is a constant. After a
/// speed rewrite there must be none; one left means a fusion rule the rewrite believed in did not fire.
/// </summary>
public static class FusionCheck
{
    public static FusionReport Run(Model model, SessionOptions options)
    {
        var folder = Path.Combine(Path.GetTempPath(), $"onnxquant-fusion-{Environment.ProcessId}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(folder);
        try
        {
            var optimizedPath = Path.Combine(folder, "optimized.onnx");
            using (InferenceSession.Create(ModelIO.ToBytes(model), options with { Optimization = GraphOptimization.All, OptimizedModelPath = optimizedPath, ProfilePrefix = null }))
            {
            }
            return Inspect(ModelIO.Load(optimizedPath));
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    /// <summary>Counts weight-path DequantizeLinear nodes and op types in an (optimized) model.</summary>
    public static FusionReport Inspect(Model optimized)
    {
        var graph = optimized.Graph;
        var offenders = new List<string>();
        var constants = new List<string>();
        var left = 0;
        foreach (var node in graph.Nodes)
        {
            if (node.OpType != "DequantizeLinear" || node.Inputs[0] is not { } x || x.ConstantValue is null)
                continue;
            left++;
            constants.Add(x.Name);
            var consumers = node.Outputs[0].Uses.Select(u => $"{u.Node.Name} ({u.Node.OpType})").DefaultIfEmpty("(graph output)");
            offenders.AddRange(consumers);
        }
        var opTypes = graph.Nodes.GroupBy(n => n.OpType, StringComparer.Ordinal).OrderBy(g => g.Key, StringComparer.Ordinal)
            .ToDictionary(g => g.Key, g => g.Count(), StringComparer.Ordinal);
        return new FusionReport(left, offenders.Distinct(StringComparer.Ordinal).ToList(), opTypes) { DequantizedConstants = constants };
    }
}
