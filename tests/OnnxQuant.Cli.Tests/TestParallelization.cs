// The ONNX Runtime binding sends its one-line notices (e.g. the --ep auto fallback) to the writer of the command
// that initialized it last, process-wide; commands running in parallel test classes would see each other's notices.
[assembly: CollectionBehavior(DisableTestParallelization = true)]
