using System.Diagnostics;
using System.Globalization;
using OnnxQuant.Frontend;

namespace OnnxQuant.Benchmarks;

/// <summary>
/// `frontend-io [--mb N]`: generates a model with N MiB of seeded random float weights (default 600) in a temporary
/// folder, then measures load and save throughput and the peak resident memory relative to the file size, once with
/// the weights embedded in the protobuf and once as external data. The folder is deleted afterwards.
/// </summary>
public static class FrontendIoBenchmark
{
    public static int Run(string[] args)
    {
        if (args.Length == 3 && args[0] == "--measure")
            return MeasureCase(args[1], args[2]);
        var mb = 600;
        for (int i = 0; i < args.Length; i++)
            if (args[i] == "--mb" && i + 1 < args.Length) mb = int.Parse(args[++i], CultureInfo.InvariantCulture);
        var dir = Path.Combine(Path.GetTempPath(), "onnxquant-frontend-io-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        try
        {
            var embedded = Path.Combine(dir, "embedded.onnx");
            Generate(embedded, mb);
            ModelIO.Save(ModelIO.Load(embedded), Path.Combine(dir, "external.onnx"), new SaveOptions { ExternalData = ExternalDataMode.Always });
            Console.WriteLine($"frontend-io: {mb / 16 * 16} MiB of random float weights; embedded file {new FileInfo(embedded).Length / 1048576.0:F1} MiB");
            Console.WriteLine("case                load MB/s  save MB/s  peak RSS / file size  RSS at start MiB");
            // Each case runs in a fresh process, so its peak memory is its own and not the generator's.
            foreach (var name in new[] { "embedded", "external-read-all", "external-lazy" })
            {
                var code = RunChild(name, dir);
                if (code != 0) return code;
            }
            return 0;
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    private static int RunChild(string name, string dir)
    {
        var self = Environment.ProcessPath!;
        var start = new ProcessStartInfo(self) { UseShellExecute = false };
        if (Path.GetFileNameWithoutExtension(self) == "dotnet")
            start.ArgumentList.Add(typeof(FrontendIoBenchmark).Assembly.Location);
        foreach (var a in new[] { "frontend-io", "--measure", name, dir }) start.ArgumentList.Add(a);
        using var child = Process.Start(start)!;
        child.WaitForExit();
        return child.ExitCode;
    }

    private static int MeasureCase(string name, string dir)
    {
        var embedded = Path.Combine(dir, "embedded.onnx");
        var external = Path.Combine(dir, "external.onnx");
        var externalBytes = new FileInfo(external).Length + new FileInfo(external + ".data").Length;
        switch (name)
        {
            // Embedded: the load parses the whole file; the save writes it back as one protobuf.
            case "embedded":
                Measure(name, embedded, Path.Combine(dir, "out-embedded.onnx"), new FileInfo(embedded).Length,
                    new SaveOptions { ExternalData = ExternalDataMode.Never }, touch: false);
                break;
            // External data is loaded lazily: this case reads every tensor once before saving.
            case "external-read-all":
                Measure(name, external, Path.Combine(dir, "out-read-all.onnx"), externalBytes,
                    new SaveOptions { ExternalData = ExternalDataMode.Always }, touch: true);
                break;
            // Nothing read: the save streams the data file to file.
            case "external-lazy":
                Measure(name, external, Path.Combine(dir, "out-lazy.onnx"), externalBytes,
                    new SaveOptions { ExternalData = ExternalDataMode.Always }, touch: false);
                break;
            default:
                Console.Error.WriteLine($"unknown case '{name}'");
                return 2;
        }
        return 0;
    }

    private static void Measure(string name, string source, string target, long bytes, SaveOptions options, bool touch)
    {
        var before = ResidentBytes("VmRSS:");
        var watch = Stopwatch.StartNew();
        var model = ModelIO.Load(source);
        if (touch)
            foreach (var t in model.AllTensors())
                if (t.DataType != DataType.String) _ = t.RawData.Length;
        var load = watch.Elapsed.TotalSeconds;
        watch.Restart();
        ModelIO.Save(model, target, options);
        var save = watch.Elapsed.TotalSeconds;
        var peak = ResidentBytes("VmHWM:");
        GC.KeepAlive(model);
        var mbytes = bytes / 1e6;
        Console.WriteLine($"{name,-19} {mbytes / load,9:F0}  {mbytes / save,9:F0}  {peak / (double)bytes,20:F2}  {before >> 20,16}");
    }

    /// <summary>Writes a model of <paramref name="mb"/> MiB: x[1,1024] -> MatMul(w_i) -> y_i, 16 MiB per weight.</summary>
    private static void Generate(string path, int mb)
    {
        var graph = new Graph("frontend_io");
        const long rows = 1024, cols = 4096;
        var x = new Value("x", new TensorType(DataType.Float, Shape.Of(1, rows)));
        graph.AddInput(x);
        var random = new Random(1234);
        for (int i = 0; i < mb / 16; i++)
        {
            var raw = new byte[rows * cols * 4];
            random.NextBytes(raw);
            var w = graph.AddInitializer($"w{i}", Tensor.FromRaw($"w{i}", DataType.Float, [rows, cols], raw));
            var node = new Node("MatMul", [x, w], [$"y{i}"], name: $"matmul{i}");
            graph.AddNode(node);
            node.Outputs[0].Type = new TensorType(DataType.Float, Shape.Of(1, cols));
            graph.AddOutput(node.Outputs[0]);
        }
        var model = new Model(graph) { ProducerName = "frontend-io" };
        model.OpsetImports.Default = 21;
        ModelIO.Save(model, path, new SaveOptions { ExternalData = ExternalDataMode.Never });
    }

    private static long ResidentBytes(string key)
    {
        var line = File.ReadLines("/proc/self/status").First(l => l.StartsWith(key, StringComparison.Ordinal));
        return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) * 1024;
    }
}
