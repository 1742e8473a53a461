"""Learning-rate schedules as pure functions of the (fractional) epoch, as in moco-v3's
`adjust_learning_rate`: a checkpoint stores the step, never a scheduler object."""

from __future__ import annotations

import math


def cosine_lr(base_lr: float, epoch: float, total_epochs: float, warmup_epochs: float = 0.0) -> float:
    """Linear warm-up, then half-cycle cosine from base_lr to 0 (MoCo v2 `--cos`)."""
    if warmup_epochs > 0 and epoch < warmup_epochs:
        return base_lr * epoch / warmup_epochs
    span = max(total_epochs - warmup_epochs, 1e-12)
    progress = min(max((epoch - warmup_epochs) / span, 0.0), 1.0)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer, lr: float, scale_by_group: bool = True) -> None:
    """Set every param group's lr; groups may carry an 'lr_scale' (e.g. backbone vs head)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * (group.get("lr_scale", 1.0) if scale_by_group else 1.0)
