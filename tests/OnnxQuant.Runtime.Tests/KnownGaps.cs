using System.Diagnostics;

namespace OnnxQuant.Runtime.Tests;

/// <summary>
/// Backend node tests that ONNX Runtime 1.32's CPU provider, the suite's data, or this binding's scope make fail, each
/// with its reason. The conformance test fails when one of these passes, so the list cannot go stale.
/// </summary>
internal static class KnownGaps
{
    private const string Training =
        "ai.onnx.preview.training operators (Adagrad, Adam, Momentum) exist only in ORT's training build";
    private const string RandomBernoulli =
        "random operator: ORT's generator differs from numpy's, so the sampled values cannot match the recorded ones";
    private const string RandomDropout =
        "Dropout in training mode samples a random mask; ORT's generator differs from numpy's";
    private const string FloatToString =
        "ORT formats floats with 8 significant digits ('0.60484552'); the suite expects numpy's shortest form ('0.6048455')";
    private const string BFloat16Rounding =
        "ORT rounds float -> bfloat16 to nearest even; the ONNX 1.12 reference truncates, differing by one bfloat16 step";
    private const string CastLikeRank =
        "the suite's `like` input has rank 1 where the model declares rank 2, and ORT checks declared ranks";
    private const string Fft =
        "ORT's DFT/STFT leave ~1e-5..1e-4 of rounding noise where the exact answer is 0, beyond the 1e-5 absolute tolerance";
    private const string Batchwise = "ORT's CPU RNN/GRU/LSTM kernels refuse layout = 1 (batch-first)";
    private const string MinMax16 = "ORT's CPU Min/Max (opset 13) have no int16/uint16 kernels";
    private const string MaxUnpool =
        "with an explicit output_shape, ORT's MaxUnpool puts values at other positions than the reference does";
    private const string PowUnsigned = "ORT's CPU Pow has no kernel for uint32/uint64 exponents";
    private const string ResizeAlignCorners =
        "with align_corners and fractional scales, the ONNX 1.12 reference maps coordinates through the unrounded output length (scale x input), ORT through the rounded one";
    private const string Locale =
        "StringNormalizer needs the en_US.UTF-8 locale, which this machine does not have (install locales to run it)";
    private const string Optional = "optional values at the graph boundary: OnnxQuant.Runtime exchanges tensors only";
    private const string Sequence = "sequence values at the graph boundary: OnnxQuant.Runtime exchanges tensors only";

    public static IReadOnlyDictionary<string, string> Reasons { get; } = Build();

