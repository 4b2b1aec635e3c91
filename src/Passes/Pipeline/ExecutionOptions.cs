using System.Globalization;
using OnnxQuant.Runtime;

namespace OnnxQuant.Passes.Pipeline;

/// <summary>How ONNX Runtime runs the compile's sessions.</summary>
public sealed record ExecutionOptions : IStageOptions
{
    /// <summary>Threads ONNX Runtime may use per session (0 = its default). Never changes the output bytes.</summary>
    public int Threads { get; init; }

    /// <summary>Samples stacked into one run when the model's batch axis is symbolic.</summary>
    public int RunBatch { get; init; } = 8;

    public void Validate()
    {
        if (Threads < 0)
            throw new CompileException($"--threads {Threads} is negative");
        if (RunBatch < 1)
            throw new CompileException($"--run-batch {RunBatch}: need at least one sample per run");
    }

    // Threads are left out on purpose: they never change what is written.
    public IEnumerable<OptionEntry> Manifest() => [new("run_batch", RunBatch.ToString(CultureInfo.InvariantCulture))];

    /// <summary>
    /// Sessions that expose intermediate tensors (calibration): every optimization, since ONNX Runtime never fuses away a
    /// node output that is a graph output, so the instrumented tensors keep their names and values. With ONNX Runtime's
    /// memory arena: without it every run maps its buffers afresh, and DETR-R50's calibration took twice as long
    /// (47 s against 23 s, 64 samples at 512x512) for about the same peak memory. Without ONNX Runtime's memory pattern:
    /// the reductions keep every layer input's consumers apart, and one planned block per run held 214 MB more at the
    /// peak than buffers reused as they are freed, for no speed.
    /// </summary>
    public SessionOptions Instrumentation() =>
        new() { IntraOpThreads = Threads, Optimization = GraphOptimization.All, MemoryPattern = false, ReleaseNativeHeap = true };

    /// <summary>Sessions that measure features (curves, verification): every optimization, exact MatMulNBits, and no
    /// memory pattern (a 512x512 Swin-T Mask-RCNN's float runs peaked at 1,837 MiB with it and 1,335 without, about as
    /// fast).</summary>
    public SessionOptions Measurement() =>
        new SessionOptions { IntraOpThreads = Threads, Optimization = GraphOptimization.All, MemoryPattern = false }
            .WithConfig(SessionConfigKeys.QdqMatMulNBitsAccuracyLevel, "0");
}
