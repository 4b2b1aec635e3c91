// OnnxQuant build script. `dotnet tool restore && dotnet cake --target=<task>`; every task installs what it needs.
var target = Argument("target", "test");
var configuration = Argument("configuration", "Release");

// ONNX Runtime needs no set-up task: the official NuGet packages (version in Directory.Build.props) bring the native
// library with every build; `-p:OnnxQuantCuda=true` swaps in the CUDA build.

// Debian packages: the ONNX backend test suite for conformance tests, PyTorch and ONNX for models/ and the QAT
// bridge, OpenBLAS because Debian's torch is about 10x slower on the reference BLAS, chromium for the report.html tests
// (Playwright drives /usr/bin/chromium; it cannot download its own browser here).
var debianPackages = new[]
{
    "libonnx-testdata", "python3-torch", "python3-torchvision", "python3-onnx", "python3-numpy", "python3-scipy",
    "python3-pytest", "python3-pip", "python3-setuptools", "python3-wheel", "libopenblas0-pthread", "chromium",
};

// The two Python packages of this repository, installed in editable mode into Debian's interpreter (task setup-python).
var pythonPackages = new[] { "models", "src/QatBridge/python" };

int Run(string tool, string arguments, string workingDirectory = null, bool check = true)
{
    var settings = new ProcessSettings { Arguments = arguments };
    if (workingDirectory != null)
        settings.WorkingDirectory = workingDirectory;
    var code = StartProcess(tool, settings);
    if (check && code != 0)
        throw new Exception($"'{tool} {arguments}' failed with exit code {code}");
    return code;
}

Task("setup-debian")
    .Description("Installs the Debian packages the tests and models need (only the missing ones)")
    .Does(() =>
{
    var missing = debianPackages.Where(p => Run("bash", $"-c \"dpkg -s {p} >/dev/null 2>&1\"", check: false) != 0).ToList();
    if (missing.Count == 0)
    {
        Information("Debian packages: all present");
        return;
    }
    Information($"Installing Debian packages: {string.Join(" ", missing)}");
    Run("apt-get", "update -qq");
    Run("bash", $"-c \"DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {string.Join(" ", missing)} >/dev/null\"");
});

Task("setup-python")
    .Description("Installs onnxquant_models (models/) and onnxquant_qat (src/QatBridge/python) into Debian's Python in editable mode")
    .IsDependentOn("setup-debian")
    .Does(() =>
{
    // Offline and idempotent: Debian's setuptools (>= 64, PEP 660) builds both editable wheels without a build
    // environment or dependency resolution (the dependencies are Debian packages). Rerunning replaces the install, so
    // it always points at this checkout. Installs into /usr/local/lib/python3.*/dist-packages.
    var editable = string.Join(" ", pythonPackages.Select(p => $"-e \"{System.IO.Path.GetFullPath(p)}\""));
    Run("/usr/bin/python3", "-m pip install --quiet --no-index --no-build-isolation --no-deps --break-system-packages " +
        "--disable-pip-version-check --root-user-action=ignore " + editable);
    Information("Python packages: onnxquant_models and onnxquant_qat installed (editable)");
});

Task("setup")
    .IsDependentOn("setup-debian")
    .IsDependentOn("setup-python");

Task("build")
    .Does(() =>
{
    DotNetBuild("OnnxQuant.sln", new DotNetBuildSettings { Configuration = configuration });
});

Task("test-dotnet")
    .IsDependentOn("setup")
    .IsDependentOn("build")
    .Does(() =>
{
    var results = System.IO.Path.GetFullPath("artifacts/test-results");
    if (System.IO.Directory.Exists(results))
        System.IO.Directory.Delete(results, true);
    Exception failure = null;
    try
    {
        DotNetTest("OnnxQuant.sln", new DotNetTestSettings
        {
            Configuration = configuration,
            NoBuild = true,
            ResultsDirectory = results,
            Loggers = new[] { "console;verbosity=minimal", "trx" },
        });
    }
    catch (Exception ex)
    {
        failure = ex;
    }
    // One closing line over all test projects, so a reader (or CI) sees the total at a glance.
    long passed = 0, failed = 0, skipped = 0;
    foreach (var trx in System.IO.Directory.Exists(results) ? System.IO.Directory.GetFiles(results, "*.trx", System.IO.SearchOption.AllDirectories) : Array.Empty<string>())
    {
        var counters = System.Xml.Linq.XDocument.Load(trx).Descendants().FirstOrDefault(e => e.Name.LocalName == "Counters");
        if (counters == null)
            continue;
        long Count(string name) => long.TryParse((string)counters.Attribute(name), out var v) ? v : 0;
        passed += Count("passed");
        failed += Count("failed") + Count("error") + Count("timeout") + Count("aborted");
        skipped += Count("notExecuted");
    }
    // Plain Console: Cake would colour the numbers, and the line must read the same on a terminal and in a log.
    Console.WriteLine($"xunit: {passed} passed, {failed} failed, {skipped} skipped");
    if (failure != null)
        throw failure;
    if (passed == 0)
        throw new Exception("no xunit test ran");
});

