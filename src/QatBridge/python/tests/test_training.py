import onnx
import torch
from onnx import numpy_helper

from onnxquant_models.detr import SetCriterion, build_detr, detr_tiny
from onnxquant_qat.convert import quantize_model, quantized_modules
from onnxquant_qat.export import export_student, learned_scales
from onnxquant_qat.modules import QuantSplitAttention
from onnxquant_qat.recipe import LayerRecipe, Recipe
from onnxquant_qat.train import Batches, TrainConfig, train_qdetr

SIZE = 64


def _batch(n=4, seed=0, size=SIZE):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=g)
    targets = []
    for i in range(n):
        k = 1 + i % 2
        centers = torch.rand(k, 2, generator=g) * 0.5 + 0.25
        sizes = torch.rand(k, 2, generator=g) * 0.2 + 0.15
        targets.append({"labels": torch.randint(0, 5, (k,), generator=g), "boxes": torch.cat([centers, sizes], 1)})
    return images, targets


def _teacher():
    torch.manual_seed(0)
    return build_detr(detr_tiny())


def test_recipe_places_quantizers_and_distribution_alignment_on_decoder_cross_attention():
    model = _teacher()
    recipe = Recipe(4, 4, 8, layers=(LayerRecipe("input_proj", 2, 8),), float_layers=("class_heads", "box_heads"))
    quantize_model(model, recipe, scope=lambda n: n.startswith("backbone."))
    assert all(n.startswith("backbone.") for n, _ in quantized_modules(model))
    report = quantize_model(model, recipe, align_query=True)
    attn = {c.name: c for c in report.converted if c.kind == "attention"}
    assert set(attn) == {"encoder.0.self_attn", "decoder.0.self_attn", "decoder.0.cross_attn",
                         "decoder.1.self_attn", "decoder.1.cross_attn"}
    assert [n for n, c in attn.items() if c.aligned] == ["decoder.0.cross_attn", "decoder.1.cross_attn"]
    assert model.input_proj.weight_bits == 2 and model.input_proj.act_bits == 8
    assert isinstance(model.decoder[0].cross_attn, QuantSplitAttention)
    assert model.decoder[0].cross_attn.softmax_quant.bits == 8
    assert "class_heads.0" in report.kept_float and type(model.class_heads[0]) is torch.nn.Linear


def test_a_few_steps_lower_the_loss(tmp_path):
    teacher = _teacher()
    # One fixed batch of 32x32 images keeps this fast; the higher lr makes 8 steps enough to see the descent.
    images, targets = _batch(2, size=32)
    criterion = SetCriterion(5)
    config = TrainConfig(stage1_steps=1, stage2_steps=8, batch_size=2, lr=3e-3, distribution_alignment=True,
                         query_matching=True, log_every=1000)
    batches = Batches(images, targets, 2, seed=0)
    student, result = train_qdetr(teacher, lambda: build_detr(detr_tiny()), criterion, Recipe.uniform("4-4-8"),
                                  batches, config, torch.device("cpu"), str(tmp_path), log=lambda s: None)
    stage2 = [l for l in result.logs if l.stage == 2]
    assert len(stage2) == 8 and (tmp_path / "stage1.pt").exists()
    first, last = sum(l.loss for l in stage2[:2]) / 2, sum(l.loss for l in stage2[-2:]) / 2
    assert last < 0.9 * first, (first, last)


def test_exported_student_is_a_valid_qdq_model_matching_pytorch(tmp_path):
    model = _teacher()
    recipe = Recipe(4, 4, 8, layers=(LayerRecipe("input_proj", 2, 4),))
    quantize_model(model, recipe, align_query=True)
    images, _ = _batch(2)
    model.eval()
    with torch.no_grad():
        expected = model(images[:1])["pred_boxes"]
    path = tmp_path / "student.onnx"
    export_student(model, str(path), SIZE, scales_path=str(tmp_path / "scales.json"))
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("QuantizeLinear") > 20 and ops.count("DequantizeLinear") > ops.count("QuantizeLinear")
    assert [o.name for o in m.graph.output] == ["pred_logits", "pred_boxes"]
    ints = [numpy_helper.to_array(t) for t in m.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert any(a.ndim == 4 and a.min() >= -2 and a.max() <= 1 for a in ints)  # 2-bit input_proj
    assert all(a.min() >= -8 and a.max() <= 7 for a in ints if a.ndim >= 2)
    scales = learned_scales(model)
    assert any(e["name"] == "input_proj" and e["weight_bits"] == 2 for e in scales["layers"])
    with torch.no_grad():  # export must leave the PyTorch module in training form
        assert torch.allclose(model(images[:1])["pred_boxes"], expected)
