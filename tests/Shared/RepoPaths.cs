namespace OnnxQuant;

/// <summary>
/// The repository's own files (bundled models, data, pinned curves) for the tests: found upward from the test
/// binaries, where OnnxQuant.sln is, so a test reads the same file whatever folder it is started from.
/// </summary>
internal static class RepoPaths
{
    public static string Root { get; } = FindRoot();

    public static string File(string relative) => Path.Combine(Root, relative);

    private static string FindRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (System.IO.File.Exists(Path.Combine(dir.FullName, "OnnxQuant.sln")))
                return dir.FullName;
        throw new InvalidOperationException($"OnnxQuant.sln not found above {AppContext.BaseDirectory}");
    }
}
