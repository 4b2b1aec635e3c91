using OnnxQuant.Frontend;

namespace OnnxQuant.Passes.Pipeline;

/// <summary>What a pass did: whether it changed the model and how many rewrites it made.</summary>
public sealed record PassResult(bool Modified, int Rewrites)
{
    public static PassResult Unchanged { get; } = new(false, 0);

    public static PassResult Changed(int rewrites) => rewrites > 0 ? new(true, rewrites) : Unchanged;

    /// <summary>Layers the pass took out of the graph (their computation folded away), each with why.</summary>
    public IReadOnlyList<RemovedLayer> RemovedLayers { get; init; } = [];
}

/// <summary>A Conv, ConvTranspose, Gemm or MatMul a pass took out of the graph, and why: the report lists it with the
/// layers left float.</summary>
public sealed record RemovedLayer(string Name, string OpType, string Reason);

/// <summary>
/// A transformation of a model in place. Validate, then mutate: a pass that refuses throws before changing anything
/// (<see cref="CompileException"/> for problems of the user's model, anything else is a bug).
/// </summary>
public interface IPass
{
    /// <summary>Stable name, used in messages and reports.</summary>
    string Name { get; }

    PassResult Run(Model model);
}

/// <summary>One pass run by the <see cref="PassManager"/> and its result.</summary>
public sealed record PassRecord(string Pass, PassResult Result);

/// <summary>A pass failed for a reason that is not the user's input (a bug); names the passes that ran before it.</summary>
public sealed class PassFailedException(string pass, IReadOnlyList<string> alreadyRun, Exception inner)
    : Exception($"pass '{pass}' failed after [{string.Join(", ", alreadyRun)}]: {inner.Message}", inner)
{
    public string Pass { get; } = pass;
    public IReadOnlyList<string> AlreadyRun { get; } = alreadyRun;
}

/// <summary>
/// Runs passes in order, repeating the whole sequence until no pass modifies the model (at most
/// <see cref="MaxRounds"/> rounds), and records every run. When a pass throws, the error names the passes already run.
/// </summary>
public sealed class PassManager(IReadOnlyList<IPass> passes, int maxRounds = 4)
{
    public int MaxRounds { get; } = maxRounds;

    public IReadOnlyList<PassRecord> Run(Model model)
    {
        var records = new List<PassRecord>();
        for (var round = 0; round < MaxRounds; round++)
        {
            var modified = false;
            foreach (var pass in passes)
            {
                PassResult result;
                try
                {
                    result = pass.Run(model);
                }
                catch (Exception ex) when (ex is CompileException or FrontendException)
                {
                    var done = records.Select(r => r.Pass).ToList();
                    throw new CompileException($"{ex.Message} (in pass '{pass.Name}', after [{string.Join(", ", done)}])", ex);
                }
                catch (Exception ex)
                {
                    throw new PassFailedException(pass.Name, records.Select(r => r.Pass).ToList(), ex);
                }
                records.Add(new PassRecord(pass.Name, result));
                modified |= result.Modified;
            }
            if (!modified)
                break;
        }
        return records;
    }
}
