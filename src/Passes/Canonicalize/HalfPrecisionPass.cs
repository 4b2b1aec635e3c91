using OnnxQuant.Frontend;
using OnnxQuant.Passes.Pipeline;
using Attribute = OnnxQuant.Frontend.Attribute;

namespace OnnxQuant.Passes.Canonicalize;

/// <summary>
/// Turns a model that computes in half precision (float16 or bfloat16 weights and activations, as exported for GPUs
/// or converted after export) into one that computes in float32, keeping its interface: a half-precision graph input
/// is cast to float32 where it enters, and a half-precision graph output is cast back from the float32 value that
/// computes it, so the artifact takes and returns what the model did. Everything in between (initializers, Constant
/// and ConstantOfShape values, Cast targets, dtype attributes, value types, subgraphs) becomes float32, and the casts
/// to float32 this leaves with a float32 input are removed.
/// <para>
/// Calibration, curves, rewrite and verification then run on float32 tensors as for any model. ONNX Runtime's CPU
/// execution provider has no half-precision convolution or matrix product on x86 and runs them in float32 between
/// casts anyway; QDQ needs float32 scales on opsets before 19. The float reference the distortion is measured
/// against is the float32 computation (<see cref="Units.Features"/> measures a half-precision output on the float32
/// value it is cast from).
/// </para>
/// </summary>
public sealed class HalfPrecisionPass : IPass
{
    public string Name => "half-precision";

    /// <summary>Suffix of the float32 value behind a half-precision graph input or output.</summary>
    public const string FloatSuffix = "_float32";

    public static bool IsHalf(DataType type) => type is DataType.Float16 or DataType.BFloat16;

    /// <summary>Half-precision initializers, values and attributes the model holds outside an interface this pass has
    /// already put in front of float32 (0: nothing to do).</summary>
    public static int HalfCount(Model model)
    {
        var count = 0;
        var main = model.Graph;
        var done = main.Inputs.Where(InputDone).Concat(main.Outputs.Where(OutputDone)).ToHashSet();
        foreach (var graph in model.Graph.AllGraphs())
        {
            count += graph.Initializers.Count(v => IsHalf(v.Initializer!.DataType));
            count += Values(graph).Count(v => v.Type is { } t && IsHalf(t.ElementType) && !done.Contains(v));
            count += graph.Nodes.Sum(n => n.Attributes.Count(a => a.Kind == AttributeKind.Tensor && IsHalf(a.AsTensor().DataType)));
            count += graph.Nodes.Count(n => HalfTypeAttribute(n) is not null && !n.Outputs.Any(done.Contains));
        }
        return count;
    }

    /// <summary>Every value a graph defines or names: inputs, outputs, value_info and node outputs.</summary>
    private static IEnumerable<Value> Values(Graph graph) =>
        graph.Inputs.Concat(graph.Outputs).Concat(graph.ValueInfo).Concat(graph.Nodes.SelectMany(n => n.Outputs)).Distinct();

    private static Tensor ToFloat32(Tensor tensor, string name) => Tensor.FromFloats(name, tensor.GetDims(), tensor.ToFloatArray());

    /// <summary>A half-precision graph input that is only read through casts to float32.</summary>
    private static bool InputDone(Value input) =>
        input.Type is { } t && IsHalf(t.ElementType) && input.Uses.Count > 0
        && input.Uses.All(u => u.Node is { OpType: "Cast" } c && c.GetInt("to", 0) == (long)DataType.Float);

    /// <summary>A half-precision graph output cast from a float32 value.</summary>
    private static bool OutputDone(Value output) =>
        output.Type is { } t && IsHalf(t.ElementType) && output.Producer is { OpType: "Cast" } c && c.Inputs[0]?.Type?.ElementType == DataType.Float;

