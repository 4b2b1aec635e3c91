using System.Runtime.InteropServices;

namespace OnnxQuant.Frontend;

/// <summary>What a path names on disk, as the kernel sees it.</summary>
public enum FileKind { Missing, Regular, Directory, SymbolicLink, Fifo, Socket, CharacterDevice, BlockDevice }

/// <summary>A file's identity: its device and inode, the same for every name of it (symbolic links, hard links, bind mounts).</summary>
public readonly record struct FileId(ulong DeviceMajor, ulong DeviceMinor, ulong Inode);

/// <summary>
/// The few POSIX facts and operations .NET does not expose: a file's type and identity (statx), fsync of a folder,
/// and the atomic exchange of two folders (renameat2 RENAME_EXCHANGE). The inputs-are-never-written and
/// one-unit-artifact guarantees rest on these.
/// </summary>
public static class FileIdentity
{
    /// <summary>The kind and identity of <paramref name="path"/>, following symbolic links unless told not to.</summary>
    public static (FileKind Kind, FileId Id) Stat(string path, bool followLinks = true)
    {
        Span<byte> buffer = stackalloc byte[256];
        int rc;
        unsafe
        {
            fixed (byte* b = buffer)
                rc = Native.statx(AtFdCwd, path, followLinks ? 0 : AtSymlinkNoFollow, StatxBasicStats, b);
        }
        if (rc != 0)
        {
            var errno = Marshal.GetLastPInvokeError();
            if (errno is ENOENT or ENOTDIR)
                return (FileKind.Missing, default);
            if (errno == ELOOP)
                throw new IOException($"'{path}': too many levels of symbolic links (a link loop)");
            throw new IOException($"'{path}': cannot be inspected ({Marshal.GetPInvokeErrorMessage(errno)})");
        }
        var mode = BitConverter.ToUInt16(buffer[28..30]);
        var id = new FileId(BitConverter.ToUInt32(buffer[136..140]), BitConverter.ToUInt32(buffer[140..144]), BitConverter.ToUInt64(buffer[32..40]));
        var kind = (mode & 0xF000) switch
        {
            0x8000 => FileKind.Regular,
            0x4000 => FileKind.Directory,
            0xA000 => FileKind.SymbolicLink,
            0x1000 => FileKind.Fifo,
            0xC000 => FileKind.Socket,
            0x2000 => FileKind.CharacterDevice,
            _ => FileKind.BlockDevice,
        };
        return (kind, id);
    }

    /// <summary>
    /// Refuses anything but a regular file (after links), before it is opened: opening a FIFO blocks until a writer
    /// comes, and a device can be endless.
    /// </summary>
    /// <exception cref="FileNotFoundException">Nothing at <paramref name="path"/>.</exception>
    /// <exception cref="FrontendException">A folder, FIFO, socket or device.</exception>
    public static void RequireRegularFile(string path, string label)
    {
        var (kind, _) = Stat(path);
        switch (kind)
        {
            case FileKind.Regular:
                return;
            case FileKind.Missing:
                throw new FileNotFoundException($"{label} '{path}' does not exist", path);
            case FileKind.Directory:
                throw new FrontendException($"{label} '{path}' is a folder, expected a file");
            default:
                throw new FrontendException($"{label} '{path}' is a {Describe(kind)}, not a regular file; refused (reading it could block or never end)");
        }
    }

    public static string Describe(FileKind kind) => kind switch
    {
        FileKind.Fifo => "FIFO (named pipe)",
        FileKind.Socket => "socket",
        FileKind.CharacterDevice => "character device",
        FileKind.BlockDevice => "block device",
        FileKind.SymbolicLink => "symbolic link",
        FileKind.Directory => "folder",
        FileKind.Regular => "file",
        _ => "missing path",
    };

    /// <summary>The absolute path with every symbolic link along it resolved (missing trailing components are kept).</summary>
    /// <exception cref="FrontendException">A symbolic link loop.</exception>
    public static string RealPath(string fullPath) => PathSafety.RealPath(fullPath);

    /// <summary>Flushes a folder's entries (new names, renames) to disk.</summary>
    public static void FsyncDirectory(string directory)
    {
        var fd = Native.open(directory, 0 /* O_RDONLY */);
        if (fd < 0)
            throw new IOException($"'{directory}': cannot open the folder to flush it ({Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())})");
        try
        {
            if (Native.fsync(fd) != 0)
                throw new IOException($"'{directory}': flushing the folder failed ({Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())})");
        }
        finally
        {
            _ = Native.close(fd);
        }
    }

    /// <summary>
    /// Swaps two existing paths in one step (renameat2 RENAME_EXCHANGE). False when the file system or kernel does
    /// not support the exchange; throws on any other failure.
    /// </summary>
    public static bool TryExchange(string a, string b)
    {
        int rc;
        try
        {
            rc = Native.renameat2(AtFdCwd, a, AtFdCwd, b, RenameExchange);
        }
        catch (EntryPointNotFoundException)
        {
            return false;
        }
        if (rc == 0)
            return true;
        var errno = Marshal.GetLastPInvokeError();
        if (errno is EINVAL or ENOSYS or EOPNOTSUPP)
            return false;
        throw new IOException($"cannot exchange '{a}' and '{b}': {Marshal.GetPInvokeErrorMessage(errno)}");
    }

    private const int AtFdCwd = -100;
    private const int AtSymlinkNoFollow = 0x100;
    private const uint StatxBasicStats = 0x7ff;
    private const uint RenameExchange = 2;
    private const int ENOENT = 2, ENOTDIR = 20, EINVAL = 22, ENOSYS = 38, ELOOP = 40, EOPNOTSUPP = 95;

    private static unsafe class Native
    {
        [DllImport("libc", SetLastError = true)]
        public static extern int statx(int dirfd, string path, int flags, uint mask, byte* buffer);

        [DllImport("libc", SetLastError = true)]
        public static extern int renameat2(int olddirfd, string oldpath, int newdirfd, string newpath, uint flags);

        [DllImport("libc", SetLastError = true)]
        public static extern int open(string path, int flags);

        [DllImport("libc", SetLastError = true)]
        public static extern int fsync(int fd);

        [DllImport("libc", SetLastError = true)]
        public static extern int close(int fd);
    }
}
