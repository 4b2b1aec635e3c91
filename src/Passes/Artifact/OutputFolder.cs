using System.Text.Json;
using OnnxQuant.Frontend;
using OnnxQuant.Passes.Pipeline;

namespace OnnxQuant.Passes.Artifact;

/// <summary>A file or folder the compile reads, named for error messages.</summary>
public sealed record InputPath(string Label, string Path);

/// <summary>
/// The output folder of a compile, written as one unit. Opened before any expensive stage: it resolves -o to its real
/// path, refuses a folder that is, holds or lies inside an input (by device and inode, so symbolic links, hard links
/// and bind mounts count) or that holds files no compile wrote, takes a lock a second compile into the same folder
/// is refused by, clears what killed compiles left, and creates a staging folder beside the target. Every file of
/// the artifact is written into the staging folder and flushed; <see cref="Publish"/> then swaps it for the previous
/// artifact in one rename. Until then the previous artifact stays whole; after it, the new one is.
/// </summary>
public sealed class OutputFolder : IDisposable
{
    private const string Marker = ".onnxquant-";
    // The manifest of `qat-import`'s artifact, which is published the same way.
    private const string QatManifestSchema = "onnxquant.qat-manifest/1";
    // .NET reports a lock held elsewhere as an IOException carrying errno EWOULDBLOCK.
    private const int EWouldBlock = 11;
    private readonly FileStream _lock;
    private bool _published;

    private OutputFolder(string requested, string target, string staging, FileStream lockFile)
    {
        Requested = requested;
        Target = target;
        Staging = staging;
        _lock = lockFile;
    }

    /// <summary>The folder as the user named it; results and messages use it.</summary>
    public string Requested { get; }

    /// <summary>Its real path (symbolic links resolved): the folder the rename replaces.</summary>
    public string Target { get; }

    /// <summary>The hidden sibling the artifact is built in.</summary>
    public string Staging { get; }

