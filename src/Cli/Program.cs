using System.CommandLine;
using OnnxQuant.Cli;

return CliApp.Run(args);
