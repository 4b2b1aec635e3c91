using System.Text;
using OnnxQuant.Data;
using OnnxQuant.Frontend;

namespace OnnxQuant.Data.Tests;

/// <summary>Fixtures written by numpy itself, once per test class.</summary>
public sealed class NumpyFixtures : IDisposable
{
    public readonly TempDir Dir = new();

    public NumpyFixtures()
    {
        PythonScript.Run("""
            import numpy as np
            vals = [0, 1, -2, 3, 100, -7]
            for code in ['f2', 'f4', 'f8', 'i1', 'i2', 'i4', 'i8']:
                for order in '<>':
                    np.save(f'{order == "<" and "le" or "be"}_{code}.npy', np.array(vals, dtype=order + code).reshape(2, 3))
            for code in ['u1', 'u2', 'u4', 'u8']:
                for order in '<>':
                    np.save(f'{order == "<" and "le" or "be"}_{code}.npy', np.array([0, 1, 2, 3, 200, 7], dtype=order + code).reshape(2, 3))
            np.save('bool.npy', np.array([True, False, True]))
            np.save('scalar.npy', np.float32(2.5))
            np.save('empty.npy', np.zeros((0, 3), np.float32))
            np.save('fortran.npy', np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)))
            np.save('object.npy', np.array([1, 'a'], dtype=object), allow_pickle=True)
            np.save('complex.npy', np.zeros(3, np.complex64))
            np.save('record.npy', np.zeros(2, dtype=[('a', '<f4'), ('b', '<i4')]))
            a = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 8
            for v in [(1, 0), (2, 0), (3, 0)]:
                with open(f'v{v[0]}.npy', 'wb') as f:
                    np.lib.format.write_array(f, a, version=v)
            np.savez('stored.npz', images=a, labels=np.array([3, 1], np.int64), mask=np.array([True, False]))
            np.savez_compressed('deflated.npz', zeta=a, alpha=np.arange(5, dtype=np.int32))
            """, Dir.Path);
    }

    public string File(string name) => Dir.File(name);

    public void Dispose() => Dir.Dispose();
}

public sealed class NpyTests(NumpyFixtures fx) : IClassFixture<NumpyFixtures>
{
    [Theory]
    [InlineData("f2", DataType.Float16)]
    [InlineData("f4", DataType.Float)]
    [InlineData("f8", DataType.Double)]
    [InlineData("i1", DataType.Int8)]
    [InlineData("i2", DataType.Int16)]
    [InlineData("i4", DataType.Int32)]
    [InlineData("i8", DataType.Int64)]
    public void ReadsSignedAndFloatTypesInBothByteOrders(string code, DataType expected)
    {
        foreach (var order in new[] { "le", "be" })
        {
            var a = Npy.Read(fx.File($"{order}_{code}.npy"));
            Assert.Equal(expected, a.DataType);
            Assert.Equal([2L, 3L], a.Shape);
            Assert.Equal([0f, 1f, -2f, 3f, 100f, -7f], a.ToFloats());
            Assert.Equal([0L, 1L, -2L, 3L, 100L, -7L], a.ToInt64s());
        }
    }

    [Theory]
    [InlineData("u1", DataType.UInt8)]
    [InlineData("u2", DataType.UInt16)]
    [InlineData("u4", DataType.UInt32)]
    [InlineData("u8", DataType.UInt64)]
    public void ReadsUnsignedTypesInBothByteOrders(string code, DataType expected)
    {
        foreach (var order in new[] { "le", "be" })
        {
            var a = Npy.Read(fx.File($"{order}_{code}.npy"));
            Assert.Equal(expected, a.DataType);
            Assert.Equal([0f, 1f, 2f, 3f, 200f, 7f], a.ToFloats());
        }
    }

    [Fact]
    public void BigEndianBytesAreStoredLittleEndian()
    {
        var be = Npy.Read(fx.File("be_i4.npy"));
        var le = Npy.Read(fx.File("le_i4.npy"));
        Assert.Equal(le.Bytes.ToArray(), be.Bytes.ToArray());
    }

