import onnx
import pytest
import torch
from onnx import TensorProto, helper

from onnxquant_models.detr import DETR, detr_tiny
from onnxquant_models.export import DETR_OUTPUTS, OPSET, export_detr, fix_roi_align, reference_outputs


@pytest.fixture(scope="module")
def tiny_detr_export(tmp_path_factory):
    torch.manual_seed(0)
    model = DETR(detr_tiny()).eval()
    example = torch.randn(1, 3, 64, 64)
    path = tmp_path_factory.mktemp("export") / "detr_tiny.onnx"
    proto = export_detr(model, example, str(path))
    return model, example, path, proto


def _shape(value):
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]


def test_detr_export_is_valid_opset17_with_stable_names_and_static_shapes(tiny_detr_export):
    model, example, path, _ = tiny_detr_export
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert [o.domain or "ai.onnx" for o in proto.opset_import] == ["ai.onnx"]
    assert proto.opset_import[0].version == OPSET
    assert [i.name for i in proto.graph.input] == ["images"]
    assert _shape(proto.graph.input[0]) == [1, 3, 64, 64]
    config = model.config
    expected = {
        "pred_logits": [1, config.num_queries, config.num_classes + 1],
        "pred_boxes": [1, config.num_queries, 4],
        "backbone_feature": [1, config.backbone_channels, 64 // config.stride, 64 // config.stride],
        "decoder_features": [1, config.num_queries, config.d_model],
    }
    assert {o.name: _shape(o) for o in proto.graph.output} == expected
    # Shape arithmetic is folded away: the positional encodings are constants, not Range/Sin chains over shapes.
    assert not any(n.op_type == "Range" for n in proto.graph.node)


def test_detr_export_is_deterministic(tiny_detr_export, tmp_path):
    model, example, path, _ = tiny_detr_export
    again = tmp_path / "again.onnx"
    export_detr(model, example, str(again))
    assert again.read_bytes() == path.read_bytes()


def test_export_refuses_batches(tiny_detr_export, tmp_path):
    model = tiny_detr_export[0]
    with pytest.raises(ValueError, match="one image"):
        export_detr(model, torch.zeros(2, 3, 64, 64), str(tmp_path / "x.onnx"))


def test_reference_outputs_follow_the_graph_output_order(tiny_detr_export):
    model, example, _, _ = tiny_detr_export
    outs = reference_outputs(model, example)
    direct = model(example)
    for name, value in zip(DETR_OUTPUTS, outs):
        assert torch.equal(value, direct[name])


def _roi_align_model(mode=None, in_subgraph=False):
    attrs = {"output_height": 2, "output_width": 2, "sampling_ratio": 2, "spatial_scale": 0.25}
    if mode is not None:
        attrs["coordinate_transformation_mode"] = mode
    roi = helper.make_node("RoiAlign", ["x", "rois", "idx"], ["y"], **attrs)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8]),
              helper.make_tensor_value_info("rois", TensorProto.FLOAT, [1, 4]),
              helper.make_tensor_value_info("idx", TensorProto.INT64, [1])]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 2, 2])
    if not in_subgraph:
        return helper.make_model(helper.make_graph([roi], "g", inputs, [output]),
                                 opset_imports=[helper.make_opsetid("", 17)])
    branch = helper.make_graph([roi], "branch", [], [output])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["y2"])], "other", [],
                              [helper.make_tensor_value_info("y2", TensorProto.FLOAT, [1, 1, 8, 8])])
    cond = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    node = helper.make_node("If", ["c"], ["out"], then_branch=branch, else_branch=other)
    return helper.make_model(helper.make_graph([node], "g", inputs + [cond],
                                               [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)]),
                             opset_imports=[helper.make_opsetid("", 17)])


def _modes(graph):
    found = []
    for node in graph.node:
        if node.op_type == "RoiAlign":
            found.append([helper.get_attribute_value(a) for a in node.attribute
                          if a.name == "coordinate_transformation_mode"])
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                found += _modes(a.g)
    return found


@pytest.mark.parametrize("mode", [None, "half_pixel", "output_half_pixel"])
def test_roi_align_fix_sets_output_half_pixel_exactly_once(mode):
    model = _roi_align_model(mode)
    assert fix_roi_align(model) == 1
    assert _modes(model.graph) == [[b"output_half_pixel"]]
    onnx.checker.check_model(model)


def test_roi_align_fix_reaches_subgraphs():
    model = _roi_align_model(in_subgraph=True)
    assert fix_roi_align(model) == 1
    assert _modes(model.graph) == [[b"output_half_pixel"]]
