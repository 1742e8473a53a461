"""The project's one landmark coordinate convention: the official code's.

Pixels: (x, y), 0-based, pixel centres at integer coordinates (the Parquet shards' keypoints).

Normalized: [-1, 1], x first, with -1 and +1 the centres of the first and last pixel (the
``align_corners=True`` sense of ``F.grid_sample``), as the official code normalizes keypoints
(contrast-landmark ``kp_normalize``: u = 2 x / (W - 1) - 1) and lays out the regressor's
soft-argmax grid (``torch.linspace(-1, 1, W)`` in ``IntermediateKeypointPredictor``) and the
thin-plate-spline warps (``utils/tps.py``). A map of any size covers the image edge to edge in
this sense: cell j of a w-wide map sits at ``linspace(-1, 1, w)[j]``, whatever the image size.

Resizing: an image resized whole (PIL's ``resize``, ``F.interpolate(align_corners=False)``) maps pixel
edges to pixel edges, so a pixel position follows x' = (x + 0.5) W' / W - 0.5 (``resize_keypoints``;
``resize_with_keypoints`` resizes a batch and its keypoints together). Every resize of an input batch
(evaluation reads, TPS-augmented training inputs, matching, prediction and its way back) goes through
them. The converters' crops are the exception: they scale keypoints the official way
(``augment.geometry.scale_keypoints``), as the paper's annotations were made.

Pure torch; sizes are an int (square) or (height, width).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def size_hw(size) -> tuple[float, float]:
    """``size`` as (height, width): an int (square) or a (height, width) pair."""
    if isinstance(size, (int, float)):
        return float(size), float(size)
    h, w = size
    return float(h), float(w)


def pixels_to_normalized(kps_px: torch.Tensor, size) -> torch.Tensor:
    """Pixel (x, y) -> normalized (x, y): u = 2 x / (W - 1) - 1. kps_px: (..., 2)."""
    h, w = size_hw(size)
    scale = kps_px.new_tensor([2.0 / max(w - 1.0, 1.0), 2.0 / max(h - 1.0, 1.0)])
    return kps_px * scale - 1.0


def normalized_to_pixels(norm: torch.Tensor, size) -> torch.Tensor:
    """Inverse of ``pixels_to_normalized``: x = (u + 1) (W - 1) / 2. norm: (..., 2)."""
    h, w = size_hw(size)
    scale = norm.new_tensor([(w - 1.0) / 2.0, (h - 1.0) / 2.0])
    return (norm + 1.0) * scale


def cell_centers(h: int, w: int, device=None, dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalized x of each column (w,) and y of each row (h,) of an h x w map: linspace(-1, 1)."""
    return (torch.linspace(-1.0, 1.0, w, device=device, dtype=dtype),
            torch.linspace(-1.0, 1.0, h, device=device, dtype=dtype))


def normalized_grid(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(H, W, 2) normalized (x, y) of every cell of an H x W map (a ``grid_sample`` identity grid)."""
    xs, ys = cell_centers(height, width, device, dtype)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((xx, yy), dim=-1)


def resize_keypoints(kps_px, from_size, to_size):
    """Pixel (x, y) in an image of `from_size` -> in that image resized whole to `to_size`, pixel centres
    at integers: x' = (x + 0.5) W' / W - 0.5 (PIL's and ``F.interpolate(align_corners=False)``'s map).

    kps_px: (..., 2) torch tensor or numpy array; returns the same kind and float dtype (numpy integers
    become float64). The inverse is ``resize_keypoints(kps, to_size, from_size)``.
    """
    (fh, fw), (th, tw) = size_hw(from_size), size_hw(to_size)
    if isinstance(kps_px, torch.Tensor):
        scale = kps_px.new_tensor([tw / fw, th / fh])
    else:
        kps_px = np.asarray(kps_px)
        kps_px = kps_px if np.issubdtype(kps_px.dtype, np.floating) else kps_px.astype(np.float64)
        scale = np.array([tw / fw, th / fh], dtype=kps_px.dtype)
    return (kps_px + 0.5) * scale - 0.5


def resize_with_keypoints(images_bchw: torch.Tensor, size: int, kps_px=None):
    """Float images (B, C, h, w) -> (B, C, size, size), bilinear with antialiasing (``align_corners=False``,
    PIL's bilinear filter in float), and their pixel keypoints (B, K, 2) (tensor or numpy, or None) moved
    with them by `resize_keypoints`. Returns (images, keypoints); both unchanged at that size already."""
    h, w = images_bchw.shape[-2:]
    if (h, w) == (size, size):
        return images_bchw, kps_px
    x = F.interpolate(images_bchw, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x, None if kps_px is None else resize_keypoints(kps_px, (h, w), size)
