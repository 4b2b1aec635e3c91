using System.Text.RegularExpressions;
using System.Xml.Linq;

namespace OnnxQuant.Passes.Tests.Compile;

/// <summary>
/// The compile stages depend on each other in one direction only: each stage folder of src/Passes may use the
/// namespaces listed for it below and no others, and the projects reference each other as the design says. A new
/// dependency is a decision, so it is made here, not by accident.
/// </summary>
public sealed class StageDependencyTests
{
    private static readonly Dictionary<string, string[]> Allowed = new()
    {
        ["Pipeline"] = [],
        ["Quantization"] = ["Pipeline"],
        ["Canonicalize"] = ["Pipeline"],
        ["Calibration"] = ["Pipeline", "Quantization"],
        ["Measurement"] = ["Pipeline", "Calibration"],
        ["Load"] = ["Pipeline", "Calibration"],
        ["Units"] = ["Pipeline", "Quantization", "Canonicalize"],
        ["Curves"] = ["Pipeline", "Quantization", "Canonicalize", "Calibration", "Measurement", "Units", "Rewrite"],
        ["Allocate"] = ["Pipeline", "Units"],
        ["Rewrite"] = ["Pipeline", "Quantization", "Canonicalize", "Calibration", "Units", "Allocate"],
        // Scaling prices candidates with the rewrite's weight quantizer and storage options.
        ["Smoothing"] = ["Pipeline", "Quantization", "Canonicalize", "Calibration", "Units", "Rewrite"],
        ["Verify"] = ["Pipeline", "Quantization", "Calibration", "Measurement", "Rewrite"],
        // The report shows what verification measured (the uniform baseline) and what the scaling did.
        ["Artifact"] = ["Pipeline", "Units", "Curves", "Allocate", "Rewrite", "Verify", "Smoothing"],
        ["Guards"] = ["Pipeline", "Artifact", "Allocate"],
        ["Compile"] = ["Pipeline", "Quantization", "Canonicalize", "Calibration", "Measurement", "Load", "Units", "Curves",
            "Allocate", "Rewrite", "Verify", "Artifact", "Guards", "Smoothing"],
    };

    private static readonly Dictionary<string, string[]> ProjectReferences = new()
    {
        ["Solvers"] = [],
        ["Frontend"] = [],
        ["Runtime"] = ["Frontend"],
        ["Data"] = ["Frontend"],
        ["Evaluation"] = ["Data", "Frontend", "Runtime"],
        ["Passes"] = ["Data", "Evaluation", "Frontend", "Runtime", "Solvers"],
    };

    [Fact]
    public void EveryStageFolderUsesOnlyTheStagesBeneathIt()
    {
        var passes = Path.Combine(RepoPaths.Root, "src", "Passes");
        var folders = Directory.GetDirectories(passes).Select(Path.GetFileName).Where(f => f is not ("bin" or "obj")).ToList();
        Assert.Equal(Allowed.Keys.Order(), folders.Order()!);
        var reference = new Regex(@"OnnxQuant\.Passes\.(\w+)", RegexOptions.CultureInvariant);
        var violations = new List<string>();
        foreach (var folder in folders)
            foreach (var file in Directory.GetFiles(Path.Combine(passes, folder!), "*.cs", SearchOption.AllDirectories))
                foreach (Match m in reference.Matches(File.ReadAllText(file)))
                {
                    var used = m.Groups[1].Value;
                    if (used != folder && Allowed.ContainsKey(used) && !Allowed[folder!].Contains(used))
                        violations.Add($"{Path.GetRelativePath(passes, file)} uses {used}");
                }
        Assert.True(violations.Count == 0, "stage dependencies against the allowed direction:\n" + string.Join("\n", violations.Distinct()));
    }

    [Fact]
    public void ProjectsReferenceEachOtherInOneDirection()
    {
        var src = Path.Combine(RepoPaths.Root, "src");
        foreach (var (project, allowed) in ProjectReferences)
        {
            var csproj = XDocument.Load(Path.Combine(src, project, $"OnnxQuant.{project}.csproj"));
            var references = csproj.Descendants("ProjectReference")
                .Select(r => Path.GetFileNameWithoutExtension((string)r.Attribute("Include")!).Replace("OnnxQuant.", ""))
                .Order().ToList();
            Assert.Equal(allowed.Order(), references);
        }
    }
}
