using OnnxQuant.Frontend;

namespace OnnxQuant.Runtime;

/// <summary>
/// Random tensors matching a session's declared inputs, for benchmarks and smoke runs. Floating-point inputs are
/// uniform in [0, 1) (image-like); integer inputs are uniform in [0, 4) so that index-like inputs stay in range for
/// small dimensions; bools are fair coins. <see cref="Normal"/> gives standard normal floats instead. The same seed
/// gives the same tensors.
/// </summary>
public static class RandomInputs
{
    /// <summary>
    /// Resolves every input's shape: a shape given in <paramref name="shapes"/> (by input name) wins and must agree
    /// with the declared static dimensions; otherwise the declared shape must be fully static.
    /// </summary>
    /// <exception cref="ArgumentException">A symbolic dimension without a shape, a given shape that contradicts the
    /// model, or a shape for an input the model does not have.</exception>
    public static IReadOnlyList<(TensorInfo Input, long[] Shape)> ResolveShapes(IReadOnlyList<TensorInfo> inputs, IReadOnlyDictionary<string, long[]> shapes)
    {
        foreach (var name in shapes.Keys)
            if (inputs.All(i => i.Name != name))
                throw new ArgumentException($"--shape names '{name}', which is not an input of the model; its inputs are: {string.Join(", ", inputs)}");
        var result = new List<(TensorInfo, long[])>();
        foreach (var input in inputs)
        {
            if (input.Kind != ValueKind.Tensor)
                throw new ArgumentException($"input '{input.Name}' is a {input.Kind}; only tensor inputs can be generated");
            if (shapes.TryGetValue(input.Name, out var given))
            {
                var mismatch = given.Length != input.Dims.Count
                    || given.Where((d, k) => input.Dims[k] >= 0 && input.Dims[k] != d).Any();
                if (mismatch)
                    throw new ArgumentException($"--shape {input.Name}={string.Join("x", given)} does not fit the declared {input}");
                result.Add((input, given));
            }
            else if (!input.IsStatic)
            {
                throw new ArgumentException(
                    $"input {input} has symbolic dimensions; give them with --shape {input.Name}={string.Join("x", input.Dims.Select(d => d >= 0 ? d : 1))}");
            }
            else
            {
                result.Add((input, input.Dims.ToArray()));
            }
        }
        return result;
    }

    /// <summary>One random tensor per resolved input, generated in input order from <paramref name="seed"/>.</summary>
    public static IReadOnlyList<NamedTensor> Create(IReadOnlyList<(TensorInfo Input, long[] Shape)> resolved, int seed)
    {
        var rng = new Random(seed);
        return resolved.Select(r => new NamedTensor(r.Input.Name, Create(r.Input.DataType, r.Shape, rng))).ToList();
    }

    /// <summary>One random tensor of the given type and shape.</summary>
    /// <exception cref="NotSupportedException">String and the packed/float8 types.</exception>
    public static TensorData Create(DataType type, long[] shape, Random rng)
    {
        var n = Count(shape);
        return type switch
        {
            DataType.Float => TensorData.FromFloats(Fill(n, () => rng.NextSingle()), shape),
            DataType.Double => TensorData.FromDoubles(Fill(n, rng.NextDouble), shape),
            DataType.Float16 => TensorData.FromFloat16s(Fill(n, () => (Half)rng.NextSingle()), shape),
            DataType.BFloat16 => TensorData.FromBFloat16Bits(Fill(n, () => (ushort)(BitConverter.SingleToInt32Bits(rng.NextSingle()) >> 16)), shape),
            DataType.Int8 => TensorData.FromInt8s(Fill(n, () => (sbyte)rng.Next(4)), shape),
            DataType.UInt8 => TensorData.FromUInt8s(Fill(n, () => (byte)rng.Next(4)), shape),
            DataType.Int16 => TensorData.FromInt16s(Fill(n, () => (short)rng.Next(4)), shape),
            DataType.UInt16 => TensorData.FromUInt16s(Fill(n, () => (ushort)rng.Next(4)), shape),
            DataType.Int32 => TensorData.FromInt32s(Fill(n, () => rng.Next(4)), shape),
            DataType.UInt32 => TensorData.FromUInt32s(Fill(n, () => (uint)rng.Next(4)), shape),
            DataType.Int64 => TensorData.FromInt64s(Fill(n, () => (long)rng.Next(4)), shape),
            DataType.UInt64 => TensorData.FromUInt64s(Fill(n, () => (ulong)rng.Next(4)), shape),
            DataType.Bool => TensorData.FromBools(Fill(n, () => rng.Next(2) == 1), shape),
            _ => throw new NotSupportedException($"cannot generate random {type} inputs"),
        };
    }

    /// <summary>
    /// A float tensor of standard normal values (Box-Muller: each pair of values from two uniforms drawn from
    /// <paramref name="rng"/>); closer to normalized images than uniform noise. The same generator state gives the
    /// same tensor.
    /// </summary>
    public static TensorData Normal(long[] shape, Random rng)
    {
        var n = Count(shape);
        var data = new float[n];
        for (var i = 0; i < n; i += 2)
        {
            var u1 = 1.0 - rng.NextDouble();
            var u2 = rng.NextDouble();
            var r = Math.Sqrt(-2 * Math.Log(u1));
            data[i] = (float)(r * Math.Cos(2 * Math.PI * u2));
            if (i + 1 < n)
                data[i + 1] = (float)(r * Math.Sin(2 * Math.PI * u2));
        }
        return TensorData.FromFloats(data, shape);
    }

    private static int Count(long[] shape)
    {
        long count = 1;
        foreach (var d in shape)
            count = checked(count * d);
        return checked((int)count);
    }

    private static T[] Fill<T>(int n, Func<T> next)
    {
        var values = new T[n];
        for (var i = 0; i < n; i++)
            values[i] = next();
        return values;
    }
}
