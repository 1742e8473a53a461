"""Dense per-pixel representations from a backbone's stage outputs.

The hypercolumn (paper Sec. 3.2; SPEC "Represent") concatenates the outputs of
conv5_x, conv4_x, conv3_x, conv2_x (torchvision ``layer4, layer3, layer2,
layer1``, in that order), each bilinearly resized (``align_corners=False``) to
48x48 for a 96x96 input: 2048+1024+512+256 = 3840 channels for ResNet50,
1920 for resnet50_half, 960 for resnet18. ``conv4`` is the layer3 (conv4_x)
output alone, the baseline representation of Table 1 / Table 6.

Works on any backbone with the shared interface of ``backbones.py``
(``stages(x, num_stages)`` and ``stage_channels``). No gradient control here:
callers wrap in ``torch.no_grad()`` for frozen features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

KINDS = ("hypercolumn", "conv4")


def _resize(x_bchw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x_bchw.shape[-2:]) == tuple(size):
        return x_bchw
    return F.interpolate(x_bchw, size=size, mode="bilinear", align_corners=False)


def _check_size(size) -> tuple[int, int]:
    if isinstance(size, int):
        size = (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be an int or (height, width) of positive ints, got {size!r}")
    return size  # type: ignore[return-value]


def hypercolumn(
    backbone: nn.Module,
    images: torch.Tensor,
    layers: int = 4,
    size: tuple[int, int] | int = (48, 48),
) -> torch.Tensor:
    """Hypercolumn of ``images`` (B, 3, H, W) -> (B, C, size[0], size[1]).

    ``layers`` picks the first stages of the order layer4, layer3, layer2,
    layer1 (layers=1: layer4 only; 4: all, the paper's setting). All four
    stages are still computed, since layer4 needs the ones before it.
    """
    if not 1 <= layers <= 4:
        raise ValueError(f"layers must be in 1..4 (layer4, layer3, layer2, layer1), got {layers}")
    size = _check_size(size)
    stage_outs = backbone.stages(images, num_stages=4)  # [layer1, .., layer4]
    picked = stage_outs[::-1][:layers]  # layer4, layer3, ...
    return torch.cat([_resize(s, size) for s in picked], dim=1)


def conv4(backbone: nn.Module, images: torch.Tensor, size: tuple[int, int] | int = (48, 48)) -> torch.Tensor:
    """layer3 (conv4_x) output resized to ``size``: (B, stage_channels[2], h, w); layer4 is skipped."""
    size = _check_size(size)
    return _resize(backbone.stages(images, num_stages=3)[2], size)


def representation(
    backbone: nn.Module,
    images: torch.Tensor,
    kind: str = "hypercolumn",
    size: tuple[int, int] | int = (48, 48),
) -> torch.Tensor:
    """Dispatch on ``kind`` ("hypercolumn" | "conv4") -> (B, C, h, w)."""
    if kind == "hypercolumn":
        return hypercolumn(backbone, images, layers=4, size=size)
    if kind == "conv4":
        return conv4(backbone, images, size=size)
    raise ValueError(f"unknown representation kind {kind!r}; valid choices: {list(KINDS)}")


def representation_channels(backbone: nn.Module, kind: str = "hypercolumn", layers: int = 4) -> int:
    """Channel count of ``representation(backbone, ..., kind)`` without running the model."""
    channels = tuple(backbone.stage_channels)
    if kind == "hypercolumn":
        if not 1 <= layers <= 4:
            raise ValueError(f"layers must be in 1..4, got {layers}")
        return sum(channels[::-1][:layers])
    if kind == "conv4":
        return channels[2]
    raise ValueError(f"unknown representation kind {kind!r}; valid choices: {list(KINDS)}")
