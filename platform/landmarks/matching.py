"""The official landmark-matching protocol (Table 4), shared by jobs/match.py and the projector's
validation: pairs of consecutive images, TPS-warped at the stored size, matched descriptor to descriptor.

contrast-landmark ``train_feature_projector.py`` ``validate`` with ``MAFLAligned(pair_image=True,
TPS_aug=True)`` and batches of 2: every image i is warped twice at the stored size (136 px for faces),
b_i = warp1(image_i), a_i = warp2(b_i) (`augment.tps.match_pair_warp`), cropped by the eval border
and cast to uint8; its keypoints are snapped through the warps. For each pair (i, j) = (2k, 2k+1)
the first image's a_i is the source; for each of its ground-truth landmarks the nearest descriptor
(`metrics.matching_errors`) is looked up

- in b_i, "same identity": ground truth = the landmark through warp 1;
- in b_j, "different identity": ground truth = the other face's landmark through its warp 1.

Every landmark counts (the official code filters none). Errors are in pixels of a 70 x 70 image.
Descriptors: each stage block of a hypercolumn L2-normalized over channels, a projection (or conv4)
as a whole, at `size` (the official ``val_out_size`` 96: the input size; conv4 at its own 6 x 6).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .augment.tps import MATCH, TPSStrength, match_pair_warp
from .augment.views import border_crop, normalize
from .coords import resize_with_keypoints
from .metrics import matching_errors
from .models.representation import Representation

Describe = Callable[[torch.Tensor], torch.Tensor]  # normalized input (B, 3, S, S) -> descriptors (B, C, h, w)


def describer(rep: Representation, size: tuple[int, int]) -> Describe:
    """Descriptors of `rep` at `size` (conv4: its own size), L2-normalized block by block."""
    @torch.no_grad()
    def describe(x_b3hw: torch.Tensor) -> torch.Tensor:
        dense = rep.dense(rep.stages(x_b3hw), size).float()
        return torch.cat([F.normalize(part, dim=1) for part in dense.split(rep.blocks, dim=1)], dim=1)

    return describe


def _inputs(images: torch.Tensor, kps: torch.Tensor, border: int, image_size: int, mean, std):
    """Warped stored images (B, 3, S, S) in 0..255 -> normalized inputs, keypoints in input pixels."""
    x = border_crop(images, border).clamp(0, 255).to(torch.uint8).float() / 255.0  # the official .to(uint8)
    x, kps = resize_with_keypoints(x, image_size, kps - border)  # for a dataset ingested for another size
    return normalize(x, mean, std), kps


@torch.no_grad()
def match_pairs(describe: Describe, images_u8: np.ndarray, keypoints: np.ndarray, border: int, image_size: int,
                mean, std, generator: torch.Generator, device: torch.device, pairs_per_batch: int = 8,
                progress: Callable[[], None] | None = None, strength: TPSStrength = MATCH,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Same- and different-identity errors (P, K) of the P = N // 2 consecutive pairs (module docstring).

    images_u8: (N, S, S, 3) stored images; keypoints: (N, K, 2) stored pixels.
    """
    n = len(images_u8) // 2 * 2
    same, diff = [], []
    for start in range(0, n, 2 * pairs_per_batch):
        stop = min(start + 2 * pairs_per_batch, n)
        images = torch.from_numpy(np.ascontiguousarray(images_u8[start:stop])).to(device).permute(0, 3, 1, 2)
        kps = torch.from_numpy(np.ascontiguousarray(keypoints[start:stop])).to(device).float()
        img_a, img_b, kps_a, kps_b = match_pair_warp(images, kps, strength, generator)
        x_a, kps_a = _inputs(img_a[0::2], kps_a[0::2], border, image_size, mean, std)  # sources: first images
        x_b, kps_b = _inputs(img_b, kps_b, border, image_size, mean, std)
        src, tgt = describe(x_a), describe(x_b)
        same.append(matching_errors(src, tgt[0::2], kps_a, kps_b[0::2], image_size).cpu())
        diff.append(matching_errors(src, tgt[1::2], kps_a, kps_b[1::2], image_size).cpu())
        if progress is not None:
            progress()
    return torch.cat(same), torch.cat(diff)
