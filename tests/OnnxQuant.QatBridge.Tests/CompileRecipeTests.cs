using OnnxQuant.QatBridge;

namespace OnnxQuant.QatBridge.Tests;

public class CompileRecipeTests
{
    [Theory]
    // Scope names as torch.onnx.export writes them: container children repeat the parent's name as a prefix.
    [InlineData("/model/backbone/stages/stages.0/stages.0.0/conv1/Conv", "model.backbone.stages.0.0.conv1")]
    [InlineData("/model/decoder.0/self_attn/q_proj/MatMul", "model.decoder.0.self_attn.q_proj")]
    [InlineData("/model/box_heads.2/layers.1/MatMul", "model.box_heads.2.layers.1")]
    [InlineData("/backbone/body/layer1/layer1.0/conv1/Conv", "backbone.body.layer1.0.conv1")]
    [InlineData("/fc/Gemm", "fc")]
    // Exporters without scopes name nodes freely; a weight-style name loses its ".weight".
    [InlineData("conv_17", "conv_17")]
    [InlineData("encoder.layer.0.attention.query.weight", "encoder.layer.0.attention.query")]
    public void ModulePathFollowsTheExportScopes(string nodeName, string expected) =>
        Assert.Equal(expected, CompileRecipe.ModulePath(nodeName));

    [Fact]
    public void AScopeWithoutModulesKeepsTheNodeName() =>
        Assert.Equal("/MatMul", CompileRecipe.ModulePath("/MatMul"));
}
