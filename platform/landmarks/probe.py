"""A landmark probe of a backbone in seconds: pretraining's health signal (and the demo's curve).

A linear read-out fitted in closed form, so it can run after every epoch: each stage output of a
few hundred annotated *reference* images is average-pooled to `map_size` x `map_size` and L2-normalized
over its channels at every cell (the hypercolumn's blocks, as the matching descriptors), flattened and
concatenated; a ridge regression (in its dual, an n x n solve) maps that vector to the landmark
coordinates, and predicts them on the *query* images (another split: other identities). The error
is the dataset's metric, inter-ocular error % (faces) or the official PCK % (CUB), beside the error of
predicting the reference images' mean shape, which the read-out becomes as the ridge grows.

    data = load_probe_data("data/mafl", "train", "test", images=256, image_size=96)
    probe(backbone, data, torch.device("cuda"))   # -> {"probe_iod": 12.3, "probe_mean_shape_iod": 38.0}

It follows the landmark regressor's result across backbones and pretraining lengths (docs/demo_study.md:
same order as the regressor's error on random init, MoCo after 1k / 2.5k / 5k steps and a supervised
network), where matching each landmark's mean descriptor did not: early MoCo features matched worse
than random ones while their regression was already better.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .data.budgets import budget_indices
from .data.manifest import Manifest
from .data.normalization import input_stats
from .data.reader import load_split
from .metrics import headline_metric, landmark_score
from .models.representation import Representation


@dataclass
class ProbeData:
    """Annotated images at the network input size: (N, S, S, 3) uint8 images, (N, K, 2) float32 keypoints in
    input pixels, (N, K) bool visible, for the reference (fitted) and the query (scored) rows."""

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


def _descriptors(rep: Representation, images: np.ndarray, map_size: int, batch_size: int) -> torch.Tensor:
    """(N, D): each of the hypercolumn's stage blocks (layer4, layer3, ...) pooled to map_size x map_size,
    L2-normalized per cell, flattened, concatenated."""
    out = []
    for i in range(0, len(images), batch_size):
        stages = rep.stages(torch.from_numpy(np.array(images[i:i + batch_size])))  # a copy: rows may be read-only
        blocks = [F.normalize(F.adaptive_avg_pool2d(s.float(), map_size), dim=1).flatten(1)
                  for s in rep.stage_blocks(stages)]
        out.append(torch.cat(blocks, 1))
    return torch.cat(out).double()


@torch.no_grad()
def probe(backbone: torch.nn.Module, data: ProbeData, device: torch.device, layers: int = 4, map_size: int = 8,
          ridge: float = 0.1, batch_size: int = 64) -> dict[str, float]:
    """{"probe_<metric>": the ridge read-out's error, "probe_mean_shape_<metric>": the mean shape's}.

    ridge: the penalty as a fraction of the mean squared norm of a (centred) reference descriptor.
    The backbone is used in eval mode and left in the mode it was in.
    """
    was_training = backbone.training
    backbone.eval()
    try:
        rep = Representation("hypercolumn", backbone, {}, None, layers, data.mean, data.std, device)
        ref = _descriptors(rep, data.ref_images, map_size, batch_size)  # (N, D)
        query = _descriptors(rep, data.query_images, map_size, batch_size)  # (M, D)
    finally:
        backbone.train(was_training)
    centre = ref.mean(0)
    ref, query = ref - centre, query - centre
    shape = torch.from_numpy(mean_shape(data.ref_keypoints, data.ref_visible)).double().to(ref.device).flatten()
    # Invisible landmarks (CUB) stand at the mean shape, so they pull the fit nowhere.
    visible = torch.from_numpy(np.repeat(data.ref_visible, 2, axis=1)).to(ref.device)
    targets = torch.where(visible, torch.from_numpy(data.ref_keypoints).double().to(ref.device).flatten(1), shape)
    gram = ref @ ref.T  # (N, N)
    penalty = ridge * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    weights = torch.linalg.solve(gram + penalty, targets - shape)  # (N, 2K), the dual coefficients
    pred = ((query @ ref.T) @ weights + shape).reshape(len(query), -1, 2).float().cpu().numpy()
    base = np.repeat(shape.reshape(1, -1, 2).float().cpu().numpy(), len(query), axis=0)
    return {f"probe_{data.metric}": _score(data, pred), f"probe_mean_shape_{data.metric}": _score(data, base)}
