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


# The official code's eta_min: lr * lr_decay_rate ** 3 * 0.1 with its default lr_decay_rate 0.2.
OFFICIAL_ETA_MIN_FACTOR = 0.2 ** 3 * 0.1


def epoch_cosine_lr(base_lr: float, epoch: int, total_epochs: int, eta_min: float = 0.0) -> float:
    """The official per-epoch cosine: the lr of (1-based) `epoch`, constant within it.

    contrast-landmark steps ``CosineAnnealingLR(optimizer, T_max=epochs, eta_min)`` once at the
    start of every epoch (``eval_face.py``, ``eval_animal.py``, ``train_feature_projector.py``),
    so epoch e trains at eta_min + (base - eta_min) (1 + cos(pi e / T)) / 2; the MoCo pretraining
    (``train_moco.py`` ``adjust_learning_rate``) is the same with eta_min = 0. A run may stop
    before epoch T (the face regressors stop after 121 / 46 / 81 of 200).
    """
    if total_epochs < 1:
        raise ValueError(f"total_epochs must be >= 1, got {total_epochs}")
    return eta_min + (base_lr - eta_min) * 0.5 * (1.0 + math.cos(math.pi * epoch / total_epochs))
