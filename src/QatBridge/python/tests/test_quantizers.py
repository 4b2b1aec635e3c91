import torch

from onnxquant_qat.lsq import LsqQuantizer, mse_scale
from onnxquant_qat.modules import DistributionAlignment, QuantLinear


def test_fake_quant_values_lie_on_the_grid_within_range():
    torch.manual_seed(0)
    q = LsqQuantizer(4, signed=True)
    q.init_from_range(-1.0, 1.0)
    x = torch.randn(1000) * 2
    y = q(x)
    levels = y / q.scale
    assert torch.allclose(levels, levels.round(), atol=1e-5)
    assert levels.min() >= -8 and levels.max() <= 7


def test_ste_passes_gradient_inside_the_range_and_learns_the_step():
    q = LsqQuantizer(4, signed=True)
    q.init_from_range(-1.0, 1.0)
    x = torch.tensor([0.03, 0.5, 5.0], requires_grad=True)
    q(x).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 0.0]  # identity inside, zero where clamped
    assert q.scale.grad is not None and q.scale.grad.abs() > 0


def test_weight_steps_are_per_output_channel():
    w = torch.tensor([[1.0, -0.5], [100.0, 20.0]])
    s = mse_scale(w, 8, True, axis=0)
    assert s.shape == (2,) and s[1] > 50 * s[0]


def test_unsigned_activation_uses_all_levels_for_non_negative_input():
    layer = QuantLinear(torch.nn.Linear(4, 3), 8, 4)
    layer(torch.rand(16, 4))
    assert not layer.aq.signed and (layer.aq.qmin, layer.aq.qmax) == (0, 15)


def _unequal_channels(seed=0):
    """Query-like input whose channels differ in spread by 100x and in mean: what a per-tensor step handles worst."""
    torch.manual_seed(seed)
    return torch.randn(4, 100, 16) * torch.logspace(-1, 1, 16) + torch.linspace(-3, 3, 16)


def test_distribution_alignment_normalizes_with_its_statistics_and_is_the_identity_without_a_quantizer():
    q = _unequal_channels()
    flat = q.reshape(-1, 16)
    da = DistributionAlignment(16)
    assert torch.equal(da(q), q)  # untouched: mu 0, sigma^2 + eps 1, gamma 1, beta 0
    da.init_from_statistics(flat.mean(0), flat.var(0, unbiased=False))
    n = da.normalize(q).reshape(-1, 16)
    assert torch.allclose(n.mean(0), torch.zeros(16), atol=1e-4)
    v = flat.var(0, unbiased=False)
    assert torch.allclose(n.var(0, unbiased=False), v / (v + 1e-5), atol=1e-4)
    # gamma = sqrt(sigma^2 + eps), beta = mu: without quantization the aligned query is the query, to float rounding
    # (relative 1e-6 of the largest value; the values reach 34).
    assert (da(q) - q).abs().max() <= 1e-6 * q.abs().max()
    assert (da(q, torch.nn.Identity()) - q).abs().max() <= 1e-6 * q.abs().max()
    with torch.no_grad():
        da.gamma.fill_(3.0)
        da.beta.fill_(-2.0)
    out = da(q).reshape(-1, 16)
    assert torch.allclose(out.mean(0), torch.full((16,), -2.0), atol=1e-3)


def test_distribution_alignment_lowers_the_quantization_error_of_unequal_channels():
    from onnxquant_qat.modules import AutoSignQuantizer
    q = _unequal_channels()
    flat = q.reshape(-1, 16)
    da = DistributionAlignment(16)
    da.init_from_statistics(flat.mean(0), flat.var(0, unbiased=False))
    for bits, ratio in ((4, 0.35), (2, 0.45)):
        # Both quantizers are per tensor with an MSE-chosen step; the aligned one sees the normalized channels.
        plain, aligned = AutoSignQuantizer(bits), AutoSignQuantizer(bits)
        with torch.no_grad():
            e_plain = ((plain(q) - q) ** 2).mean()
            e_aligned = ((da(q, aligned) - q) ** 2).mean()
            # Measured 0.27 (4 bits) and 0.37 (2 bits) of the plain error.
            assert e_aligned < ratio * e_plain, (bits, float(e_aligned / e_plain))
            # The narrow channels gain most: the widest channel no longer sets their step.
            narrow = slice(0, 4)
            assert ((da(q, aligned) - q)[..., narrow] ** 2).mean() < 0.01 * ((plain(q) - q)[..., narrow] ** 2).mean()


def test_zero_point_grid_equals_quantize_dequantize():
    from onnxquant_qat.modules import AutoSignQuantizer
    q = AutoSignQuantizer(8)
    scale, zp = 0.02, 37
    q.init_from_qparams(scale, zp)
    x = torch.linspace(-2, 6, 2001)
    # ONNX QuantizeLinear (saturating uint8) then DequantizeLinear.
    expected = (torch.clamp(torch.round(x / scale) + zp, 0, 255) - zp) * scale
    assert torch.allclose(q(x), expected, atol=1e-6)
    state = q.state_dict()
    back = AutoSignQuantizer(8)
    back.load_state_dict(state)
    assert (back.qmin, back.qmax, back.export_zero_point()) == (-37, 218, 37)


def test_quantized_multihead_attention_matches_float_at_high_bits():
    from onnxquant_qat.modules import QuantMultiheadAttention
    torch.manual_seed(0)
    base = torch.nn.MultiheadAttention(16, 4).eval()
    q, kv = torch.randn(5, 2, 16), torch.randn(7, 2, 16)
    expected, expected_w = base(q, kv, kv)
    quant = QuantMultiheadAttention(base, 16, 16, 16).eval()
    out, w = quant(q, kv, kv)
    assert out.shape == expected.shape and w.shape == expected_w.shape
    assert torch.allclose(out, expected, atol=2e-3)
    low, _ = QuantMultiheadAttention(base, 2, 2, 2).eval()(q, kv, kv)
    assert (low - expected).abs().mean() > 10 * (out - expected).abs().mean()


def test_fast_round_equals_torch_round_including_ties():
    from onnxquant_qat.lsq import fast_round
    x = torch.cat([torch.randn(10000) * 300, torch.arange(-64, 64) + 0.5, torch.tensor([-0.5, 0.5, 1.5, 2.5, -2.5])])
    assert torch.equal(fast_round(x), torch.round(x))