    public PassResult Run(Model model)
    {
        if (HalfCount(model) == 0)
            return PassResult.Unchanged;
        var main = model.Graph;
        var rewrites = 0;
        // The interface first, while the half-precision types still say which values it has.
        foreach (var input in main.Inputs.ToList())
        {
            if (input.IsInitializer || input.Type is not { } type || !IsHalf(type.ElementType) || input.Uses.Count == 0 || InputDone(input))
                continue;
            var uses = input.Uses.ToList();
            var cast = new Node("Cast", [input], [main.UniqueName(input.Name + FloatSuffix)], name: main.UniqueName("Cast"),
                attributes: [Attribute.FromInt("to", (long)DataType.Float)]);
            main.InsertNode(0, cast);
            cast.Outputs[0].Type = new TensorType(DataType.Float, type.Shape);
            foreach (var use in uses)
                use.Node.ReplaceInput(use.InputIndex, cast.Outputs[0]);
            rewrites++;
        }
        for (var i = 0; i < main.Outputs.Count; i++)
        {
            var output = main.Outputs[i];
            if (output.Type is not { } type || !IsHalf(type.ElementType) || output.IsGraphInput || output.IsInitializer || output.Producer is null
                || OutputDone(output))
                continue;
            var name = output.Name;
            output.Name = main.UniqueName(name + FloatSuffix);
            var cast = new Node("Cast", [output], [name], name: main.UniqueName("Cast"), attributes: [Attribute.FromInt("to", (long)type.ElementType)]);
            main.AddNode(cast);
            cast.Outputs[0].Type = type;
            main.ReplaceOutput(i, cast.Outputs[0]);
            rewrites++;
        }
        var kept = main.Inputs.Where(v => !v.IsInitializer).Concat(main.Outputs).ToHashSet();
        foreach (var graph in model.Graph.AllGraphs().ToList())
        {
            foreach (var value in graph.Initializers.ToList())
            {
                var tensor = value.Initializer!;
                if (!IsHalf(tensor.DataType))
                    continue;
                graph.SetInitializer(value, ToFloat32(tensor, value.Name));
                rewrites++;
            }
            foreach (var value in Values(graph).ToList())
            {
                // The interface keeps its types: the inputs, and the outputs the casts above now compute.
                if (value.Type is not { } type || !IsHalf(type.ElementType) || (graph == main && kept.Contains(value)))
                    continue;
                value.Type = type with { ElementType = DataType.Float };
                rewrites++;
            }
            foreach (var node in graph.Nodes.ToList())
                rewrites += Retype(node, kept);
        }
        // Casts that now cast float32 to float32 (a model converted with its interface kept in float32 has one behind
        // each input and before each output).
        foreach (var graph in model.Graph.AllGraphs().ToList())
            foreach (var node in graph.Nodes.ToList())
                if (node is { OpType: "Cast" } && GraphQueries.IsDefaultDomain(node) && node.GetInt("to", 0) == (long)DataType.Float
                    && node.Inputs[0] is { Type.ElementType: DataType.Float } source && node.Outputs[0].Type?.ElementType is null or DataType.Float
                    && GraphQueries.TryBypass(graph, node, source))
                    rewrites++;
        return PassResult.Changed(rewrites);
    }

    /// <summary>The ops whose attribute names the element type of what they make.</summary>
    private static readonly Dictionary<string, string> TypeAttributes = new(StringComparer.Ordinal)
    {
        ["Cast"] = "to", ["EyeLike"] = "dtype", ["RandomNormal"] = "dtype", ["RandomUniform"] = "dtype",
        ["RandomNormalLike"] = "dtype", ["RandomUniformLike"] = "dtype", ["Multinomial"] = "dtype", ["Bernoulli"] = "dtype",
    };

    /// <summary>The attribute that makes <paramref name="node"/> produce half precision, if any.</summary>
    private static string? HalfTypeAttribute(Node node) =>
        GraphQueries.IsDefaultDomain(node) && TypeAttributes.TryGetValue(node.OpType, out var attribute)
        && node.GetAttribute(attribute) is { Kind: AttributeKind.Int } a && IsHalf((DataType)a.AsInt()) ? attribute : null;

    private static int Retype(Node node, IReadOnlySet<Value> kept)
    {
        var rewrites = 0;
        if (HalfTypeAttribute(node) is { } attribute && !node.Outputs.Any(kept.Contains))
        {
            node.SetAttribute(Attribute.FromInt(attribute, (long)DataType.Float));
            rewrites++;
        }
        foreach (var attr in node.Attributes.ToList())
        {
            if (attr.Kind == AttributeKind.Tensor && attr.AsTensor() is { } t && IsHalf(t.DataType))
            {
                node.SetAttribute(Attribute.FromTensor(attr.Name, ToFloat32(t, t.Name)));
                rewrites++;
            }
            else if (attr.Kind == AttributeKind.Tensors && attr.AsTensors().Any(x => IsHalf(x.DataType)))
            {
                node.SetAttribute(Attribute.FromTensors(attr.Name, attr.AsTensors()
                    .Select(x => IsHalf(x.DataType) ? ToFloat32(x, x.Name) : x)));
                rewrites++;
            }
        }
        return rewrites;
    }
}
