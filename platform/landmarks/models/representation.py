"""The dense per-pixel representations, built in one place: hypercolumn, conv4 and projected.

The hypercolumn (paper Sec. 3.2; SPEC "Represent") concatenates the outputs of conv5_x, conv4_x,
conv3_x, conv2_x (torchvision ``layer4, layer3, layer2, layer1``, in that order), each bilinearly
resized (``align_corners=False``, the ``F.interpolate`` default the official code uses) to 48x48:
2048+1024+512+256 = 3840 channels for ResNet50, 1920 for resnet50_half, 960 for resnet18. The
official code fixes that size (``output_shape = (48, 48)`` in ``eval_face.py`` / ``eval_animal.py``)
whatever the input (96 or 128 px, Table 3); inputs under 96 px (our CPU presets) get half their side
(`dense_size`). ``conv4`` is the layer3 (conv4_x) output alone at its own resolution (6x6 for a 96 px
input), the baseline of Tables 1 and 6, as the official ``model(x, layer=4, use_hypercol=False)``.
``projected`` is a `heads.Projector` (1x1 conv + spatial softmax) on the hypercolumn.

A representation is made of *stage blocks* (`stage_indices`, the one place that says which stages:
layer4, layer3, ... for the hypercolumn, layer3 alone for conv4; `stage_blocks` picks them, in
channel order); `assemble` resizes and concatenates them. A 1x1 conv over the assembled map (the
regressor's heatmaps, the projector, the segmentation head) runs block by block at each block's own
resolution (`linear_over_blocks`), so the 3840-channel map is never built. `Representation` is the
`nn.Module` every job builds its maps with (regression, matching, segmentation, projector training;
fine-tuning's `train.finetune_loop.LandmarkNet` is one with a regressor); the kinds are
`landmarks.registry.REPRESENTATIONS`.

    rep = Representation("hypercolumn", backbone, info, None, layers=4, mean=..., std=...)
    stages = rep.stages(images_uint8)          # [layer1..layer4], no gradients
    dense = rep.dense(stages, (48, 48))        # (B, C, 48, 48); conv4: (B, C, 6, 6)
    points = rep.landmarks(regressor, stages, (48, 48))  # (B, K, 2), block by block

Pure torch (no Ray, no MLflow); works on any backbone with ``stages(x, num_stages)`` and
``stage_channels`` (``backbones.py``). Callers choose the device and gradient mode.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from landmarks.augment.views import input_tensor
from landmarks.models.heads import soft_argmax
from landmarks.registry import CONV4_STAGE, REPRESENTATIONS

HYPERCOLUMN_SIZE = 48  # official output_shape


def dense_size(kind: str, image_size: int) -> tuple[int, int]:
    """(h, w) of a representation's map for a square input of `image_size` px.

    hypercolumn / projected: 48 x 48 (the official size), or image_size // 2 below 96 px;
    conv4: layer3's own resolution, ceil(image_size / 16) (6 at 96 px).
    """
    _check_kind(kind)
    side = math.ceil(image_size / 16) if kind == "conv4" else min(HYPERCOLUMN_SIZE, image_size // 2)
    return side, side


def _check_kind(kind: str) -> None:
    if kind not in REPRESENTATIONS:
        raise ValueError(f"unknown representation kind {kind!r}; valid choices: {list(REPRESENTATIONS)}")


def _check_layers(layers: int) -> None:
    if not 1 <= layers <= 4:
        raise ValueError(f"layers must be in 1..4 (layer4, layer3, layer2, layer1), got {layers}")


def stage_indices(kind: str, layers: int = 4) -> list[int]:
    """Which stage outputs ([layer1..layer4], 0-based) a representation is made of, in its channel order:
    hypercolumn / projected: layer4, layer3, ... (the first `layers`); conv4: layer3 alone."""
    _check_kind(kind)
    if kind == "conv4":
        return [CONV4_STAGE]
    _check_layers(layers)
    return [3, 2, 1, 0][:layers]


def num_stages(kind: str) -> int:
    """How many stages the backbone must compute for `kind`: 3 for conv4 (no layer4), else 4."""
    return max(stage_indices(kind)) + 1


def stage_blocks(stages: Sequence[torch.Tensor], kind: str, layers: int = 4) -> list[torch.Tensor]:
    """The stage outputs ([layer1..layer4]) a representation is made of, in its channel order (`stage_indices`)."""
    return [stages[i] for i in stage_indices(kind, layers)]


def block_channels(stage_channels: Sequence[int], kind: str, layers: int = 4) -> list[int]:
    """Channel counts of `stage_blocks` without running the model (the hypercolumn's, for projected)."""
    return [stage_channels[i] for i in stage_indices(kind, layers)]


def assemble(stages: Sequence[torch.Tensor], kind: str, layers: int, size: tuple[int, int]) -> torch.Tensor:
    """[layer1..layer4] stage outputs -> the (B, C, h, w) hypercolumn at `size`, or conv4 at its own size."""
    blocks = stage_blocks(stages, kind, layers)
    if kind == "conv4":
        return blocks[0]
    size = tuple(size)
    return torch.cat([b if tuple(b.shape[-2:]) == size else
                      F.interpolate(b, size=size, mode="bilinear", align_corners=False) for b in blocks], dim=1)


def hypercolumn(backbone: nn.Module, images: torch.Tensor, layers: int = 4,
                size: tuple[int, int] | int = (48, 48)) -> torch.Tensor:
    """Hypercolumn of ``images`` (B, 3, H, W) -> (B, C, size[0], size[1]) (SPEC public function).

    ``layers`` picks the first stages of the order layer4, layer3, layer2, layer1 (1: layer4 only;
    4: all, the paper's setting).
    """
    _check_layers(layers)
    size = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be an int or (height, width) of positive ints, got {size!r}")
    return assemble(backbone.stages(images, num_stages=num_stages("hypercolumn")), "hypercolumn", layers, size)


def conv4(backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """layer3 (conv4_x) output at its own resolution: (B, stage_channels[2], H/16, W/16); no layer4."""
    return stage_blocks(backbone.stages(images, num_stages=num_stages("conv4")), "conv4")[0]


@functools.lru_cache(maxsize=64)
def resize_matrix(n_in: int, n_out: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(n_out, n_in): a 1-D linear resize (align_corners=False) as a matrix; bilinear = one per axis."""
    impulses = torch.eye(n_in, dtype=dtype, device=device).reshape(n_in, 1, n_in)
    return F.interpolate(impulses, size=n_out, mode="linear", align_corners=False)[:, 0].T.contiguous()


def linear_over_blocks(blocks_bchw: Sequence[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor | None,
                       size: tuple[int, int]) -> torch.Tensor:
    """A 1x1 conv (weight (O, C, 1, 1)) over the resized concatenation of `blocks_bchw` -> (B, O, h, w).

    A 1x1 conv mixes channels and a bilinear resize mixes locations, so they commute:
    conv(cat(resize(s))) = sum_s resize(conv_s(s)). Running each block's slice of the conv at the
    block's own resolution costs 32x fewer MACs for a ResNet50 hypercolumn at 96 px, and the
    3840-channel 48x48 map is never built. The resize is bilinear (align_corners=False), the same
    numbers as F.interpolate, done as matrix products: each block's columns are resized on its own,
    (B, O, h_s, w_s) @ (w_s, w) -> (B, O, h_s, w); the row resizes and the sum over blocks are then
    one product, (h, sum h_s) @ (B, O, sum h_s, w), so no full-size map is built per block. On CPU
    that is ~3x faster forward + backward than one resize per block (benchmarks/sweep.py).
    """
    out_h, out_w = size
    full, parts, rows, start = None, [], [], 0
    for block in blocks_bchw:
        c = block.shape[1]
        y = F.conv2d(block, weight[:, start:start + c])  # (B, O, h_s, w_s)
        start += c
        h, w = y.shape[-2:]
        if (h, w) == (out_h, out_w):
            full = y if full is None else full + y
            continue
        parts.append(y @ resize_matrix(w, out_w, y.dtype, y.device).T)  # (B, O, h_s, w)
        rows.append(resize_matrix(h, out_h, y.dtype, y.device))  # (h, h_s)
    if start != weight.shape[1]:
        raise ValueError(f"blocks have {start} channels, the conv expects {weight.shape[1]}")
    out = full
    if parts:
        resized = torch.cat(rows, dim=1) @ torch.cat(parts, dim=2)  # (h, sum h_s) @ (B, O, sum h_s, w)
        out = resized if out is None else out + resized
    return out if bias is None else out + bias.view(1, -1, 1, 1)


def landmarks_from_blocks(regressor, blocks_bchw: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """A `LandmarkRegressor` on the map assembled from `blocks_bchw` at `size`, without building it:
    landmarks (B, K, 2), normalized. The x100 soft-argmax scale is applied to the (K*P, C) weight
    rather than to the (B, K*P, h, w) logits: the same map, less work."""
    logits = linear_over_blocks(blocks_bchw, regressor.heatmaps.weight * regressor.softmax_scale, None, size)
    return regressor.combine(soft_argmax(logits))  # (B, K*P, 2) points -> (B, K, 2)


class Representation(nn.Module):
    """A backbone (+ projector) and the dense representation made of its stage outputs: the one module
    that turns [layer1..layer4] into the hypercolumn, conv4 or projected map, and runs 1x1 heads on it.

    kind: hypercolumn | conv4 | projected; info: where the weights came from (`landmarks.sources`);
    mean/std: the input normalisation (`landmarks.data.normalization`) `stages` applies to uint8
    images; device: where `stages` puts its inputs (set by `to`). ``forward(stages, size)`` is
    `dense`: with gradients through the projector, it is what projector training steps (under DDP).
    """

    def __init__(self, kind: str, backbone: nn.Module, info: dict[str, Any], projector: nn.Module | None,
                 layers: int, mean: Sequence[float] | None, std: Sequence[float] | None,
                 device: torch.device | str = "cpu") -> None:
        super().__init__()
        _check_kind(kind)
        if (kind == "projected") != (projector is not None):
            raise ValueError("a projector goes with kind='projected', and only with it")
        self.kind, self.info, self.layers, self.mean, self.std = kind, info, layers, mean, std
        self.backbone = backbone
        self.projector = projector
        self.device = torch.device(device)

    @property
    def backbone_kind(self) -> str:
        """What the backbone gives: the projector runs on the hypercolumn."""
        return "hypercolumn" if self.kind == "projected" else self.kind

    @property
    def blocks(self) -> list[int]:
        """Channel blocks of the dense map, in order (normalized separately for matching)."""
        if self.projector is not None:
            return [self.projector.dim]
        return block_channels(self.backbone.stage_channels, self.kind, self.layers)

    @property
    def channels(self) -> int:
        return sum(self.blocks)

    def to(self, *args: Any, **kwargs: Any) -> Representation:  # type: ignore[override]
        """`nn.Module.to`; given a device, `stages` puts its inputs there too and the module goes to
        eval mode (a representation is evaluated frozen; training callers switch it back)."""
        super().to(*args, **kwargs)
        device = kwargs.get("device", next((a for a in args if isinstance(a, (str, torch.device))), None))
        if device is not None:
            self.device = torch.device(device)
            self.eval()
        return self

    def stage_blocks(self, stages: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return stage_blocks(stages, self.backbone_kind, self.layers)

    def map_size(self, stages: Sequence[torch.Tensor], size: tuple[int, int]) -> tuple[int, int]:
        """conv4 is used at layer3's own resolution (the official conv4); the others at `size`."""
        return tuple(self.stage_blocks(stages)[0].shape[-2:]) if self.kind == "conv4" else tuple(size)

    def backbone_stages(self, x_b3hw: torch.Tensor) -> list[torch.Tensor]:
        """Normalized images (B, 3, H, W) -> the stage outputs the representation needs, [layer1..layer3]
        for conv4 (layer4 is not computed), else [layer1..layer4]; gradients as the caller's mode."""
        return self.backbone.stages(x_b3hw, num_stages=num_stages(self.kind))

    @torch.no_grad()
    def stages(self, images: Any) -> list[torch.Tensor]:
        """uint8 images (B, H, W, 3) (or normalized float (B, 3, H, W) tensors) -> `backbone_stages`."""
        if isinstance(images, torch.Tensor) and images.is_floating_point():
            x = images.to(self.device)
        else:
            x = input_tensor(images, self.mean, self.std, self.device)
        return self.backbone_stages(x)

    def dense(self, stages: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """(B, C, h, w): the hypercolumn at `size` / conv4 at its own size, or the projection at `size`."""
        if self.projector is not None:  # its conv block by block, then its spatial softmax
            conv = self.projector.proj
            return self.projector.activate(linear_over_blocks(self.stage_blocks(stages), conv.weight, conv.bias,
                                                              tuple(size)))
        return assemble(stages, self.kind, self.layers, self.map_size(stages, size))

    def forward(self, stages: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """`dense`: [layer1..layer4] stage outputs -> (B, C, h, w)."""
        return self.dense(stages, size)

    def mask_logits(self, head, stages: Sequence[torch.Tensor], size: tuple[int, int], image_size: int) -> torch.Tensor:
        """A `SegmentationHead`'s foreground logits (B, S, S) at the image size: its 1x1 conv block by block."""
        if self.projector is not None:
            return head(self.dense(stages, size), image_size)
        conv = head.classifier
        logits = linear_over_blocks(self.stage_blocks(stages), conv.weight, conv.bias, self.map_size(stages, size))
        return F.interpolate(logits.float(), size=(image_size, image_size), mode="bilinear", align_corners=False)[:, 0]

    def landmarks(self, regressor, stages: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """regressor(dense(stages, size)) -> (B, K, 2), normalized, computed block by block."""
        if self.projector is not None:
            return regressor(self.dense(stages, size))
        return landmarks_from_blocks(regressor, self.stage_blocks(stages), self.map_size(stages, size))
