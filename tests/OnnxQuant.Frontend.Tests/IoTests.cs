using Google.Protobuf;
using OnnxQuant.Frontend.Proto;

namespace OnnxQuant.Frontend.Tests;

public class IoTests
{
    [Fact]
    public void UnknownAndUnmodeledFieldsSurviveARoundTrip()
    {
        var proto = new ModelProto();
        proto.MergeFrom(ModelIO.ToBytes(TestModels.ConvRelu()));
        proto.TrainingInfo.Add(new TrainingInfoProto { Algorithm = new GraphProto { Name = "train" } });
        proto.Graph.Node[0].DeviceConfigurations.Add(new NodeDeviceConfigurationProto { ConfigurationId = "two-gpus" });
        // Field 99 of a node and field 77 of a tensor are unknown to the schema: they must come back unchanged.
        var unknownNodeField = new byte[] { 0x9A, 0x06, 0x03, (byte)'a', (byte)'b', (byte)'c' }; // field 99, bytes "abc"
        var unknownTensorField = new byte[] { 0xE8, 0x04, 0x2A }; // field 77, varint 42
        var bytes = proto.ToByteArray();
        var withUnknown = new ModelProto();
        withUnknown.MergeFrom(bytes);
        withUnknown.Graph.Node[1].MergeFrom(unknownNodeField);
        withUnknown.Graph.Initializer[0].MergeFrom(unknownTensorField);

        var model = ModelIO.Load(withUnknown.ToByteArray());
        var written = ModelProto.Parser.ParseFrom(ModelIO.ToBytes(model));
        Assert.Equal("train", written.TrainingInfo.Single().Algorithm.Name);
        Assert.Equal("two-gpus", written.Graph.Node[0].DeviceConfigurations.Single().ConfigurationId);
        Assert.EndsWith(Convert.ToHexString(unknownNodeField), Convert.ToHexString(written.Graph.Node[1].ToByteArray()));
        Assert.EndsWith(Convert.ToHexString(unknownTensorField), Convert.ToHexString(written.Graph.Initializer[0].ToByteArray()));
    }

    [Fact]
    public void SaveIsAtomicDeterministicAndLeavesNoTemporaryFiles()
    {
        var dir = TestModels.TempDir();
        try
        {
            var path = Path.Combine(dir, "m.onnx");
            var model = TestModels.ConvRelu();
            ModelIO.Save(model, path);
            var first = File.ReadAllBytes(path);
            ModelIO.Save(ModelIO.Load(path), path);
            Assert.Equal(first, File.ReadAllBytes(path));
            Assert.Equal(["m.onnx"], Directory.GetFiles(dir).Select(Path.GetFileName));
            Assert.Throws<FrontendException>(() => ModelIO.Save(model, Path.Combine(dir, "no", "such", "m.onnx")));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void ExternalDataIsLazyAndSmallTensorsStayEmbedded()
    {
        var dir = TestModels.TempDir();
        try
        {
            var path = Path.Combine(dir, "m.onnx");
            ModelIO.Save(TestModels.ConvRelu(), path, new SaveOptions { ExternalData = ExternalDataMode.Always, MinExternalTensorBytes = 100 });
            var model = ModelIO.Load(path);
            var w = model.Graph.FindInitializer("w")!.Initializer!;
            var b = model.Graph.FindInitializer("b")!.Initializer!;
            Assert.False(w.IsLoaded);
            Assert.Equal("m.onnx.data", w.External!.Location);
            Assert.True(b.IsLoaded);
            Assert.Null(b.External);
            Assert.Equal(0.07f, w.ToFloatArray()[7]);
            Assert.True(w.IsLoaded);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void ExternalDataThroughASymbolicLinkOutOfTheFolderIsRefused()
    {
        var dir = TestModels.TempDir();
        var outside = TestModels.TempDir();
        try
        {
            var path = Path.Combine(dir, "m.onnx");
            ModelIO.Save(TestModels.ConvRelu(), path, new SaveOptions { ExternalData = ExternalDataMode.Always, MinExternalTensorBytes = 100 });
            File.Move(path + ".data", Path.Combine(outside, "secret.data"));
            File.CreateSymbolicLink(path + ".data", Path.Combine(outside, "secret.data"));
            var error = Assert.Throws<FrontendException>(() => ModelIO.Load(path));
            Assert.Contains("leaves the model's folder", error.Message);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
            Directory.Delete(outside, recursive: true);
        }
    }

    [Fact]
    public void ExternalDataShorterThanItsTensorIsRefused()
    {
        var dir = TestModels.TempDir();
        try
        {
            var path = Path.Combine(dir, "m.onnx");
            ModelIO.Save(TestModels.ConvRelu(), path, new SaveOptions { ExternalData = ExternalDataMode.Always, MinExternalTensorBytes = 0 });
            using (var data = new FileStream(path + ".data", FileMode.Open)) data.SetLength(100);
            var error = Assert.Throws<FrontendException>(() => ModelIO.Load(path));
            Assert.Contains("which has only 100 bytes", error.Message);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
