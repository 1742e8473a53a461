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


class PositionCode(nn.Module):
    """A fake backbone whose every stage is a one-hot code of the pixel's position: a perfect descriptor
    of *where*, so the template of a landmark that sits at the same pixel in every image finds it."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size
        self.stage_channels = (size * size,) * 4

    def stages(self, x: torch.Tensor, num_stages: int = 4) -> list[torch.Tensor]:
        b, s = x.shape[0], self.size
        code = torch.eye(s * s, device=x.device).reshape(s * s, s, s)[None].expand(b, -1, -1, -1)
        return [code] * num_stages


def _data(keypoints: np.ndarray, n: int = 6, size: int = 16) -> ProbeData:
    images = np.zeros((n, size, size, 3), np.uint8)
    kps = np.broadcast_to(keypoints, (n, *keypoints.shape)).astype(np.float32).copy()
    visible = np.ones(kps.shape[:2], bool)
    return ProbeData(images, kps, visible, images.copy(), kps.copy(), visible.copy(), (0, 1), [0.5] * 3, [0.25] * 3,
                     size)


def test_probe_finds_landmarks_that_a_descriptor_pins_down():
    # the hypercolumn is 8 x 8 for a 16 px input: cell centres at linspace(0, 15, 8) px; put the landmarks there
    centres = np.linspace(0, 15, 8)
    kps = np.array([[centres[1], centres[2]], [centres[6], centres[2]], [centres[4], centres[5]]])
    result = probe(PositionCode(8), _data(kps), torch.device("cpu"))
    assert result["probe_iod"] == pytest.approx(0.0, abs=1e-4)
    assert result["probe_mean_shape_iod"] == pytest.approx(0.0, abs=1e-4)  # every face the same


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