    /// <exception cref="CompileException">The folder cannot be used (the message names it and says why).</exception>
    public static OutputFolder Open(string requested, IReadOnlyList<InputPath> inputs)
    {
        if (string.IsNullOrWhiteSpace(requested))
            throw new CompileException("-o '': the output folder name is empty");
        var target = FileIdentity.RealPath(Path.GetFullPath(requested));
        var parent = Path.GetDirectoryName(target)
            ?? throw new CompileException($"-o {requested}: the root folder cannot be replaced by an artifact; name a folder below it");
        var name = Path.GetFileName(target);
        var (kind, _) = FileIdentity.Stat(target);
        if (kind is not (FileKind.Missing or FileKind.Directory))
            throw new CompileException($"-o {requested}: is a {FileIdentity.Describe(kind)}; -o names a folder");
        CheckInputs(requested, target, parent, inputs);
        for (var dir = parent; !string.IsNullOrEmpty(dir); dir = Path.GetDirectoryName(dir))
            if (IsManifest(Path.Combine(dir, "manifest.json"), new HashSet<string>()))
                throw new CompileException($"-o {requested}: lies inside the artifact folder {dir}, which a compile replaces as a whole; write it elsewhere");
        // Checked before the lock too, so a refused folder is left exactly as it was (not even a lock file beside it).
        if (Directory.Exists(target))
            CheckReplaceable(requested, target);
        try
        {
            Directory.CreateDirectory(parent);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new CompileException($"-o {requested}: cannot create the folder {parent}: {ex.Message}", ex);
        }

        var lockPath = Path.Combine(parent, $".{name}{Marker}lock");
        FileStream lockFile;
        try
        {
            // FileShare.None takes flock(LOCK_EX | LOCK_NB): the kernel drops it when the holder dies, even by kill -9.
            lockFile = new FileStream(lockPath, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
        }
        catch (IOException ex) when (ex.HResult == EWouldBlock)
        {
            throw new CompileException($"-o {requested}: another onnxquant compile is writing this folder (it holds {lockPath}); wait for it to finish or choose another -o", ex);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new CompileException($"-o {requested}: cannot write in {parent} ({ex.Message})", ex);
        }
        try
        {
            FaultPoints.Reach("output:locked");
            ClearLeftovers(parent, name, target);
            if (Directory.Exists(target))
                CheckReplaceable(requested, target);
            var staging = Path.Combine(parent, $".{name}{Marker}staging-{Environment.ProcessId}-{Guid.NewGuid():N}");
            Directory.CreateDirectory(staging);
            return new OutputFolder(requested, target, staging, lockFile);
        }
        catch
        {
            lockFile.Dispose();
            throw;
        }
    }

    /// <summary>The path a file of the artifact will have once published, as the user named the folder.</summary>
    public string FinalPath(string relative) => Path.Combine(Requested, relative);

    /// <summary>Where a file given by its final path (<see cref="FinalPath"/>) lies until the folder is published.</summary>
    public string StagedPath(string finalPath) => Path.Combine(Staging, Path.GetRelativePath(Requested, finalPath));

    /// <summary>Writes one file of the artifact into the staging folder and flushes it to disk.</summary>
    public void WriteFile(string relative, ReadOnlySpan<byte> bytes)
    {
        var path = Path.Combine(Staging, relative);
        try
        {
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            using var stream = new FileStream(path, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 16);
            var half = bytes.Length / 2;
            stream.Write(bytes[..half]);
            stream.Flush();
            FaultPoints.Reach("write:half", FinalPath(relative));
            stream.Write(bytes[half..]);
            stream.Flush(flushToDisk: true);
        }
        catch (IOException ex)
        {
            // Name the file the user asked for, not the hidden staging folder; the previous artifact is untouched.
            var reason = ex.Message.Split(" : '")[0];
            throw new IOException($"{FinalPath(relative)}: cannot be written ({reason}); the previous contents of {Requested} are unchanged", ex);
        }
    }

    /// <summary>
    /// Makes the staged artifact the output folder in one rename: an exchange with the previous folder where the file
    /// system supports it (the folder is whole at every instant), else rename-away and rename-in (a compile killed
    /// between the two finds the previous folder beside the target and puts it back).
    /// </summary>
    public void Publish()
    {
        foreach (var dir in Directory.EnumerateDirectories(Staging, "*", SearchOption.AllDirectories).Append(Staging))
            FileIdentity.FsyncDirectory(dir);
        FaultPoints.Reach("publish:synced");
        var parent = Path.GetDirectoryName(Target)!;
        string? previous = null;
        if (!Directory.Exists(Target))
            Directory.Move(Staging, Target);
        else if (FileIdentity.TryExchange(Staging, Target))
            previous = Staging;
        else
        {
            previous = Path.Combine(parent, $".{Path.GetFileName(Target)}{Marker}old-{Environment.ProcessId}");
            Directory.Move(Target, previous);
            FaultPoints.Reach("publish:moved-aside");
            Directory.Move(Staging, Target);
        }
        _published = true;
        FileIdentity.FsyncDirectory(parent);
        FaultPoints.Reach("publish:swapped");
        if (previous is not null)
            Directory.Delete(previous, recursive: true);
        FaultPoints.Reach("publish:done");
    }

    public void Dispose()
    {
        if (!_published && Directory.Exists(Staging))
        {
            try
            {
                Directory.Delete(Staging, recursive: true);
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                // The next compile into this folder removes it.
            }
        }
        // The lock file stays: deleting it would let a waiting compile lock a name another has already recreated.
        _lock.Dispose();
    }

    /// <summary>Staging folders of killed compiles are removed; a previous artifact moved aside is put back.</summary>
    private static void ClearLeftovers(string parent, string name, string target)
    {
        var prefix = $".{name}{Marker}";
        foreach (var dir in Directory.EnumerateDirectories(parent, prefix + "*").Order(StringComparer.Ordinal))
        {
            var kind = Path.GetFileName(dir)[prefix.Length..];
            if (kind.StartsWith("old-", StringComparison.Ordinal) && !Directory.Exists(target))
                Directory.Move(dir, target);
            else if (kind.StartsWith("old-", StringComparison.Ordinal) || kind.StartsWith("staging-", StringComparison.Ordinal))
                Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>
    /// A folder may be replaced when it is empty or holds an artifact (a manifest and the files compiles write);
    /// anything else is the user's and would be lost with the folder.
    /// </summary>
    private static void CheckReplaceable(string requested, string target)
    {
        var entries = Directory.EnumerateFileSystemEntries(target).Select(Path.GetFileName).Order(StringComparer.Ordinal).ToList();
        if (entries.Count == 0)
            return;
        var allowed = new HashSet<string>(["manifest.json", "model.onnx", "report.json", "report.html"], StringComparer.Ordinal);
        var manifest = Path.Combine(target, "manifest.json");
        if (!IsManifest(manifest, allowed))
            throw new CompileException(
                $"-o {requested}: the folder holds files no compile wrote (e.g. '{entries[0]}') and a compile replaces the folder as a whole; choose a new or empty folder");
        foreach (var entry in entries)
            if (!allowed.Contains(entry!) && !(entry!.StartsWith("bits-", StringComparison.Ordinal) && Directory.Exists(Path.Combine(target, entry))))
                throw new CompileException(
                    $"-o {requested}: '{entry}' in the previous artifact is not part of it, and a compile replaces the folder as a whole; move it out or choose another folder");
    }

    private static bool IsManifest(string path, ISet<string> allowed)
    {
        if (FileIdentity.Stat(path, followLinks: false).Kind != FileKind.Regular)
            return false;
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(path));
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("schema", out var schema)
                || schema.ValueKind != JsonValueKind.String || schema.GetString() is not (ReportWriter.ManifestSchema or QatManifestSchema))
                return false;
            if (root.TryGetProperty("outputs", out var outputs) && outputs.ValueKind == JsonValueKind.Array)
                foreach (var o in outputs.EnumerateArray())
                    if (o.TryGetProperty("path", out var p) && p.GetString() is { } rel)
                        allowed.Add(rel.Split('/')[0]);
            return true;
        }
        catch (JsonException)
        {
            return false;
        }
    }