    private static Dictionary<string, string> Build()
    {
        var gaps = new Dictionary<string, string>
        {
            ["test_adagrad"] = Training,
            ["test_adagrad_multiple"] = Training,
            ["test_adam"] = Training,
            ["test_adam_multiple"] = Training,
            ["test_bernoulli"] = RandomBernoulli,
            ["test_bernoulli_double"] = RandomBernoulli,
            ["test_bernoulli_double_expanded"] = RandomBernoulli,
            ["test_bernoulli_expanded"] = RandomBernoulli,
            ["test_bernoulli_seed"] = RandomBernoulli,
            ["test_bernoulli_seed_expanded"] = RandomBernoulli,
            ["test_cast_FLOAT_to_BFLOAT16"] = BFloat16Rounding,
            ["test_cast_FLOAT_to_STRING"] = FloatToString,
            ["test_castlike_BFLOAT16_to_FLOAT"] = CastLikeRank,
            ["test_castlike_BFLOAT16_to_FLOAT_expanded"] = CastLikeRank,
            ["test_castlike_FLOAT_to_BFLOAT16"] = CastLikeRank,
            ["test_castlike_FLOAT_to_BFLOAT16_expanded"] = CastLikeRank,
            ["test_castlike_FLOAT_to_STRING"] = FloatToString,
            ["test_castlike_FLOAT_to_STRING_expanded"] = FloatToString,
            ["test_dft"] = Fft,
            ["test_dft_axis"] = Fft,
            ["test_dft_inverse"] = Fft,
            ["test_gru_batchwise"] = Batchwise,
            ["test_identity_opt"] = Optional,
            ["test_identity_sequence"] = Sequence,
            ["test_if_opt"] = Optional,
            ["test_if_seq"] = Sequence,
            ["test_loop13_seq"] = Sequence,
            ["test_loop16_seq_none"] = Optional,
            ["test_lstm_batchwise"] = Batchwise,
            ["test_max_int16"] = MinMax16,
            ["test_max_uint16"] = MinMax16,
            ["test_maxunpool_export_with_output_shape"] = MaxUnpool,
            ["test_min_int16"] = MinMax16,
            ["test_min_uint16"] = MinMax16,
            ["test_momentum"] = Training,
            ["test_momentum_multiple"] = Training,
            ["test_nesterov_momentum"] = Training,
            ["test_optional_get_element"] = Optional,
            ["test_optional_get_element_sequence"] = Optional,
            ["test_optional_has_element"] = Optional,
            ["test_optional_has_element_empty"] = Optional,
            ["test_pow_types_float32_uint32"] = PowUnsigned,
            ["test_pow_types_float32_uint64"] = PowUnsigned,
            ["test_resize_downsample_scales_cubic_align_corners"] = ResizeAlignCorners,
            ["test_resize_downsample_scales_linear_align_corners"] = ResizeAlignCorners,
            ["test_sequence_insert_at_back"] = Sequence,
            ["test_sequence_insert_at_front"] = Sequence,
            ["test_sequence_map_add_1_sequence_1_tensor"] = Sequence,
            ["test_sequence_map_add_1_sequence_1_tensor_expanded"] = Sequence,
            ["test_sequence_map_add_2_sequences"] = Sequence,
            ["test_sequence_map_add_2_sequences_expanded"] = Sequence,
            ["test_sequence_map_extract_shapes"] = Sequence,
            ["test_sequence_map_extract_shapes_expanded"] = Sequence,
            ["test_sequence_map_identity_1_sequence"] = Sequence,
            ["test_sequence_map_identity_1_sequence_1_tensor"] = Sequence,
            ["test_sequence_map_identity_1_sequence_1_tensor_expanded"] = Sequence,
            ["test_sequence_map_identity_1_sequence_expanded"] = Sequence,
            ["test_sequence_map_identity_2_sequences"] = Sequence,
            ["test_sequence_map_identity_2_sequences_expanded"] = Sequence,
            ["test_simple_rnn_batchwise"] = Batchwise,
            ["test_stft"] = Fft,
            ["test_stft_with_window"] = Fft,
            ["test_training_dropout"] = RandomDropout,
            ["test_training_dropout_default"] = RandomDropout,
            ["test_training_dropout_default_mask"] = RandomDropout,
            ["test_training_dropout_mask"] = RandomDropout,
        };
        // An environment gap, not ORT's: with the locale installed these pass and must not be listed.
        if (!HasLocale("en_US.utf8"))
        {
            gaps["test_strnormalizer_export_monday_casesensintive_lower"] = Locale;
            gaps["test_strnormalizer_export_monday_casesensintive_upper"] = Locale;
            gaps["test_strnormalizer_export_monday_empty_output"] = Locale;
            gaps["test_strnormalizer_export_monday_insensintive_upper_twodim"] = Locale;
        }
        return gaps;
    }

    private static bool HasLocale(string name)
    {
        try
        {
            using var process = Process.Start(new ProcessStartInfo("locale", "-a") { RedirectStandardOutput = true, UseShellExecute = false })!;
            var output = process.StandardOutput.ReadToEnd();
            process.WaitForExit();
            return output.Split('\n').Any(l => l.Trim().Equals(name, StringComparison.OrdinalIgnoreCase));
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return false; // no `locale` tool: assume a minimal system without locales
        }
    }
}
