using OnnxQuant.Frontend;
using OnnxQuant.Passes.Calibration;
using OnnxQuant.Passes.Pipeline;

namespace OnnxQuant.Passes.Load;

/// <summary>The samples the output is verified on, and whether they were held out from calibration.</summary>
public sealed record VerificationSplit(CalibrationSet Data, int Start, int Count, bool HeldOut);

/// <summary>The model and data of a compile, checked against each other.</summary>
public sealed record LoadedInputs(
    Model Model,
    string ModelHash,
    CalibrationSet Data,
    int Samples,
    string DataHash,
    VerificationSplit Verification,
    IReadOnlyList<string> Notes) : IDisposable
{
    /// <summary>Deletes the temporary files of spilled calibration and verification samples.</summary>
    public void Dispose()
    {
        Data.Dispose();
        if (!ReferenceEquals(Verification.Data, Data))
            Verification.Data.Dispose();
    }
}

/// <summary>
/// Loads the model and the calibration (and verification) data, checks the data against the model's inputs, and
/// decides which samples calibrate and which verify: the --verify-data file when given, else the samples after the
/// calibration ones, else (noted) the calibration samples themselves.
/// </summary>
public static class LoadStage
{
    public static LoadedInputs Run(string modelPath, string calibPath, DataOptions options)
    {
        if (!File.Exists(modelPath))
            throw new CompileException($"{modelPath}: model file not found");
        var model = ModelIO.Load(modelPath);
        var modelHash = Hashing.Sha256Hex(ModelIO.ToBytes(model));
        var inputs = model.Graph.Inputs.Where(v => !v.IsInitializer).Select(v => Spec(v, modelPath)).ToList();
        var data = CalibrationSet.Load(calibPath, inputs, options.MemoryBytes);
        try
        {
            return Split(model, modelHash, data, options);
        }
        catch
        {
            data.Dispose();
            throw;
        }
    }

    private static LoadedInputs Split(Model model, string modelHash, CalibrationSet data, DataOptions options)
    {
        var notes = new List<string>();
        var samples = Math.Min(options.CalibSamples, data.Count);
        if (samples < options.CalibSamples)
            notes.Add($"calibration data holds {data.Count} samples; using all of them instead of {options.CalibSamples}");
        notes.AddRange(data.Notes);
        notes.AddRange(data.Degeneracies(samples));
        VerificationSplit split;
        if (options.VerifyData is { } verifyPath)
        {
            var verifyData = CalibrationSet.Load(verifyPath, data.Inputs, options.MemoryBytes);
            split = new VerificationSplit(verifyData, 0, Math.Min(Math.Max(1, options.VerifySamples), verifyData.Count), true);
        }
        else if (options.VerifySamples > 0 && data.Count > samples)
            split = new VerificationSplit(data, samples, Math.Min(options.VerifySamples, data.Count - samples), true);
        else
        {
            split = new VerificationSplit(data, 0, Math.Min(samples, Math.Max(1, options.VerifySamples)), false);
            notes.Add("no samples beyond the calibration ones: verification reuses calibration samples (not held out); give --verify-data");
        }
        return new LoadedInputs(model, modelHash, data, samples, data.Hash(samples), split, notes);
    }

    private static InputSpec Spec(Value v, string modelPath)
    {
        if (v.Type is not { } type)
            throw new CompileException($"{modelPath}: input '{v.Name}' is not a tensor or has no type");
        var dims = type.Shape?.Dims.Select(d => d.Value is { } x && x > 0 ? x : (long?)null).ToList()
            ?? throw new CompileException($"{modelPath}: input '{v.Name}' has no shape; calibration data cannot be checked against it");
        return new InputSpec(v.Name, type.ElementType, dims);
    }
}
