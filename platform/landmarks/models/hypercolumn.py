"""Dense per-pixel representations from a backbone's stage outputs.

The hypercolumn (paper Sec. 3.2; SPEC "Represent") concatenates the outputs of
conv5_x, conv4_x, conv3_x, conv2_x (torchvision ``layer4, layer3, layer2,
layer1``, in that order), each bilinearly resized (``align_corners=False``, the
``F.interpolate`` default the official code uses) to 48x48: 2048+1024+512+256 =
3840 channels for ResNet50, 1920 for resnet50_half, 960 for resnet18. The official
code fixes that size (``output_shape = (48, 48)`` in ``eval_face.py`` / ``eval_animal.py``)
whatever the input (96 or 128 px, Table 3); inputs under 96 px (our CPU presets) get half
their side instead (``dense_size``). ``conv4`` is the layer3 (conv4_x) output alone at its
own resolution (6x6 for a 96 px input), the baseline representation of Tables 1 and 6, as the
official ``model(x, layer=4, use_hypercol=False)`` returns it.

Works on any backbone with the shared interface of ``backbones.py``
(``stages(x, num_stages)`` and ``stage_channels``). No gradient control here:
callers wrap in ``torch.no_grad()`` for frozen features.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

KINDS = ("hypercolumn", "conv4")
HYPERCOLUMN_SIZE = 48  # official output_shape


def dense_size(kind: str, image_size: int) -> tuple[int, int]:
    """(h, w) of a representation's map for a square input of `image_size` px.

    hypercolumn / projected: 48 x 48 (the official size), or image_size // 2 below 96 px;
    conv4: layer3's own resolution, ceil(image_size / 16) (6 at 96 px).
    """
    if kind in ("hypercolumn", "projected"):
        side = min(HYPERCOLUMN_SIZE, image_size // 2)
    elif kind == "conv4":
        side = math.ceil(image_size / 16)
    else:
        raise ValueError(f"unknown representation kind {kind!r}; valid choices: {list(KINDS) + ['projected']}")
    return side, side


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


def conv4(backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """layer3 (conv4_x) output at its own resolution: (B, stage_channels[2], H/16, W/16); no layer4."""
    return backbone.stages(images, num_stages=3)[2]


def representation(
    backbone: nn.Module,
    images: torch.Tensor,
    kind: str = "hypercolumn",
    size: tuple[int, int] | int = (48, 48),
) -> torch.Tensor:
    """Dispatch on ``kind`` ("hypercolumn" | "conv4") -> (B, C, h, w); conv4 ignores ``size``."""
    if kind == "hypercolumn":
        return hypercolumn(backbone, images, layers=4, size=size)
    if kind == "conv4":
        return conv4(backbone, images)
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
