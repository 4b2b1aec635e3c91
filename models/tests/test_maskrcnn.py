import pytest
import torch

from onnxquant_models.maskrcnn import (build_maskrcnn, maskrcnn_swin_small, maskrcnn_swin_t, maskrcnn_vit_b16,
                                       maskrcnn_vit_small, prepare_untrained)
from onnxquant_models.export import MaskRcnnExport


@pytest.mark.parametrize("factory", [maskrcnn_swin_small, maskrcnn_vit_small])
def test_small_maskrcnn_trains_and_detects(factory):
    torch.manual_seed(0)
    config = factory()
    model = build_maskrcnn(config)
    image = torch.randn(3, config.image_size, config.image_size)
    mask = torch.zeros(1, config.image_size, config.image_size, dtype=torch.uint8)
    mask[0, 20:60, 30:70] = 1
    target = {"boxes": torch.tensor([[30.0, 20.0, 70.0, 60.0]]), "labels": torch.tensor([2]), "masks": mask}
    model.train()
    losses = model([image], [target])
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    prepare_untrained(model, image[None])
    outs = MaskRcnnExport(model)(image[None])
    boxes, labels, scores, masks = outs[:4]
    n = boxes.shape[0]
    assert 0 < n <= config.detections_per_image
    assert labels.shape == (n,) and scores.shape == (n,)
    assert masks.shape == (n, 1, config.image_size, config.image_size)
    assert torch.all((boxes >= 0) & (boxes <= config.image_size))
    strides = [4, 8, 16, 32]
    for feature, stride in zip(outs[4:], strides):
        size = config.image_size // stride
        assert feature.shape == (1, config.fpn_channels, size, size)


def test_full_size_configs_match_the_published_backbones():
    swin = maskrcnn_swin_t()
    assert (swin.embed_dim, swin.depths, swin.num_heads, swin.window_size) == (96, (2, 2, 6, 2), (3, 6, 12, 24), 7)
    vit = maskrcnn_vit_b16()
    assert (vit.patch_size, vit.vit_layers, vit.vit_heads, vit.vit_hidden, vit.vit_mlp) == (16, 12, 12, 768, 3072)


def test_unknown_backbone_is_rejected():
    config = maskrcnn_swin_small()
    with pytest.raises(ValueError, match="unknown Mask-RCNN backbone"):
        build_maskrcnn(type(config)(**{**config.__dict__, "backbone": "resnet"}))
