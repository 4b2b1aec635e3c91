namespace OnnxQuant.Frontend.Tests;

/// <summary>Every model of the ONNX backend test suite loads, validates, writes, reloads and compares equal.</summary>
public class ConformanceTests
{
    [Fact]
    public void SuiteHasAllModels() => Assert.Equal(1072, TestModels.Suite.Count);

    [Fact]
    public void EveryModelRoundTripsThroughBytesStructurallyEqual()
    {
        var failures = new List<string>();
        foreach (var path in TestModels.Suite)
        {
            try
            {
                var model = ModelIO.Load(path);
                Assert.True(ModelValidator.Validate(model).IsValid);
                var bytes = ModelIO.ToBytes(model);
                var back = ModelIO.Load(bytes);
                if (ModelComparer.FindDifference(model, back) is { } diff)
                    failures.Add($"{path}: {diff}");
                else if (!bytes.AsSpan().SequenceEqual(ModelIO.ToBytes(back)))
                    failures.Add($"{path}: second write differs from the first");
            }
            catch (Exception ex)
            {
                failures.Add($"{path}: {ex.GetType().Name}: {ex.Message}");
            }
        }
        Assert.True(failures.Count == 0, $"{failures.Count} models failed:\n" + string.Join("\n", failures.Take(30)));
    }

    [Fact]
    public void EveryModelRoundTripsThroughFilesWithExternalData()
    {
        var dir = TestModels.TempDir();
        try
        {
            var failures = new List<string>();
            var options = new SaveOptions { ExternalData = ExternalDataMode.Always, MinExternalTensorBytes = 0, Durable = false };
            foreach (var path in TestModels.Suite)
            {
                var model = ModelIO.Load(path);
                var target = Path.Combine(dir, "m.onnx");
                ModelIO.Save(model, target, options);
                var back = ModelIO.Load(target);
                if (ModelComparer.FindDifference(model, back) is { } diff)
                    failures.Add($"{path}: {diff}");
                // Saving the reloaded model over itself must work while its tensors still point at the old data file.
                ModelIO.Save(back, target, options);
                if (ModelComparer.FindDifference(model, ModelIO.Load(target)) is { } diff2)
                    failures.Add($"{path}: after overwrite: {diff2}");
            }
            Assert.True(failures.Count == 0, $"{failures.Count} models failed:\n" + string.Join("\n", failures.Take(30)));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
