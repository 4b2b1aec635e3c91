namespace OnnxQuant.Frontend;

/// <summary>
/// Keeps external data inside the model's folder: a location must be relative and, after "..", "." and symbolic
/// links are resolved, still name a file under the folder. Anything else is refused before any byte is read.
/// </summary>
internal static class PathSafety
{
    public static string ResolveInside(string baseDirectory, string location, string label)
    {
        if (location.Contains('\0'))
            throw new FrontendException($"{label} has an external data location with a NUL character");
        var normalized = location.Replace('\\', '/');
        if (Path.IsPathRooted(normalized) || normalized.StartsWith('/') || (normalized.Length > 1 && normalized[1] == ':'))
            throw new FrontendException(
                $"{label} names external data by absolute path '{location}'; only paths inside the model's folder are allowed");
        var full = RealPath(Path.GetFullPath(Path.Combine(baseDirectory, normalized)));
        if (!IsInside(baseDirectory, full))
            throw new FrontendException(
                $"{label} names external data '{location}', which leaves the model's folder '{baseDirectory}'; refused");
        return full;
    }

    public static bool IsInside(string directory, string fullPath)
    {
        var dir = Path.TrimEndingDirectorySeparator(directory) + Path.DirectorySeparatorChar;
        return fullPath.StartsWith(dir, StringComparison.Ordinal);
    }

    /// <summary>The path with every symbolic link along it resolved (components that do not exist are kept).</summary>
    public static string RealPath(string fullPath)
    {
        var root = Path.GetPathRoot(fullPath) ?? "/";
        var pending = new Queue<string>(fullPath[root.Length..].Split(Path.DirectorySeparatorChar, StringSplitOptions.RemoveEmptyEntries));
        var current = root;
        var hops = 0;
        while (pending.Count > 0)
        {
            var part = pending.Dequeue();
            if (part == ".") continue;
            if (part == "..") { current = Path.GetDirectoryName(current) ?? root; continue; }
            var next = Path.Combine(current, part);
            FileSystemInfo info = Directory.Exists(next) ? new DirectoryInfo(next) : new FileInfo(next);
            if (info.Exists && info.LinkTarget is { } target)
            {
                if (++hops > 40)
                    throw new FrontendException($"too many symbolic links while resolving '{fullPath}'");
                var resolved = Path.GetFullPath(target, current);
                // Restart from the link target, then continue with the remaining components.
                var rest = pending.ToArray();
                var targetRoot = Path.GetPathRoot(resolved) ?? "/";
                pending = new Queue<string>(resolved[targetRoot.Length..]
                    .Split(Path.DirectorySeparatorChar, StringSplitOptions.RemoveEmptyEntries).Concat(rest));
                current = targetRoot;
                continue;
            }
            current = next;
        }
        return current;
    }
}
