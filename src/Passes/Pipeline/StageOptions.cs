namespace OnnxQuant.Passes.Pipeline;

/// <summary>One option as the manifest records it (key in snake_case, value as text).</summary>
public sealed record OptionEntry(string Key, string Value);

/// <summary>
/// The options of one compile stage. Each record owns its defaults, its validation (messages name the CLI flag),
/// what it adds to the manifest, and what it adds to the curve cache key (only what changes a measured curve), so a
/// new option touches its record and the command line only.
/// </summary>
public interface IStageOptions
{
    /// <summary>Throws <see cref="CompileException"/> naming the flag when a value cannot be used.</summary>
    void Validate();

    /// <summary>Every option of the stage that can change the artifact, in a stable order.</summary>
    IEnumerable<OptionEntry> Manifest();

    /// <summary>The options that change a measured error curve, as "key=value" parts of the cache key.</summary>
    IEnumerable<string> CurveKey() => [];
}
