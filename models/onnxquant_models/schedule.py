"""The learning-rate schedule both training recipes share: linear warm-up, then one drop to a tenth."""
from __future__ import annotations

import torch


def apply_lr(optimizer: torch.optim.Optimizer, recipe, iteration: int) -> float:
    """Sets every parameter group's learning rate for `iteration` of `recipe` (fields lr, warmup, iterations,
    lr_drop_fraction) and returns it."""
    drop_at = int(recipe.iterations * recipe.lr_drop_fraction)
    lr = recipe.lr * min(1.0, (iteration + 1) / recipe.warmup) * (0.1 if iteration >= drop_at else 1.0)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