    [Fact]
    public void ReadsBoolScalarAndEmpty()
    {
        var b = Npy.Read(fx.File("bool.npy"));
        Assert.Equal(DataType.Bool, b.DataType);
        Assert.Equal([1L, 0L, 1L], b.ToInt64s());

        var s = Npy.Read(fx.File("scalar.npy"));
        Assert.Empty(s.Shape);
        Assert.Equal(1, s.ElementCount);
        Assert.Equal([2.5f], s.ToFloats());

        var e = Npy.Read(fx.File("empty.npy"));
        Assert.Equal([0L, 3L], e.Shape);
        Assert.Empty(e.ToFloats());
    }

    [Theory]
    [InlineData("v1.npy")]
    [InlineData("v2.npy")]
    [InlineData("v3.npy")]
    public void ReadsHeaderVersions(string file)
    {
        var a = Npy.Read(fx.File(file));
        Assert.Equal([2L, 3L, 4L], a.Shape);
        var f = a.ToFloats();
        for (var i = 0; i < 24; i++)
            Assert.Equal(i / 8f, f[i]);
    }

    [Theory]
    [InlineData("fortran.npy", "Fortran-order")]
    [InlineData("object.npy", "object arrays")]
    [InlineData("complex.npy", "unsupported dtype '<c8'")]
    [InlineData("record.npy", "structured arrays")]
    public void RejectsUnsupportedArraysNamingFileAndReason(string file, string reason)
    {
        var ex = Assert.Throws<DataFormatException>(() => Npy.Read(fx.File(file)));
        Assert.Contains(file, ex.Message);
        Assert.Contains(reason, ex.Message);
    }

    [Fact]
    public void TruncatedDataIsReportedWithSizes()
    {
        var bytes = File.ReadAllBytes(fx.File("le_f4.npy"));
        var path = fx.Dir.File("truncated.npy");
        File.WriteAllBytes(path, bytes[..^3]);
        var ex = Assert.Throws<DataFormatException>(() => Npy.Read(path));
        Assert.Contains("truncated.npy", ex.Message);
        Assert.Contains("needs 24 bytes, found 21", ex.Message);
    }

    [Fact]
    public void TruncatedHeaderAndBadMagicAreReported()
    {
        var bytes = File.ReadAllBytes(fx.File("le_f4.npy"));
        var cut = fx.Dir.File("cut-header.npy");
        File.WriteAllBytes(cut, bytes[..30]);
        Assert.Contains("header", Assert.Throws<DataFormatException>(() => Npy.Read(cut)).Message);

        var bad = fx.Dir.File("bad-magic.npy");
        File.WriteAllBytes(bad, Encoding.ASCII.GetBytes("PK\u0003\u0004 this is not npy"));
        Assert.Contains("bad magic", Assert.Throws<DataFormatException>(() => Npy.Read(bad)).Message);

        var empty = fx.Dir.File("empty-file.npy");
        File.WriteAllBytes(empty, []);
        Assert.Contains("bad magic", Assert.Throws<DataFormatException>(() => Npy.Read(empty)).Message);
    }

