"""A landmark probe of a backbone in seconds: pretraining's health signal (and the demo's curve).

Training-free, so it can run after every epoch: the hypercolumn of a few hundred annotated images,
L2-normalized stage block by stage block (the matching protocol's descriptors); one template per
landmark, the mean descriptor at that landmark over the *reference* images; on each *query* image
(another split: other identities), each landmark is predicted at the cell whose descriptor is
nearest its template (the largest dot product). The error is the dataset's metric, inter-ocular
error % (faces) or the official PCK % (CUB), beside the error of predicting the reference images'
mean shape, the floor a representation must beat to carry landmark information at all.

    data = load_probe_data("data/mafl", "train", "test", images=256, image_size=96)
    probe(backbone, data, torch.device("cuda"))   # -> {"probe_iod": 12.3, "probe_mean_shape_iod": 38.0}

A backbone that learns landmark-aware features lowers the error epoch by epoch; a collapsing one
raises it. It measures correspondence across identities (what the paper's matching and regression
rest on), not the regression head's result itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .coords import normalized_to_pixels, pixels_to_normalized
from .data.budgets import budget_indices
from .data.manifest import Manifest
from .data.normalization import input_stats
from .data.reader import load_split
from .matching import describer
from .metrics import headline_metric, landmark_score
from .models.representation import Representation, dense_size


@dataclass
class ProbeData:
    """Annotated images at the network input size: (N, S, S, 3) uint8 images, (N, K, 2) float32 keypoints in
    input pixels, (N, K) bool visible, for the reference (templates) and the query (scored) rows."""

    ref_images: np.ndarray
    ref_keypoints: np.ndarray
    ref_visible: np.ndarray
    query_images: np.ndarray
    query_keypoints: np.ndarray
    query_visible: np.ndarray
    eye_indices: tuple[int, int] | None
    mean: list[float]
    std: list[float]
    image_size: int

    @property
    def metric(self) -> str:
        return headline_metric(self.eye_indices)


def load_probe_data(path: str, ref_split: str, query_split: str, images: int, image_size: int,
                    seed: int = 0) -> ProbeData:
    """`images` // 2 seeded rows of each split (the eval geometry: border crop, the input size)."""
    manifest = Manifest.load(path)
    if manifest.K == 0:
        raise ValueError(f"{path}: dataset {manifest.name!r} has no landmarks to probe")
    parts = []
    for split in (ref_split, query_split):
        rows = manifest.split(split).rows
        picked = np.sort(budget_indices(rows, min(rows, max(images // 2, 1)), seed))
        parts.append(load_split(path, split, image_size, rows=picked))
    mean, std, _ = input_stats(manifest)
    ref, query = parts
    return ProbeData(ref["image"], ref["keypoints"], ref["visible"], query["image"], query["keypoints"],
                     query["visible"], tuple(manifest.eye_indices) if manifest.eye_indices else None,
                     list(mean), list(std), image_size)


def _score(data: ProbeData, pred: np.ndarray) -> float:
    return landmark_score(data.metric, pred, data.query_keypoints, data.query_visible, data.image_size,
                          data.eye_indices)


def mean_shape(keypoints: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """(K, 2): each landmark's mean position over the rows where it is visible (0 where it never is)."""
    weight = visible.astype(np.float64)[..., None]  # (N, K, 1)
    return ((keypoints * weight).sum(0) / np.maximum(weight.sum(0), 1.0)).astype(np.float32)


def _descriptors(describe, images: np.ndarray, device: torch.device, batch_size: int) -> torch.Tensor:
    return torch.cat([describe(torch.from_numpy(images[i:i + batch_size]).to(device))
                      for i in range(0, len(images), batch_size)])


@torch.no_grad()
def probe(backbone: torch.nn.Module, data: ProbeData, device: torch.device, layers: int = 4,
          batch_size: int = 64) -> dict[str, float]:
    """{"probe_<metric>": the template probe's error, "probe_mean_shape_<metric>": the mean shape's}.

    The backbone is used in eval mode and left in the mode it was in.
    """
    was_training = backbone.training
    backbone.eval()
    try:
        rep = Representation("hypercolumn", backbone, {}, None, layers, data.mean, data.std, device)
        size = dense_size("hypercolumn", data.image_size)
        describe = describer(rep, size)
        ref = _descriptors(describe, data.ref_images, device, batch_size)  # (N, C, h, w)
        kps = pixels_to_normalized(torch.from_numpy(data.ref_keypoints).to(device), data.image_size)
        at = F.grid_sample(ref, kps[:, :, None, :].to(ref.dtype), align_corners=True)[..., 0]  # (N, C, K)
        vis = torch.from_numpy(data.ref_visible).to(device).to(ref.dtype)[:, None, :]  # (N, 1, K)
        templates = F.normalize((at * vis).sum(0).T, dim=1)  # (K, C)
        query = _descriptors(describe, data.query_images, device, batch_size)  # (M, C, h, w)
        m, _, h, w = query.shape
        best = torch.einsum("kc,mcp->mkp", templates, query.reshape(m, -1, h * w)).argmax(-1)  # (M, K)
        cells = torch.stack((torch.linspace(-1, 1, w, device=device)[best % w],
                             torch.linspace(-1, 1, h, device=device)[best // w]), -1)  # (M, K, 2) normalized
        pred = normalized_to_pixels(cells, data.image_size).cpu().numpy()
    finally:
        backbone.train(was_training)
    shape = np.repeat(mean_shape(data.ref_keypoints, data.ref_visible)[None], len(data.query_keypoints), axis=0)
    return {f"probe_{data.metric}": _score(data, pred), f"probe_mean_shape_{data.metric}": _score(data, shape)}
