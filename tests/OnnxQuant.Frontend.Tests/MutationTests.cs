using Google.Protobuf;
using OnnxQuant.Frontend.Proto;

namespace OnnxQuant.Frontend.Tests;

/// <summary>
/// Deterministic corruptions of real suite models: truncations, bit flips in wire types, impossible lengths, and
/// corrupted fields (types, dims, names, versions, external data paths). Each must end in a
/// <see cref="FrontendException"/> whose message names the problem, never another exception and never a hang.
/// </summary>
public class MutationTests
{
    /// <summary>One corrupted model: its bytes, a description, and a word the error message must contain.</summary>
    public sealed record Mutation(string Description, byte[] Bytes, string Expect, bool NeedsFile = false);

    /// <summary>Models with initializers and nodes, sampled evenly over the suite.</summary>
    private static IReadOnlyList<string> Sample()
    {
        var withWeights = TestModels.Suite.Where(p =>
        {
            var m = ModelProto.Parser.ParseFrom(File.ReadAllBytes(p));
            return m.Graph.Initializer.Count > 0 && m.Graph.Node.Count > 0 && m.Graph.Node[0].Input.Count > 0;
        }).ToList();
        var step = Math.Max(1, withWeights.Count / 24);
        return withWeights.Where((_, i) => i % step == 0).Take(24).ToList();
    }

    /// <summary>A top-level or nested length-delimited field: where its tag, length and content lie.</summary>
    private readonly record struct Field(int Number, int TagPos, int LenPos, int ContentStart, int ContentEnd);

    /// <summary>Length-delimited fields of the message occupying bytes [start, end).</summary>
    private static List<Field> Fields(byte[] bytes, int start, int end)
    {
        var slice = bytes[start..end];
        var input = new CodedInputStream(slice);
        var fields = new List<Field>();
        while (true)
        {
            var tagPos = (int)input.Position;
            var tag = input.ReadTag();
            if (tag == 0) break;
            if (WireFormat.GetTagWireType(tag) == WireFormat.WireType.LengthDelimited)
            {
                var lenPos = (int)input.Position;
                var len = input.ReadBytes().Length;
                var contentStart = (int)input.Position - len;
                fields.Add(new Field(WireFormat.GetTagFieldNumber(tag), start + tagPos, start + lenPos, start + contentStart, start + contentStart + len));
            }
            else
                input.SkipLastField();
        }
        return fields;
    }

    public static IEnumerable<Mutation> Mutations()
    {
        var random = new Random(20240611);
        foreach (var path in Sample())
        {
            var name = Path.GetFileName(Path.GetDirectoryName(path)!);
            var bytes = File.ReadAllBytes(path);
            var graph = Fields(bytes, 0, bytes.Length).Single(f => f.Number == 7);
            var inGraph = Fields(bytes, graph.ContentStart, graph.ContentEnd);

            // Truncations anywhere inside the graph: the model's length prefix promises more bytes than remain.
            for (int k = 0; k < 2; k++)
            {
                var cut = random.Next(graph.ContentStart, graph.ContentEnd);
                yield return new Mutation($"{name}: truncated at byte {cut}", bytes[..cut], "ended unexpectedly");
            }
            yield return new Mutation($"{name}: truncated to the header", bytes[..graph.TagPos], "no graph");

            // Single bit flips turning a length-delimited tag of the graph (or of one node) into wire type 6.
            for (int k = 0; k < 2; k++)
            {
                var f = inGraph[random.Next(inGraph.Count)];
                var flipped = (byte[])bytes.Clone();
                flipped[f.TagPos] ^= 0b100;
                yield return new Mutation($"{name}: bit 2 flipped at byte {f.TagPos}", flipped, "wire type");
            }
            var node = inGraph.First(f => f.Number == 1);
            var inNode = Fields(bytes, node.ContentStart, node.ContentEnd);
            if (inNode.Count > 0)
            {
                var f = inNode[random.Next(inNode.Count)];
                var flipped = (byte[])bytes.Clone();
                flipped[f.TagPos] ^= 0b101;
                yield return new Mutation($"{name}: node tag wire type corrupted at byte {f.TagPos}", flipped, "wire type");
            }

            // A length that runs past the end of the enclosing message.
            {
                var f = inGraph[random.Next(inGraph.Count)];
                byte[] huge = [0xF0, 0xFF, 0xFF, 0xFF, 0x07];
                var corrupted = bytes[..f.LenPos].Concat(huge).Concat(bytes[f.ContentStart..]).ToArray();
                yield return new Mutation($"{name}: field length at byte {f.LenPos} set to 2^31-16", corrupted, "ended unexpectedly");
            }

            // Corrupted fields, made on the parsed message so that exactly one thing is wrong.
            ModelProto Parse() => ModelProto.Parser.ParseFrom(bytes);
            byte[] With(Action<ModelProto> change)
            {
                var m = Parse();
                change(m);
                return m.ToByteArray();
            }

            yield return new Mutation($"{name}: IR version 0", With(m => m.IrVersion = 0), "IR version 0");
            yield return new Mutation($"{name}: no opset import", With(m => m.OpsetImport.Clear()), "imports no operator set");
            yield return new Mutation($"{name}: opset imported twice", With(m => m.OpsetImport.Add(m.OpsetImport[0].Clone())), "more than once");
            yield return new Mutation($"{name}: unknown data type", With(m => m.Graph.Initializer[0].DataType = 99), "unknown data type 99");
            yield return new Mutation($"{name}: dims do not match data", With(m =>
            {
                var t = m.Graph.Initializer[0];
                if (t.Dims.Count > 0) t.Dims[0] += 1; else t.Dims.Add(2);
            }), "needs");
            yield return new Mutation($"{name}: negative dim", With(m => m.Graph.Initializer[0].Dims.Add(-3)), "negative dimension");
            yield return new Mutation($"{name}: dangling input", With(m => m.Graph.Node[0].Input[0] = "no_such_value"), "no_such_value");
            yield return new Mutation($"{name}: undefined graph output", With(m => m.Graph.Output[0].Name = "no_such_output"), "no_such_output");
            yield return new Mutation($"{name}: duplicate name", With(m =>
            {
                var g = m.Graph;
                g.Node[^1].Output[0] = g.Initializer[0].Name;
            }), "defined twice");
            yield return new Mutation($"{name}: cycle", With(m =>
            {
                var n = m.Graph.Node[0];
                n.Input[0] = n.Output[0];
            }), "cycle");
            yield return new Mutation($"{name}: unknown element type in an input", With(m =>
            {
                var vi = m.Graph.Input.Concat(m.Graph.Output).First(v => v.Type?.TensorType is not null);
                vi.Type.TensorType.ElemType = 77;
            }), "unknown element type 77");
            yield return new Mutation($"{name}: no graph", With(m => m.Graph = null), "no graph");
            yield return new Mutation($"{name}: external data outside the folder", With(m =>
                MakeExternal(m.Graph.Initializer[0], "../../../etc/passwd")), "leaves the model's folder", NeedsFile: true);
            yield return new Mutation($"{name}: external data by absolute path", With(m =>
                MakeExternal(m.Graph.Initializer[0], "/etc/passwd")), "absolute path", NeedsFile: true);
            yield return new Mutation($"{name}: missing external data file", With(m =>
                MakeExternal(m.Graph.Initializer[0], "weights.bin")), "cannot be opened", NeedsFile: true);
            yield return new Mutation($"{name}: external data from memory", With(m =>
                MakeExternal(m.Graph.Initializer[0], "weights.bin")), "loaded from memory");
        }
    }

