"""The landmark probe (landmarks.probe): its plumbing on hand-made descriptors, the mean-shape baseline by a
naive loop, and a real backbone on tiny faces."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from landmarks.metrics import inter_ocular_error
from landmarks.models import build_backbone
from landmarks.probe import ProbeData, load_probe_data, mean_shape, probe


class RedDots(nn.Module):
    """A fake backbone whose every stage is (red channel, 1) at the input's resolution: after the probe's
    per-cell normalisation, a one-hot code of the cell that holds a red dot, from which a linear map reads
    the dot's position exactly."""

    stage_channels = (2, 2, 2, 2)

    def stages(self, x: torch.Tensor, num_stages: int = 4) -> list[torch.Tensor]:
        red = x[:, :1]  # the inputs are normalized with mean 0, std 1: the red channel / 255
        return [torch.cat((red, torch.ones_like(red)), 1)] * num_stages


def _dots(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """16 x 16 images with a red 2 x 2 dot on one cell of the 8 x 8 grid; landmark 0 at its centre, landmark 1
    4 px to its right (an inter-ocular distance of 4 px)."""
    images = np.zeros((n, 16, 16, 3), np.uint8)
    cells = np.stack((rng.integers(0, 6, n), rng.integers(0, 8, n)), 1)  # (column, row)
    for i, (cx, cy) in enumerate(cells):
        images[i, 2 * cy:2 * cy + 2, 2 * cx:2 * cx + 2, 0] = 255
    centre = 2 * cells + 0.5
    return images, np.stack((centre, centre + (4, 0)), 1).astype(np.float32)


def test_a_linear_read_out_of_informative_features_finds_the_landmarks():
    rng = np.random.default_rng(0)
    (ref, ref_kps), (query, query_kps) = _dots(512, rng), _dots(64, rng)
    data = ProbeData(ref, ref_kps, np.ones((512, 2), bool), query, query_kps, np.ones((64, 2), bool), (0, 1),
                     [0.0] * 3, [1.0] * 3, 16)
    result = probe(RedDots(), data, torch.device("cpu"), ridge=1e-4)
    assert result["probe_mean_shape_iod"] > 50  # the dots are all over the image
    assert result["probe_iod"] < 1.0  # 1 % of 4 px: the ridge read-out recovers them
    loose = probe(RedDots(), data, torch.device("cpu"), ridge=1e6)  # a huge penalty: the mean shape
    assert loose["probe_iod"] == pytest.approx(result["probe_mean_shape_iod"], rel=0.01)


def test_mean_shape_baseline_is_the_naive_mean():
    rng = np.random.default_rng(0)
    ref = rng.uniform(0, 31, (20, 5, 2)).astype(np.float32)
    visible = rng.random((20, 5)) > 0.2
    expected = np.zeros((5, 2))
    for k in range(5):  # a naive loop over the rows where landmark k is visible
        rows = [ref[i, k] for i in range(20) if visible[i, k]]
        expected[k] = np.mean(rows, axis=0)
    np.testing.assert_allclose(mean_shape(ref, visible), expected, atol=1e-5)


def test_probe_on_a_real_backbone_and_tiny_faces(eval_data):
    data = load_probe_data(str(eval_data["faces"]), "train", "val", images=16, image_size=32)
    assert len(data.ref_images) == 8 and data.ref_images.shape[1:] == (32, 32, 3) and data.metric == "iod"
    backbone = build_backbone("resnet18").train()
    result = probe(backbone, data, torch.device("cpu"))
    assert backbone.training  # left as it was
    assert set(result) == {"probe_iod", "probe_mean_shape_iod"} and all(np.isfinite(v) for v in result.values())
    shape = np.repeat(mean_shape(data.ref_keypoints, data.ref_visible)[None], len(data.query_keypoints), axis=0)
    assert result["probe_mean_shape_iod"] == pytest.approx(
        inter_ocular_error(shape, data.query_keypoints, (0, 1), visible=data.query_visible))
    with pytest.raises(ValueError, match="no landmarks"):
        load_probe_data(str(eval_data["blank"]), "train", "test", images=4, image_size=32)
