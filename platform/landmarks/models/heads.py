"""Heads over dense descriptors (coordinates: ``landmarks.coords``, the official convention).

- ``Projector``: 1x1 conv from the hypercolumn to a 64/128/256 (.. 1280)-d descriptor, then a
  spatial softmax per channel (Sec. 3.2; the official ``FeatDistiller``).
- ``LandmarkRegressor``: per landmark, 50 intermediate points by spatial soft-argmax over
  1x1-conv heatmaps (logits x100) on the map's ``linspace(-1, 1)`` grid, then a per-landmark
  linear map of their coordinates to the landmark (contrast-landmark
  ``models/keypoint_prediction.py`` ``IntermediateKeypointPredictor``, from Thewlis et al.'s DVE).
- ``SegmentationHead``: 1x1 conv to one foreground logit, upsampled to the image (Table 6).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from landmarks.coords import cell_centers, size_hw


def soft_argmax(logits_bnhw: torch.Tensor) -> torch.Tensor:
    """Expected normalized (x, y) under a spatial softmax of each map: (B, N, h, w) -> (B, N, 2)."""
    b, n, h, w = logits_bnhw.shape
    prob = torch.softmax(logits_bnhw.reshape(b, n, h * w), dim=-1)  # (B, N, h*w)
    xs, ys = cell_centers(h, w, device=logits_bnhw.device, dtype=prob.dtype)
    grid = torch.stack([xs.repeat(h), ys.repeat_interleave(w)], dim=-1)  # (h*w, 2): (x, y) of each cell
    return prob @ grid  # one product for both coordinates


# Official softargmax_mul of the feature projector per output dim (README "Stage 2"; searched on a
# validation set): 7 for 128 and 256 dims, 6.5 for 64. Other dims take 7.
SOFTARGMAX_MUL = {64: 6.5, 128: 7.0, 256: 7.0}
DEFAULT_SOFTARGMAX_MUL = 7.0


def spatial_softmax(logits_bchw: torch.Tensor, mul: float) -> torch.Tensor:
    """softmax of mul x logits over the h x w locations of each channel: (B, C, h, w), sums to 1 per map."""
    b, c, h, w = logits_bchw.shape
    return torch.softmax(mul * logits_bchw.reshape(b, c, h * w), dim=-1).reshape(b, c, h, w)


class Projector(nn.Module):
    """The official feature projector (contrast-landmark ``models/feat_distiller.py`` ``FeatDistiller``,
    ``mode='softmax'``, ``kernel_size=1``): a 1x1 conv with bias from the hypercolumn to `dim`
    channels, then a spatial softmax of ``softargmax_mul`` x its output over the map, per channel.
    The descriptor at a pixel is the vector of the `dim` maps there. ``softargmax_mul=0`` leaves
    the conv output as it is (the official ``linear`` case, and projectors trained before).

    (B, in_channels, h, w) -> (B, dim, h, w).
    """

    def __init__(self, in_channels: int, dim: int, softargmax_mul: float | None = None) -> None:
        super().__init__()
        if in_channels < 1 or dim < 1:
            raise ValueError(f"Projector needs positive sizes, got in_channels={in_channels}, dim={dim}")
        self.in_channels, self.dim = in_channels, dim
        self.softargmax_mul = float(SOFTARGMAX_MUL.get(dim, DEFAULT_SOFTARGMAX_MUL) if softargmax_mul is None
                                    else softargmax_mul)
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=1)

    def activate(self, conv_out_bchw: torch.Tensor) -> torch.Tensor:
        """The spatial softmax of the conv's output (computed elsewhere, e.g. block by block)."""
        if self.softargmax_mul == 0:
            return conv_out_bchw
        return spatial_softmax(conv_out_bchw.float(), self.softargmax_mul)

    def forward(self, feats_bchw: torch.Tensor) -> torch.Tensor:
        return self.activate(self.proj(feats_bchw))

    def extra_repr(self) -> str:
        return f"softargmax_mul={self.softargmax_mul}"


class LandmarkRegressor(nn.Module):
    """Descriptor map (B, C, h, w) -> landmarks (B, K, 2), normalized [-1, 1], x first.

    A bias-free 1x1 conv makes K x P heatmaps (P = ``points_per_landmark``, 50
    in the paper); each is turned into a point by soft-argmax of
    ``softmax_scale * logits`` (x100, SPEC "Regressor") over the map's
    ``linspace(-1, 1)`` grid; landmark k is a bias-free linear map of its own P
    points' 2P coordinates (x0, y0, x1, y1, ...).

    Initialisation as the official ``IntermediateKeypointPredictor``: heatmap
    weights ~ N(0, 1) (``torch.randn``; ``init_std`` scales them), each landmark's
    linear map ``nn.Linear(2P, 2, bias=False)``'s default, U(-1/sqrt(2P), 1/sqrt(2P)).
    With N(0, 1) weights over a few hundred channels the x100 logits start in the
    thousands: every soft-argmax is a hard argmax whose position barely has a gradient,
    and only the linear maps learn until the conv finds its way out (slow in a short
    run; docs/demo_study.md). A small ``init_std`` (0.01) starts soft.
    """

    def __init__(
        self,
        in_channels: int,
        num_landmarks: int,
        points_per_landmark: int = 50,
        softmax_scale: float = 100.0,
        init_std: float = 1.0,
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
        nn.init.normal_(self.heatmaps.weight, mean=0.0, std=float(init_std))
        # weight[k] maps landmark k's P points, flattened as (x0, y0, x1, y1, ...), to (x, y).
        bound = 1.0 / math.sqrt(2 * points_per_landmark)  # nn.Linear's default (kaiming_uniform a=sqrt(5))
        self.weight = nn.Parameter(torch.empty(num_landmarks, 2, 2 * points_per_landmark).uniform_(-bound, bound))

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


class MapRegressor(nn.Module):
    """A plain supervised landmark regressor: a backbone's last stage map (B, C, h, w), flattened, one linear
    layer -> landmarks (B, K, 2), normalized [-1, 1]; h = w = ceil(image_size / 32) for a ResNet.
    The supervised baseline (`evaluate.baseline`), trained end to end from random init."""

    def __init__(self, backbone: nn.Module, num_landmarks: int, image_size: int) -> None:
        super().__init__()
        side = math.ceil(image_size / 32)
        self.backbone, self.num_landmarks = backbone, num_landmarks
        self.readout = nn.Linear(backbone.stage_channels[-1] * side * side, 2 * num_landmarks)

    def forward(self, x_b3hw: torch.Tensor) -> torch.Tensor:
        features = self.backbone.stages(x_b3hw, num_stages=4)[3].flatten(1)  # (B, C h w)
        return self.readout(features).reshape(-1, self.num_landmarks, 2)


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
