"""The committed training recipe of the small Swin-T Mask-RCNN (CPU, single thread, seeded)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, List

import numpy as np
import torch
from torchvision.models.detection.mask_rcnn import MaskRCNN

from .schedule import apply_lr
from .dataset import SamplePool, normalize
from .maskrcnn import MaskRcnnConfig, build_maskrcnn, maskrcnn_swin_small


@dataclass(frozen=True)
class MaskRcnnRecipe:
    seed: int = 0
    iterations: int = 1500
    batch_size: int = 2
    lr: float = 3e-4
    warmup: int = 100
    lr_drop_fraction: float = 0.8  # lr x 0.1 for the last 20% of iterations
    weight_decay: float = 0.05
    grad_clip: float = 5.0


# One long phase: boxes are learned early (class-agnostic AP50 0.69 after 3,000 iterations), the classes late (AP50
# 0.30 with classes then, 0.47 after 4,500); two short phases of 1,500 + 600 iterations stopped at 0.29.
MASKRCNN_PHASES = (MaskRcnnRecipe(iterations=12000),)


def maskrcnn_batch(pool: SamplePool, rng: np.random.Generator, batch_size: int):
    idx = rng.integers(0, len(pool), batch_size)
    transforms = rng.integers(0, 8, batch_size)
    images, targets = [], []
    for i, t in zip(idx, transforms):
        s = pool.sample(int(i), int(t))
        images.append(torch.from_numpy(normalize(s.image)))
        targets.append({"boxes": torch.from_numpy(s.boxes), "labels": torch.from_numpy(s.labels),
                        "masks": torch.from_numpy(s.masks.astype(np.uint8))})
    return images, targets


def train_maskrcnn(pool: SamplePool, recipe: MaskRcnnRecipe = MaskRcnnRecipe(),
                   config: MaskRcnnConfig | None = None, log: Callable[[str], None] = print,
                   model: MaskRCNN | None = None) -> MaskRCNN:
    """Trains a new build_maskrcnn(config), or continues training `model` when one is given."""
    config = config or maskrcnn_swin_small()
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    model = model if model is not None else build_maskrcnn(config)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    start = time.time()
    window: List[float] = []
    for it in range(recipe.iterations):
        lr = apply_lr(optimizer, recipe, it)
        images, targets = maskrcnn_batch(pool, rng, recipe.batch_size)
        losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        optimizer.step()
        window.append(float(loss))
        if (it + 1) % 50 == 0 or it + 1 == recipe.iterations:
            elapsed = time.time() - start
            terms = " ".join(f"{k.replace('loss_', '')} {float(v):.3f}" for k, v in losses.items())
            log(f"maskrcnn it {it + 1}/{recipe.iterations} loss {np.mean(window):.3f} {terms} lr {lr:.1e} "
                f"{elapsed:.0f}s ({(it + 1) / elapsed:.2f} it/s)")
            window.clear()
    model.eval()
    return model
