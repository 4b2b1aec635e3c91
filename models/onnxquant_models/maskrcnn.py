"""Mask-RCNN built from torchvision's detection components with a transformer backbone:

  * Swin: torchvision's SwinTransformer stages (strides 4, 8, 16, 32, a LayerNorm per stage output) + FPN with an
    extra max-pooled level;
  * ViT: torchvision's VisionTransformer encoder (stride 16) + a simple feature pyramid (strides 4, 8, 16, 32 made
    by transposed convolutions / max pooling from the last ViT map, each reduced by a 1x1 and a 3x3 convolution) and
    the same extra level, no top-down path.

Both feed torchvision's RPN, MultiScaleRoIAlign, box head and mask head. Inputs are already normalised (the
dataset writes ImageNet-normalised images), so the model's own transform is an identity at the configured size.
Labels are dataset category ids (1..num_classes-1); 0 is background.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNN, MaskRCNNHeads
from torchvision.models.swin_transformer import SwinTransformer
from torchvision.models.vision_transformer import VisionTransformer
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

FEATURE_NAMES = ("0", "1", "2", "3")  # pyramid levels at strides 4, 8, 16, 32; "pool" (stride 64) feeds only the RPN


@dataclass(frozen=True)
class MaskRcnnConfig:
    num_classes: int  # including background
    backbone: str  # "swin" or "vit"
    image_size: int
    # Swin
    embed_dim: int = 96
    depths: Tuple[int, ...] = (2, 2, 6, 2)
    num_heads: Tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    # ViT
    patch_size: int = 16
    vit_layers: int = 12
    vit_heads: int = 12
    vit_hidden: int = 768
    vit_mlp: int = 3072
    # heads
    fpn_channels: int = 256
    box_head_dim: int = 1024
    mask_head_layers: Tuple[int, ...] = (256, 256, 256, 256)
    anchor_sizes: Tuple[int, ...] = (32, 64, 128, 256, 512)
    rpn_pre_nms_train: int = 2000
    rpn_post_nms_train: int = 2000
    rpn_pre_nms_test: int = 1000
    rpn_post_nms_test: int = 1000
    box_batch_size_per_image: int = 512
    detections_per_image: int = 100


def maskrcnn_swin_t(num_classes: int = 91) -> MaskRcnnConfig:
    """Swin-T (embed 96, depths 2-2-6-2, window 7) + FPN 256, standard heads, 512x512 input."""
    return MaskRcnnConfig(num_classes=num_classes, backbone="swin", image_size=512)


def maskrcnn_swin_small(num_classes: int = 6) -> MaskRcnnConfig:
    """The trained fixture: Swin (embed 24, depths 2-2-2-1, window 4) + FPN 64, box head 128, 2 mask convs of 64,
    anchors scaled to 128x128 images."""
    return MaskRcnnConfig(
        num_classes=num_classes, backbone="swin", image_size=128, embed_dim=24, depths=(2, 2, 2, 1),
        num_heads=(1, 2, 4, 8), window_size=4, fpn_channels=64, box_head_dim=128, mask_head_layers=(64, 64),
        anchor_sizes=(8, 16, 32, 64, 128), rpn_pre_nms_train=600, rpn_post_nms_train=300, rpn_pre_nms_test=300,
        rpn_post_nms_test=100, box_batch_size_per_image=128, detections_per_image=20,
    )


def maskrcnn_vit_b16(num_classes: int = 91) -> MaskRcnnConfig:
    """ViT-B/16 + simple feature pyramid 256, standard heads, 512x512 input."""
    return MaskRcnnConfig(num_classes=num_classes, backbone="vit", image_size=512)


def maskrcnn_vit_small(num_classes: int = 6) -> MaskRcnnConfig:
    """ViT (4 layers, 4 heads, width 96) + simple feature pyramid 64, small heads, 128x128 input."""
    return MaskRcnnConfig(
        num_classes=num_classes, backbone="vit", image_size=128, vit_layers=4, vit_heads=4, vit_hidden=96,
        vit_mlp=192, fpn_channels=64, box_head_dim=128, mask_head_layers=(64, 64), anchor_sizes=(8, 16, 32, 64, 128),
        rpn_pre_nms_train=600, rpn_post_nms_train=300, rpn_pre_nms_test=300, rpn_post_nms_test=100,
        box_batch_size_per_image=128, detections_per_image=20,
    )


class SwinBody(nn.Module):
    """Swin stages as a multi-scale NCHW feature extractor."""

    def __init__(self, config: MaskRcnnConfig):
        super().__init__()
        swin = SwinTransformer(
            patch_size=[4, 4], embed_dim=config.embed_dim, depths=list(config.depths),
            num_heads=list(config.num_heads), window_size=[config.window_size] * 2, stochastic_depth_prob=0.0)
        self.features = swin.features  # patch embed, stage 1, merge, stage 2, merge, stage 3, merge, stage 4
        self.channels = [config.embed_dim * 2 ** i for i in range(len(config.depths))]
        self.norms = nn.ModuleList(nn.LayerNorm(c) for c in self.channels)

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        out: Dict[str, Tensor] = OrderedDict()
        level = 0
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i % 2 == 1:  # after each stage (indices 1, 3, 5, 7); x is NHWC inside Swin
                out[FEATURE_NAMES[level]] = self.norms[level](x).permute(0, 3, 1, 2)
                level += 1
        return out


class SwinFpnBackbone(nn.Module):
    def __init__(self, config: MaskRcnnConfig):
        super().__init__()
        self.body = SwinBody(config)
        self.fpn = FeaturePyramidNetwork(self.body.channels, config.fpn_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = config.fpn_channels

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        return self.fpn(self.body(x))


class ViTSimplePyramidBackbone(nn.Module):
    def __init__(self, config: MaskRcnnConfig):
        super().__init__()
        vit = VisionTransformer(image_size=config.image_size, patch_size=config.patch_size,
                                num_layers=config.vit_layers, num_heads=config.vit_heads,
                                hidden_dim=config.vit_hidden, mlp_dim=config.vit_mlp)
        self.patch_size = config.patch_size
        self.conv_proj = vit.conv_proj
        self.class_token = vit.class_token
        self.encoder = vit.encoder
        d, c = config.vit_hidden, config.fpn_channels
        self.up4 = nn.Sequential(nn.ConvTranspose2d(d, d // 2, 2, 2), nn.GroupNorm(1, d // 2), nn.GELU(),
                                 nn.ConvTranspose2d(d // 2, d // 4, 2, 2))
        self.up2 = nn.ConvTranspose2d(d, d // 2, 2, 2)
        self.down2 = nn.MaxPool2d(2, 2)
        in_channels = [d // 4, d // 2, d, d]
        self.lateral = nn.ModuleList(nn.Conv2d(ch, c, 1) for ch in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1) for _ in in_channels)
        self.out_channels = c

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        b = x.shape[0]
        h, w = x.shape[2] // self.patch_size, x.shape[3] // self.patch_size
        tokens = self.conv_proj(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.class_token.expand(b, -1, -1), tokens], dim=1)
        tokens = self.encoder(tokens)[:, 1:]
        feature = tokens.transpose(1, 2).reshape(b, -1, h, w)
        maps = [self.up4(feature), self.up2(feature), feature, self.down2(feature)]
        out: Dict[str, Tensor] = OrderedDict()
        for name, m, lateral, output in zip(FEATURE_NAMES, maps, self.lateral, self.output):
            out[name] = output(lateral(m))
        out["pool"] = nn.functional.max_pool2d(out[FEATURE_NAMES[-1]], 1, 2, 0)
        return out


def build_maskrcnn(config: MaskRcnnConfig) -> MaskRCNN:
    if config.backbone == "swin":
        backbone: nn.Module = SwinFpnBackbone(config)
    elif config.backbone == "vit":
        backbone = ViTSimplePyramidBackbone(config)
    else:
        raise ValueError(f"unknown Mask-RCNN backbone '{config.backbone}'; expected 'swin' or 'vit'")
    c = config.fpn_channels
    anchors = AnchorGenerator(tuple((s,) for s in config.anchor_sizes), ((0.5, 1.0, 2.0),) * len(config.anchor_sizes))
    box_pool = MultiScaleRoIAlign(list(FEATURE_NAMES), output_size=7, sampling_ratio=2)
    mask_pool = MultiScaleRoIAlign(list(FEATURE_NAMES), output_size=14, sampling_ratio=2)
    return MaskRCNN(
        backbone,
        num_classes=None,  # given by the predictors below
        min_size=config.image_size, max_size=config.image_size,
        image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0],
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=config.rpn_pre_nms_train, rpn_post_nms_top_n_train=config.rpn_post_nms_train,
        rpn_pre_nms_top_n_test=config.rpn_pre_nms_test, rpn_post_nms_top_n_test=config.rpn_post_nms_test,
        box_roi_pool=box_pool,
        box_head=TwoMLPHead(c * 7 * 7, config.box_head_dim),
        box_predictor=_box_predictor(config),
        box_batch_size_per_image=config.box_batch_size_per_image,
        box_detections_per_img=config.detections_per_image,
        mask_roi_pool=mask_pool,
        mask_head=MaskRCNNHeads(c, list(config.mask_head_layers), 1),
        mask_predictor=_mask_predictor(config),
    )


def _box_predictor(config: MaskRcnnConfig) -> nn.Module:
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
    return FastRCNNPredictor(config.box_head_dim, config.num_classes)


def _mask_predictor(config: MaskRcnnConfig) -> nn.Module:
    from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
    return MaskRCNNPredictor(config.mask_head_layers[-1], config.mask_head_layers[-1], config.num_classes)


@torch.no_grad()
def prepare_untrained(model: nn.Module, example: Tensor, score_threshold: float = 0.0) -> None:
    """Makes an untrained architecture export something meaningful: batch-norm statistics are set from one forward
    pass over `example` (random running statistics blow activations up), and for Mask-RCNN the score threshold is
    lowered so a near-uniform classifier still yields detections."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the pass
        m.train()
    if isinstance(model, MaskRCNN):
        model([example[0]])
        model.roi_heads.score_thresh = score_threshold
    else:
        model(example)
    model.eval()


def feature_names(config: MaskRcnnConfig) -> List[str]:
    return list(FEATURE_NAMES)