    private static void MakeExternal(TensorProto t, string location)
    {
        t.ClearRawData();
        t.FloatData.Clear();
        t.Int32Data.Clear();
        t.Int64Data.Clear();
        t.DoubleData.Clear();
        t.Uint64Data.Clear();
        t.StringData.Clear();
        t.DataType = (int)TensorProto.Types.DataType.Float;
        t.DataLocation = TensorProto.Types.DataLocation.External;
        t.ExternalData.Add(new StringStringEntryProto { Key = "location", Value = location });
    }

    [Fact]
    public void AtLeastTwoHundredMutations() => Assert.True(Mutations().Count() >= 200, $"only {Mutations().Count()} mutations");

    [Fact]
    public async Task EveryMutationEndsInFrontendExceptionNamingTheProblem()
    {
        var dir = TestModels.TempDir();
        try
        {
            var failures = new List<string>();
            var count = 0;
            foreach (var mutation in Mutations())
            {
                count++;
                var file = Path.Combine(dir, "model.onnx");
                File.WriteAllBytes(file, mutation.Bytes);
                var run = Task.Run(() =>
                {
                    if (mutation.NeedsFile) ModelIO.Load(file);
                    else ModelIO.Load(mutation.Bytes);
                });
                Exception? error = null;
                try
                {
                    await run.WaitAsync(TimeSpan.FromSeconds(30));
                }
                catch (TimeoutException)
                {
                    failures.Add($"{mutation.Description}: no answer within 30 s");
                    continue;
                }
                catch (Exception ex)
                {
                    error = ex;
                }
                if (error is not FrontendException)
                    failures.Add($"{mutation.Description}: {(error is null ? "loaded without error" : error.GetType().Name + ": " + error.Message)}");
                else if (!error.Message.Contains(mutation.Expect, StringComparison.OrdinalIgnoreCase))
                    failures.Add($"{mutation.Description}: message lacks '{mutation.Expect}': {error.Message}");
            }
            Assert.True(count >= 200);
            Assert.True(failures.Count == 0, $"{failures.Count} of {count} mutations failed:\n" + string.Join("\n", failures.Take(40)));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}

/// <summary>Random corruption anywhere: a model may still load, but it never fails with anything else.</summary>
public class RandomCorruptionTests
{
    [Fact]
    public void RandomByteCorruptionsLoadOrFailWithFrontendExceptionOnly()
    {
        var random = new Random(99);
        var models = TestModels.Suite.Where((_, i) => i % 15 == 0).ToList();
        var failures = new List<string>();
        var rejected = 0;
        for (int k = 0; k < 600; k++)
        {
            var path = models[random.Next(models.Count)];
            var bytes = File.ReadAllBytes(path);
            var flips = random.Next(1, 4);
            for (int f = 0; f < flips; f++)
                bytes[random.Next(bytes.Length)] = (byte)random.Next(256);
            if (random.Next(4) == 0) bytes = bytes[..random.Next(bytes.Length)];
            try
            {
                var model = ModelIO.Load(bytes);
                _ = ModelIO.ToBytes(model); // what loads must also write
            }
            catch (FrontendException ex)
            {
                rejected++;
                // The catch-all in the loader is a safety net: every failure here should be diagnosed specifically.
                for (var inner = ex.InnerException; inner is not null; inner = inner.InnerException)
                    if (inner is not (FrontendException or Google.Protobuf.InvalidProtocolBufferException))
                        failures.Add($"{path} (case {k}): undiagnosed {inner.GetType().Name}: {ex.Message}");
            }
            catch (Exception ex)
            {
                failures.Add($"{path} (case {k}): {ex.GetType().Name}: {ex.Message}");
            }
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures.Take(20)));
        Assert.True(rejected > 300, $"only {rejected} of 600 corruptions were rejected");
    }
}