    [Fact]
    public void MalformedHeaderIsReported()
    {
        using var ms = new MemoryStream();
        ms.Write([0x93, (byte)'N', (byte)'U', (byte)'M', (byte)'P', (byte)'Y', 1, 0]);
        var header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3 }\n";
        ms.Write([(byte)header.Length, 0]);
        ms.Write(Encoding.ASCII.GetBytes(header));
        ms.Position = 0;
        var ex = Assert.Throws<DataFormatException>(() => Npy.Read(ms, "x.npy"));
        Assert.Contains("x.npy: malformed .npy header", ex.Message);
    }

    [Fact]
    public void MissingFileIsFileNotFound()
    {
        Assert.Throws<FileNotFoundException>(() => Npy.Read(fx.Dir.File("nope.npy")));
    }

    [Fact]
    public void RoundTripThroughNumpyForEveryType()
    {
        var types = new[]
        {
            DataType.Float, DataType.Double, DataType.Float16, DataType.Int8, DataType.UInt8, DataType.Int16,
            DataType.UInt16, DataType.Int32, DataType.UInt32, DataType.Int64, DataType.UInt64, DataType.Bool,
        };
        var values = new[] { 0f, 1f, 0f, 1f, 1f, 0f };
        foreach (var t in types)
        {
            var floats = FromFloatsAs(t, values, [3, 2]);
            Npy.Write(fx.Dir.File($"rt_{t}.npy"), floats);
            var back = Npy.Read(fx.Dir.File($"rt_{t}.npy"));
            Assert.Equal(t, back.DataType);
            Assert.Equal(floats.Bytes.ToArray(), back.Bytes.ToArray());
        }
        // numpy reads what we wrote, with the dtype and values we meant.
        var output = PythonScript.Run("""
            import numpy as np
            for t, code in [('Float','<f4'),('Double','<f8'),('Float16','<f2'),('Int8','|i1'),('UInt8','|u1'),('Int16','<i2'),
                            ('UInt16','<u2'),('Int32','<i4'),('UInt32','<u4'),('Int64','<i8'),('UInt64','<u8'),('Bool','|b1')]:
                a = np.load(f'rt_{t}.npy')
                assert a.dtype.str == code, (t, a.dtype.str)
                assert a.shape == (3, 2), a.shape
                assert a.astype(np.float64).ravel().tolist() == [0, 1, 0, 1, 1, 0], (t, a)
            print('ok')
            """, fx.Dir.Path);
        Assert.Equal("ok", output.Trim());
    }

    [Fact]
    public void WriterAlignsDataTo64BytesAndIsDeterministic()
    {
        var a = NpyArray.FromFloats([1f, 2f, 3f], 3);
        using var m1 = new MemoryStream();
        using var m2 = new MemoryStream();
        Npy.Write(m1, a);
        Npy.Write(m2, a);
        Assert.Equal(m1.ToArray(), m2.ToArray());
        var headerEnd = m1.Length - 12;
        Assert.Equal(0, headerEnd % 64);
        Assert.Equal((byte)'\n', m1.ToArray()[headerEnd - 1]);
    }

    [Fact]
    public void SliceFirstAxisCopiesRows()
    {
        var a = NpyArray.FromFloats(Enumerable.Range(0, 12).Select(i => (float)i).ToArray(), 4, 3);
        var s = a.SliceFirstAxis(1, 2);
        Assert.Equal([2L, 3L], s.Shape);
        Assert.Equal([3f, 4f, 5f, 6f, 7f, 8f], s.ToFloats());
    }

    [Fact]
    public void ConstructorRejectsSizeMismatch()
    {
        var ex = Assert.Throws<ArgumentException>(() => new NpyArray(DataType.Float, [2, 2], new byte[12]));
        Assert.Contains("16 bytes expected", ex.Message);
    }

    private static NpyArray FromFloatsAs(DataType t, float[] values, long[] shape)
    {
        var size = DataTypes.BitWidth(t) / 8;
        var bytes = new byte[values.Length * size];
        for (var i = 0; i < values.Length; i++)
        {
            var span = bytes.AsSpan(i * size, size);
            switch (t)
            {
                case DataType.Float: BitConverter.TryWriteBytes(span, values[i]); break;
                case DataType.Double: BitConverter.TryWriteBytes(span, (double)values[i]); break;
                case DataType.Float16: BitConverter.TryWriteBytes(span, (Half)values[i]); break;
                default: span[0] = (byte)values[i]; break; // little-endian integers: value in the low byte
            }
        }
        return new NpyArray(t, shape, bytes);
    }
}

public sealed class NpzTests(NumpyFixtures fx) : IClassFixture<NumpyFixtures>
{
    [Fact]
    public void ReadsStoredArchiveInOrder()
    {
        var arrays = Npz.Read(fx.File("stored.npz"));
        Assert.Equal(["images", "labels", "mask"], arrays.Select(a => a.Name));
        Assert.Equal([2L, 3L, 4L], arrays[0].Array.Shape);
        Assert.Equal(23 / 8f, arrays[0].Array.ToFloats()[23]);
        Assert.Equal([3L, 1L], arrays[1].Array.ToInt64s());
        Assert.Equal(DataType.Bool, arrays[2].Array.DataType);
    }

