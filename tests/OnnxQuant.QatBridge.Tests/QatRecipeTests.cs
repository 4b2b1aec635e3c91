using System.Text;

namespace OnnxQuant.QatBridge.Tests;

public class QatRecipeTests
{
    private static QatRecipe Sample() => QatRecipe.FromAllocation("detr_small.onnx", BitWidths.Parse("4-4-8"),
        [
            new LayerRecipe("input_proj", 2, 8, [0.5f, 0.125f, 1e-3f], new ActivationRange(-1.5f, 3.25f)),
            new LayerRecipe("backbone.stages.0.0.conv1", 3, 4),
        ],
        ["class_heads", "backbone.stem.0"]);

    [Fact]
    public void Round_trip_keeps_every_field_and_sorts_layers()
    {
        using var dir = new TempDir();
        var recipe = Sample();
        QatRecipeJson.Write(recipe, dir.File("r.json"));
        var back = QatRecipeJson.Read(dir.File("r.json"));
        Assert.Equal(recipe.Defaults, back.Defaults);
        Assert.Equal(["backbone.stages.0.0.conv1", "input_proj"], back.Layers.Select(l => l.Name));
        Assert.Equal([0.5f, 0.125f, 1e-3f], back.Layer("input_proj")!.WeightScales!);
        Assert.Equal(new ActivationRange(-1.5f, 3.25f), back.Layer("input_proj")!.ActRange);
        Assert.Equal(["backbone.stem.0", "class_heads"], back.FloatLayers);
        Assert.Equal(RecipeSource.Allocation, back.Source);
        Assert.Equal(QatRecipeJson.Serialize(recipe), QatRecipeJson.Serialize(back)); // byte-identical
    }

    [Fact]
    public void Revision_two_carries_the_artifact_grid_and_revision_one_files_stay_as_they_were()
    {
        using var dir = new TempDir();
        var recipe = QatRecipe.FromAllocation("m.onnx", new BitWidths(4, 8, BitWidths.FloatBits),
            [
                new LayerRecipe("a", 4, 8, [0.5f, 0.25f], ActScale: 0.0125f, ActZeroPoint: 131),
                new LayerRecipe("b", 2, BitWidths.FloatBits, [0.75f]),
            ], revision: 2);
        QatRecipeJson.Write(recipe, dir.File("r.json"));
        var text = File.ReadAllText(dir.File("r.json"));
        Assert.Contains("\"revision\": 2", text);
        var back = QatRecipeJson.Read(dir.File("r.json"));
        Assert.Equal(2, back.Revision);
        Assert.Equal((0.0125f, 131), (back.Layer("a")!.ActScale!.Value, back.Layer("a")!.ActZeroPoint!.Value));
        Assert.Equal(BitWidths.FloatBits, back.Layer("b")!.ActBits);
        Assert.Equal(BitWidths.FloatBits, back.Defaults.Attention);
        Assert.Equal(QatRecipeJson.Serialize(recipe), QatRecipeJson.Serialize(back));
        // A revision-1 recipe is written without the field, byte for byte as before, and reads as revision 1.
        var old = QatRecipeJson.Serialize(Sample());
        Assert.DoesNotContain("revision", Encoding.UTF8.GetString(old));
        Assert.Equal(1, QatRecipeJson.Parse(old).Revision);
    }

    [Theory]
    [InlineData("4-4", "W-A-Attention")]
    [InlineData("4-1-8", "act_bits is 1")]
    [InlineData("a-b-c", "W-A-Attention")]
    public void Bad_bits_are_refused_with_the_reason(string spec, string expected)
    {
        var e = Assert.Throws<QatBridgeException>(() => BitWidths.Parse(spec));
        Assert.Contains(expected, e.Message);
    }

    [Theory]
    [InlineData("""{"schema":"other/1"}""", "schema is 'other/1'")]
    [InlineData("""{"schema":"onnxquant.qat-recipe/1","layers":[]}""", "missing field 'defaults'")]
    [InlineData("""{"schema":"onnxquant.qat-recipe/1","defaults":{"weight_bits":4,"act_bits":4,"attention_bits":8},"layers":[{"name":"a","weight_bits":4,"act_bits":4},{"name":"a","weight_bits":2,"act_bits":4}]}""", "appears twice")]
    [InlineData("""{"schema":"onnxquant.qat-recipe/1","defaults":{"weight_bits":4,"act_bits":4,"attention_bits":8},"layers":[{"name":"a","weight_bits":4,"act_bits":4,"weight_scales":[0.5,-1]}]}""", "weight_scales[1]")]
    [InlineData("""{"schema":"onnxquant.qat-recipe/1","defaults":{"weight_bits":4,"act_bits":4.5,"attention_bits":8},"layers":[]}""", "expected an integer")]
    [InlineData("""{"schema": """, "not valid JSON")]
    [InlineData("""{"schema":"onnxquant.qat-recipe/1","revision":3,"defaults":{"weight_bits":4,"act_bits":8,"attention_bits":8},"layers":[]}""", "revision is 3")]
    [InlineData("""{"schema":"onnxquant.qat-recipe/1","defaults":{"weight_bits":4,"act_bits":8,"attention_bits":8},"layers":[{"name":"a","weight_bits":4,"act_bits":8,"act_scale":0.1}]}""", "come together")]
    [InlineData("""{"schema":"onnxquant.qat-recipe/1","defaults":{"weight_bits":4,"act_bits":8,"attention_bits":8},"layers":[{"name":"a","weight_bits":4,"act_bits":8,"act_scale":0.1,"act_zero_point":256}]}""", "act_zero_point 256")]
    public void Malformed_recipes_name_the_file_and_field(string json, string expected)
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("bad.json"), json);
        var e = Assert.Throws<QatBridgeException>(() => QatRecipeJson.Read(dir.File("bad.json")));
        Assert.Contains(expected, e.Message);
        Assert.StartsWith(dir.File("bad.json"), e.Message);
    }

    [Fact]
    public void Layer_names_come_from_weight_names()
    {
        Assert.Equal("decoder.0.ffn.linear1", QatRecipe.LayerNameFromWeight("decoder.0.ffn.linear1.weight"));
        Assert.Equal("onnx::MatMul_12", QatRecipe.LayerNameFromWeight("onnx::MatMul_12"));
    }

    [Fact]
    public void The_python_trainer_reads_what_csharp_writes()
    {
        using var dir = new TempDir();
        QatRecipeJson.Write(Sample(), dir.File("r.json"));
        var printed = Repo.RunPython("-c",
            "import sys; from onnxquant_qat.recipe import Recipe; r = Recipe.load(sys.argv[1]); " +
            "l = r.layer('input_proj'); print(r.label, l.weight_bits, l.act_bits, l.weight_scales[2], l.act_range.max, " +
            "r.is_float('class_heads.0'), r.source)", dir.File("r.json"));
        Assert.Equal("4-4-8 2 8 0.001 3.25 True allocation", printed.Trim());
    }
}
