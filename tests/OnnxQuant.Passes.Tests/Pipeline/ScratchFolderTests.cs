using OnnxQuant.Passes.Pipeline;

namespace OnnxQuant.Passes.Tests.Pipeline;

public class ScratchFolderTests
{
    /// <summary>
    /// A killed compile's scratch folders (process gone, untouched for longer than <see cref="ScratchFolder.StaleAfter"/>)
    /// are deleted by the next sweep; a live process's folder, a recent one and folders of other names stay.
    /// </summary>
    [Fact]
    public void SweepDeletesOnlyStaleFoldersOfDeadProcesses()
    {
        var root = Directory.CreateTempSubdirectory("scratch-sweep-").FullName;
        try
        {
            // A process id above the kernel's pid_max (4194304) can never run.
            const int dead = 99999999;
            string Make(string name, TimeSpan age)
            {
                var path = Path.Combine(root, name);
                Directory.CreateDirectory(path);
                File.WriteAllBytes(Path.Combine(path, "0.bin"), [1, 2, 3]);
                Directory.SetLastWriteTimeUtc(path, DateTime.UtcNow - age);
                return path;
            }
            var stale = Make($"onnxquant-rows-{dead}-abc123", TimeSpan.FromHours(3));
            var staleMemo = Make($"onnxquant-memo-{dead}-x9y8z7", TimeSpan.FromDays(2));
            var recent = Make($"onnxquant-rows-{dead}-def456", TimeSpan.FromMinutes(10));
            var live = Make($"onnxquant-activations-{Environment.ProcessId}-ghi789", TimeSpan.FromHours(3));
            var other = Make("onnxquant-gain-0123456789abcdef", TimeSpan.FromDays(2));
            var otherWithNumber = Make("onnxquant-deploy-speed-42", TimeSpan.FromDays(2));

            Assert.Equal(2, ScratchFolder.Sweep(root, DateTime.UtcNow));
            Assert.False(Directory.Exists(stale));
            Assert.False(Directory.Exists(staleMemo));
            Assert.True(Directory.Exists(recent));
            Assert.True(Directory.Exists(live));
            Assert.True(Directory.Exists(other));
            Assert.True(Directory.Exists(otherWithNumber));
            Assert.Equal(0, ScratchFolder.Sweep(root, DateTime.UtcNow));
        }
        finally
        {
            Directory.Delete(root, true);
        }
    }

    [Fact]
    public void OwnerIsReadFromTheNameOnly()
    {
        Assert.Equal(1234, ScratchFolder.OwnerOf("onnxquant-rows-1234-a1b2c3"));
        Assert.Null(ScratchFolder.OwnerOf("onnxquant-rows-a1b2c3"));
        Assert.Null(ScratchFolder.OwnerOf("onnxquant-Rows-1234-a1b2c3"));
        Assert.Null(ScratchFolder.OwnerOf("onnxquant-rows-+12-a1b2c3"));
        Assert.Null(ScratchFolder.OwnerOf("other-rows-1234-a1b2c3"));
        Assert.Null(ScratchFolder.OwnerOf("onnxquant-deploy-speed-1234"));
    }

    [Fact]
    public void CreatedFoldersCarryThisProcessAndAreUnique()
    {
        var a = ScratchFolder.Create("rows");
        var b = ScratchFolder.Create("rows");
        try
        {
            Assert.NotEqual(a, b);
            Assert.Equal(Environment.ProcessId, ScratchFolder.OwnerOf(Path.GetFileName(a)));
        }
        finally
        {
            Directory.Delete(a);
            Directory.Delete(b);
        }
    }
}