    /// <summary>
    /// Refuses an output folder that is an input, holds one (also as a hard link) or lies inside an input folder:
    /// replacing it would delete or change what the compile reads.
    /// </summary>
    private static void CheckInputs(string requested, string target, string parent, IReadOnlyList<InputPath> inputs)
    {
        var targetKind = FileIdentity.Stat(target);
        var aboveTarget = Ancestors(parent).ToHashSet();
        var inputFiles = new Dictionary<FileId, InputPath>();
        foreach (var input in inputs)
        {
            var real = FileIdentity.RealPath(Path.GetFullPath(input.Path));
            var (kind, id) = FileIdentity.Stat(real);
            if (kind == FileKind.Missing)
                continue;
            if (kind == FileKind.Directory && (aboveTarget.Contains(id) || (targetKind.Kind == FileKind.Directory && targetKind.Id == id)))
                throw new CompileException($"-o {requested}: lies inside the {input.Label} folder {input.Path}; write the artifact elsewhere");
            if (targetKind.Kind == FileKind.Directory && Ancestors(Path.GetDirectoryName(real) ?? real).Contains(targetKind.Id))
                throw new CompileException($"-o {requested}: holds the {input.Label} {input.Path}, and a compile replaces the folder as a whole; choose another -o");
            if (kind == FileKind.Regular)
                inputFiles.TryAdd(id, input);
        }
        if (targetKind.Kind != FileKind.Directory || inputFiles.Count == 0)
            return;
        foreach (var file in Directory.EnumerateFiles(target, "*", new EnumerationOptions { RecurseSubdirectories = true, AttributesToSkip = 0 }))
            if (FileIdentity.Stat(file, followLinks: false) is { Kind: FileKind.Regular } s && inputFiles.TryGetValue(s.Id, out var input))
                throw new CompileException($"-o {requested}: {file} is the {input.Label} {input.Path} under another name (a hard link); choose another -o");
    }

    private static IEnumerable<FileId> Ancestors(string directory)
    {
        for (var dir = directory; !string.IsNullOrEmpty(dir); dir = Path.GetDirectoryName(dir))
            if (FileIdentity.Stat(dir) is { Kind: FileKind.Directory } s)
                yield return s.Id;
    }

    /// <summary>
    /// Refuses a single-file output (--write-curves, --emit-qat-recipe, qat-recipe -o) that names an input, a folder,
    /// or a path inside an artifact folder (which the next compile replaces, and whose manifest would not list it).
    /// </summary>
    public static void CheckFileOutput(string option, string path, IReadOnlyList<InputPath> inputs, string? artifactFolder = null)
    {
        if (string.IsNullOrWhiteSpace(path))
            throw new CompileException($"{option} '': the file name is empty");
        var full = Path.GetFullPath(path);
        var (kind, id) = FileIdentity.Stat(full);
        if (kind is not (FileKind.Missing or FileKind.Regular))
            throw new CompileException($"{option} {path}: is a {FileIdentity.Describe(kind)}; {option} names a file");
        if (artifactFolder is not null && !string.IsNullOrWhiteSpace(artifactFolder))
        {
            var artifact = FileIdentity.RealPath(Path.GetFullPath(artifactFolder));
            var real = FileIdentity.RealPath(full);
            if (real == artifact || real.StartsWith(artifact + Path.DirectorySeparatorChar, StringComparison.Ordinal))
                throw new CompileException($"{option} {path}: lies inside the output folder {artifactFolder}, which a compile replaces as a whole; write it elsewhere");
        }
        var folder = Path.GetDirectoryName(full)!;
        if (FileIdentity.Stat(folder).Kind != FileKind.Directory)
            throw new CompileException($"{option} {path}: the folder {folder} does not exist");
        foreach (var input in inputs)
        {
            var (inputKind, inputId) = FileIdentity.Stat(Path.GetFullPath(input.Path));
            if (kind == FileKind.Regular && inputKind == FileKind.Regular && inputId == id)
                throw new CompileException($"{option} {path}: is the {input.Label} {input.Path}; inputs are never written, choose another file");
        }
    }
}
