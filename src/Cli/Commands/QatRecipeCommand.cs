using System.CommandLine;
using OnnxQuant.QatBridge;

namespace OnnxQuant.Cli;

/// <summary>`onnxquant qat-recipe`: writes a uniform QAT recipe (W-A-Attention bits, layers kept float, per-layer
/// overrides). Per-layer bits and calibrated scales from an allocation come from `compile --emit-qat-recipe`.</summary>
internal static class QatRecipeCommand
{
    public static Command Create()
    {
        var bits = new Option<string>("--bits")
        {
            Description = "W-A-Attention bits, e.g. 4-4-8 (weights, activations, attention q/k/v/softmax)",
            DefaultValueFactory = _ => "4-4-8",
        };
        var floats = new Option<string[]>("--float")
        {
            Description = "A layer (module path, or a prefix of one) that stays float; repeatable",
            AllowMultipleArgumentsPerToken = true,
        };
        var layers = new Option<string[]>("--layer")
        {
            Description = "Per-layer override NAME=W/A, e.g. input_proj=8/8; repeatable",
            AllowMultipleArgumentsPerToken = true,
        };
        var model = new Option<string>("--model") { Description = "The float model the recipe is for (recorded in the recipe)" };
        var output = new Option<string>("--output", "-o") { Description = "Recipe file to write (JSON)", Required = true };
        var command = new Command("qat-recipe", "Write a QAT recipe (onnxquant.qat-recipe/1) for the PyTorch Q-DETR trainer")
        {
            bits, floats, layers, model, output,
        };
        command.SetAction(parse =>
        {
            var widths = BitWidths.Parse(parse.GetValue(bits)!);
            var overrides = (parse.GetValue(layers) ?? []).Select(ParseOverride).ToList();
            var floatLayers = parse.GetValue(floats) ?? [];
            var source = parse.GetValue(model) ?? "";
            var recipe = overrides.Count == 0
                ? QatRecipe.Uniform(widths, floatLayers, source)
                : QatRecipe.FromAllocation(source, widths, overrides, floatLayers);
            var path = parse.GetValue(output)!;
            OnnxQuant.Passes.Artifact.OutputFolder.CheckFileOutput("-o", path,
                parse.GetValue(model) is { Length: > 0 } m ? [new("model", m)] : []);
            QatRecipeJson.Write(recipe, path);
            parse.InvocationConfiguration.Output.WriteLine(
                $"wrote {path}: {widths} ({recipe.Layers.Count} layer overrides, {recipe.FloatLayers.Count} float)");
            return ExitCodes.Ok;
        });
        return command;
    }

    private static LayerRecipe ParseOverride(string text)
    {
        var eq = text.LastIndexOf('=');
        var slash = eq < 0 ? -1 : text.IndexOf('/', eq);
        if (eq <= 0 || slash < 0 || !int.TryParse(text[(eq + 1)..slash], out var w) || !int.TryParse(text[(slash + 1)..], out var a))
            throw new QatBridgeException($"--layer '{text}' must be NAME=W/A, e.g. input_proj=8/8");
        return new LayerRecipe(text[..eq], w, a);
    }
}