Task("test-python")
    .IsDependentOn("setup")
    .Does(() =>
{
    // Debian's interpreter has torch and onnx; a python3 earlier on PATH may not.
    var suites = new[] { "models/tests", "src/QatBridge/python/tests" };
    var missing = suites.Where(s => !System.IO.Directory.Exists(s)).ToList();
    if (missing.Count > 0)
        throw new Exception($"pytest suite folder missing: {string.Join(", ", missing)}");
    var env = new Dictionary<string, string>
    {
        ["OPENBLAS_NUM_THREADS"] = "1",
        ["LD_LIBRARY_PATH"] = "/usr/lib/x86_64-linux-gnu/openblas-pthread",
    };
    // One pytest process per suite: each has its own conftest.py, and two top-level conftest modules cannot share
    // one process. Every suite runs even when an earlier one fails, so one run shows all failures.
    var failed = new List<string>();
    foreach (var suite in suites)
    {
        var code = StartProcess("/usr/bin/python3", new ProcessSettings
        {
            Arguments = $"-m pytest -q {suite}",
            EnvironmentVariables = env,
        });
        if (code != 0)
            failed.Add($"{suite} (exit code {code})");
    }
    if (failed.Count > 0)
        throw new Exception($"pytest failed: {string.Join(", ", failed)}");
});

Task("pack")
    .Description("Packs the onnxquant dotnet tool for linux-x64 (with its ONNX Runtime library) into artifacts/packages")
    .Does(() =>
{
    var output = System.IO.Path.GetFullPath("artifacts/packages");
    if (System.IO.Directory.Exists(output))
        System.IO.Directory.Delete(output, true);
    DotNetPack("src/Cli/OnnxQuant.Cli.csproj", new DotNetPackSettings { Configuration = configuration, OutputDirectory = output });
});

Task("test-tool")
    .Description("Installs the packed tool into a temporary tool path, as a user would, and compiles the bundled example with it")
    .IsDependentOn("pack")
    .Does(() =>
{
    var temp = System.IO.Path.Combine(System.IO.Path.GetTempPath(), $"onnxquant-tool-{Guid.NewGuid():N}");
    var tools = System.IO.Path.Combine(temp, "tools");
    var output = System.IO.Path.Combine(temp, "out");
    System.IO.Directory.CreateDirectory(temp);
    try
    {
        // Only the packed folder as a source: a package of the same name elsewhere must not be installed instead.
        var config = System.IO.Path.Combine(temp, "nuget.config");
        System.IO.File.WriteAllText(config, "<configuration><packageSources><clear /><add key=\"packed\" value=\""
            + System.IO.Path.GetFullPath("artifacts/packages") + "\" /></packageSources></configuration>");
        Run("dotnet", $"tool install --tool-path \"{tools}\" --configfile \"{config}\" OnnxQuant");
        // No ONNXQUANT_ORT_LIB and an empty HOME: the tool must bring everything it needs.
        var code = StartProcess(System.IO.Path.Combine(tools, "onnxquant"), new ProcessSettings
        {
            Arguments = "compile models/fixtures/detr_small.onnx --calib models/data/calib.npz --target-bits 8 "
                + $"--curves-file tests/OnnxQuant.Solvers.Tests/data/detr_small.curves.json -o \"{output}\"",
            EnvironmentVariables = new Dictionary<string, string> { ["ONNXQUANT_ORT_LIB"] = "", ["HOME"] = temp, ["XDG_CACHE_HOME"] = "" },
        });
        if (code != 0)
            throw new Exception($"the installed onnxquant compile exited with {code}");
        foreach (var file in new[] { "model.onnx", "report.json", "manifest.json" })
        {
            var path = System.IO.Path.Combine(output, file);
            if (!System.IO.File.Exists(path) || new System.IO.FileInfo(path).Length == 0)
                throw new Exception($"the installed onnxquant compile did not write {path}");
        }
        Information($"installed tool: compile exit 0, wrote model.onnx, report.json, manifest.json ({output})");
    }
    finally
    {
        System.IO.Directory.Delete(temp, true);
    }
});

Task("test")
    .Description("Every test: the installed tool, xunit for the C# projects, pytest for models/ and the QAT bridge")
    .IsDependentOn("test-tool")
    .IsDependentOn("test-dotnet")
    .IsDependentOn("test-python");

Task("models")
    .Description("Regenerates the reference data, trains the small models and exports every model (models/build_all.py)")
    .IsDependentOn("setup-python")
    .Does(() =>
{
    // Debian's interpreter has torch and onnx; OpenBLAS makes its CPU maths about 10x faster than the reference BLAS.
    // One BLAS thread keeps training reproducible. Extra arguments: --models-steps=data,detr,maskrcnn,export,full
    var steps = Argument("models-steps", "");
    var env = new Dictionary<string, string>
    {
        ["LD_LIBRARY_PATH"] = "/usr/lib/x86_64-linux-gnu/openblas-pthread",
        ["OPENBLAS_NUM_THREADS"] = "1",
    };
    var code = StartProcess("/usr/bin/python3", new ProcessSettings
    {
        Arguments = "models/build_all.py" + (string.IsNullOrEmpty(steps) ? "" : $" --steps {steps}"),
        EnvironmentVariables = env,
    });
    if (code != 0)
        throw new Exception($"models/build_all.py failed with exit code {code}");
});

Task("example")
    .Description("Compiles the bundled example (small DETR) at 8, 4 and 3 bits from one calibration, prints the summary and writes out/example/report.html")
    .IsDependentOn("setup")
    .IsDependentOn("build")
    .Does(() =>
{
    // One compile measures the curves once and writes out/example/bits-{8,4,3}; the curve cache makes reruns fast.
    Run("dotnet", $"src/Cli/bin/{configuration}/net10.0/onnxquant.dll compile models/fixtures/detr_small.onnx " +
        "--calib models/data/calib.npz --verify-data models/data/eval.npz --target-bits 8,4,3 -o out/example");
});

RunTarget(target);
