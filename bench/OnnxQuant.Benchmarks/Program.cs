using BenchmarkDotNet.Running;
using OnnxQuant.Benchmarks;

// Two kinds of benchmark live here: BenchmarkDotNet classes (run with `-- --filter '*Name*'`) and whole-pipeline
// measurements that print ratios measured in one run (run with `-- <name> [args]`), listed in RatioBenchmarks.
if (args.Length > 0 && RatioBenchmarks.Find(args[0]) is { } ratio)
    return ratio.Run(args[1..]);
BenchmarkSwitcher.FromAssembly(typeof(RatioBenchmarks).Assembly).Run(args);
return 0;
