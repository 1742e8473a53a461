"""Heads over dense descriptors, and the project's one coordinate convention.

Coordinate convention (used by every head, loss target and metric helper):
landmark coordinates are **normalized to [-1, 1], x first** (``(..., 2)`` =
(x, y)), in the ``align_corners=False`` sense of ``F.grid_sample``: -1 and +1
are the outer *edges* of the image, and a 0-based pixel coordinate ``x``
(pixel centres at integers, the keypoint convention of the Parquet shards)
maps to ``u = 2 * (x + 0.5) / W - 1``. Feature-map cell ``j`` of a ``w``-wide
map therefore sits at ``2 * (j + 0.5) / w - 1``, the same physical point as in
the image because hypercolumns are resized with ``align_corners=False`` too.
(The equivariance loss's correspondence grid is the one exception: the spec
fixes it to ``align_corners=True``; see ``landmarks.losses``.)

Heads:
- ``Projector``: 1x1 conv from the hypercolumn to a 64/128/256 (.. 1280)-d descriptor (Sec. 3.2).
- ``LandmarkRegressor``: per landmark, 50 intermediate points by spatial
  soft-argmax over 1x1-conv heatmaps (logits x100), then a per-landmark linear
  map of their coordinates to the landmark (SPEC "Regressor"; the
  IntermediateKeypointPredictor of Thewlis et al.'s DVE code, which the paper uses).
- ``SegmentationHead``: 1x1 conv to one foreground logit, upsampled to the image (Table 6).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def size_hw(size) -> tuple[float, float]:
    """``size`` as (height, width): an int (square) or a (height, width) pair."""
    if isinstance(size, (int, float)):
        return float(size), float(size)
    h, w = size
    return float(h), float(w)


def pixels_to_normalized(kps_px: torch.Tensor, size) -> torch.Tensor:
    """Pixel (x, y), 0-based, pixel centres at integers -> [-1, 1] (x, y).

    kps_px: (..., 2); size: int or (height, width) of the image. u = 2 (x + 0.5) / W - 1.
    """
    h, w = size_hw(size)
    scale = kps_px.new_tensor([w, h])
    return 2.0 * (kps_px + 0.5) / scale - 1.0


def normalized_to_pixels(norm: torch.Tensor, size) -> torch.Tensor:
    """Inverse of ``pixels_to_normalized``: x = (u + 1) W / 2 - 0.5. norm: (..., 2)."""
    h, w = size_hw(size)
    scale = norm.new_tensor([w, h])
    return (norm + 1.0) * scale / 2.0 - 0.5


def cell_centers(h: int, w: int, device=None, dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalized x of each column (w,) and y of each row (h,) of an h x w map."""
    xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) * (2.0 / w) - 1.0
    ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) * (2.0 / h) - 1.0
    return xs, ys


def soft_argmax(logits_bnhw: torch.Tensor) -> torch.Tensor:
    """Expected normalized (x, y) under a spatial softmax of each map: (B, N, h, w) -> (B, N, 2)."""
    b, n, h, w = logits_bnhw.shape
    prob = torch.softmax(logits_bnhw.reshape(b, n, h * w), dim=-1)  # (B, N, h*w)
    xs, ys = cell_centers(h, w, device=logits_bnhw.device, dtype=prob.dtype)
    grid = torch.stack([xs.repeat(h), ys.repeat_interleave(w)], dim=-1)  # (h*w, 2): (x, y) of each cell
    return prob @ grid  # one product for both coordinates


class Projector(nn.Module):
    """1x1 conv: (B, in_channels, h, w) -> (B, dim, h, w); trained by the equivariance loss."""

    def __init__(self, in_channels: int, dim: int) -> None:
        super().__init__()
        if in_channels < 1 or dim < 1:
            raise ValueError(f"Projector needs positive sizes, got in_channels={in_channels}, dim={dim}")
        self.in_channels, self.dim = in_channels, dim
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=1)

    def forward(self, feats_bchw: torch.Tensor) -> torch.Tensor:
        return self.proj(feats_bchw)


class LandmarkRegressor(nn.Module):
    """Descriptor map (B, C, h, w) -> landmarks (B, K, 2), normalized [-1, 1], x first.

    A bias-free 1x1 conv makes K x P heatmaps (P = ``points_per_landmark``, 50
    in the paper); each is turned into a point by soft-argmax of
    ``softmax_scale * logits`` (x100, SPEC "Regressor"); landmark k is a
    linear map (bias-free, as in DVE) of its own P points' 2P coordinates.
    The linear map starts as the mean of the P points, so an untrained head
    already predicts a plausible location.
    """

    def __init__(
        self,
        in_channels: int,
        num_landmarks: int,
        points_per_landmark: int = 50,
        softmax_scale: float = 100.0,
    ) -> None:
        super().__init__()
        if min(in_channels, num_landmarks, points_per_landmark) < 1:
            raise ValueError(
                f"LandmarkRegressor needs positive sizes, got in_channels={in_channels}, "
                f"num_landmarks={num_landmarks}, points_per_landmark={points_per_landmark}"
            )
        self.num_landmarks, self.points_per_landmark = num_landmarks, points_per_landmark
        self.softmax_scale = float(softmax_scale)
        self.heatmaps = nn.Conv2d(in_channels, num_landmarks * points_per_landmark, 1, bias=False)
        # weight[k] maps landmark k's P points, flattened as (x0, y0, x1, y1, ...), to (x, y).
        init = torch.zeros(num_landmarks, 2, points_per_landmark, 2)
        init[:, 0, :, 0] = 1.0 / points_per_landmark
        init[:, 1, :, 1] = 1.0 / points_per_landmark
        self.weight = nn.Parameter(init.reshape(num_landmarks, 2, 2 * points_per_landmark))

    def intermediate_points(self, feats_bchw: torch.Tensor) -> torch.Tensor:
        """The K x P soft-argmax points, (B, K, P, 2) normalized."""
        b = feats_bchw.shape[0]
        logits = self.heatmaps(feats_bchw) * self.softmax_scale  # (B, K*P, h, w)
        pts = soft_argmax(logits)  # (B, K*P, 2)
        return pts.reshape(b, self.num_landmarks, self.points_per_landmark, 2)

    def combine(self, points_bn2: torch.Tensor) -> torch.Tensor:
        """The K x P soft-argmax points, (B, K*P, 2) or (B, K, P, 2) -> landmarks (B, K, 2)."""
        pts = points_bn2.reshape(points_bn2.shape[0], self.num_landmarks, -1)  # (B, K, 2P)
        return torch.einsum("bki,koi->bko", pts, self.weight)  # (B, K, 2)

    def forward(self, feats_bchw: torch.Tensor) -> torch.Tensor:
        return self.combine(self.intermediate_points(feats_bchw))


class SegmentationHead(nn.Module):
    """1x1 conv to one foreground logit, bilinearly upsampled: (B, C, h, w) -> (B, H, W)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"SegmentationHead needs in_channels >= 1, got {in_channels}")
        self.classifier = nn.Conv2d(in_channels, 1, kernel_size=1)

    def forward(self, feats_bchw: torch.Tensor, size) -> torch.Tensor:
        """Foreground logits at image size ``size`` (int or (H, W)), shape (B, H, W)."""
        h, w = size_hw(size)
        logits = self.classifier(feats_bchw)  # (B, 1, h, w)
        logits = F.interpolate(logits, size=(int(h), int(w)), mode="bilinear", align_corners=False)
        return logits[:, 0]