    [Fact]
    public void ReadsDeflatedArchive()
    {
        var arrays = Npz.Read(fx.File("deflated.npz"));
        Assert.Equal(["zeta", "alpha"], arrays.Select(a => a.Name));
        Assert.Equal([0L, 1L, 2L, 3L, 4L], arrays[1].Array.ToInt64s());
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void WritesArchivesNumpyReadsAndBytesAreDeterministic(bool compress)
    {
        var arrays = new List<NamedArray>
        {
            new("b", NpyArray.FromFloats([1.5f, -2f, 3f, 4f], 2, 2)),
            new("a", NpyArray.FromInt64s([7, 8, 9], 3)),
        };
        var p1 = fx.Dir.File($"w1_{compress}.npz");
        var p2 = fx.Dir.File($"w2_{compress}.npz");
        Npz.Write(p1, arrays, compress);
        Thread.Sleep(1100); // a timestamp taken from the clock would differ now
        Npz.Write(p2, arrays, compress);
        Assert.Equal(File.ReadAllBytes(p1), File.ReadAllBytes(p2));

        var back = Npz.Read(p1);
        Assert.Equal(["b", "a"], back.Select(a => a.Name));
        Assert.Equal([1.5f, -2f, 3f, 4f], back[0].Array.ToFloats());

        var output = PythonScript.Run($$"""
            import numpy as np
            z = np.load('w1_{{compress}}.npz')
            assert list(z.keys()) == ['b', 'a'], list(z.keys())
            assert z['b'].tolist() == [[1.5, -2.0], [3.0, 4.0]]
            assert z['a'].dtype == np.int64 and z['a'].tolist() == [7, 8, 9]
            print('ok')
            """, fx.Dir.Path);
        Assert.Equal("ok", output.Trim());
    }

    [Fact]
    public void NotAZipIsReported()
    {
        var ex = Assert.Throws<DataFormatException>(() => Npz.Read(fx.File("le_f4.npy")));
        Assert.Contains("le_f4.npy: not an .npz file", ex.Message);
    }

    [Fact]
    public void CorruptEntryNamesArchiveAndEntry()
    {
        var bytes = File.ReadAllBytes(fx.File("stored.npz"));
        // Overwrite the first entry's npy magic (stored entries hold the raw .npy bytes right after the local header).
        var at = bytes.AsSpan().IndexOf("NUMPY"u8);
        bytes[at] = (byte)'X';
        var path = fx.Dir.File("corrupt.npz");
        File.WriteAllBytes(path, bytes);
        var ex = Assert.Throws<DataFormatException>(() => Npz.Read(path));
        Assert.Contains("corrupt.npz:images.npy", ex.Message);
    }
}

/// <summary>Only the arrays a caller names are decompressed: an unused entry costs nothing, even a broken one.</summary>
public sealed class NpzSelectiveReadTests
{
    [Fact]
    public void UnwantedEntriesAreListedButNeverDecoded()
    {
        var path = Path.Combine(Path.GetTempPath(), $"onnxquant-npz-{Guid.NewGuid():N}.npz");
        try
        {
            using (var stream = File.Create(path))
            using (var zip = new System.IO.Compression.ZipArchive(stream, System.IO.Compression.ZipArchiveMode.Create))
            {
                using (var x = zip.CreateEntry("x.npy").Open())
                    Npy.Write(x, NpyArray.FromFloats([1f, 2f, 3f], 3));
                // Not an .npy at all: decoding it fails, so reading it would show.
                using (var junk = zip.CreateEntry("junk.npy", System.IO.Compression.CompressionLevel.Optimal).Open())
                    junk.Write(new byte[1 << 20]);
            }
            Assert.Throws<DataFormatException>(() => Npz.Read(path));
            var arrays = Npz.Read(path, name => name == "x", out var names);
            Assert.Equal(["x", "junk"], names);
            var only = Assert.Single(arrays);
            Assert.Equal("x", only.Name);
            Assert.Equal([1f, 2f, 3f], only.Array.ToFloats());
        }
        finally
        {
            File.Delete(path);
        }
    }
}
