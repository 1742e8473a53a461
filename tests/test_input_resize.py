"""A dataset ingested for another input size (stored 64 + 2 x 8 px, a 32 px job): the training path (TPS
inputs of the regressor), the test path (`eval_geometry`, what the feature cache and every evaluation
read) and the prediction path (`Preprocessing`, back to photo pixels) put a keypoint on the same spot of
the resized image, the spot its bright dot moved to."""

import numpy as np
import pytest
import torch

from landmarks.augment.tps import TPSStrength
from landmarks.coords import resize_keypoints
from landmarks.data.preprocessing import Preprocessing
from landmarks.data.reader import eval_geometry
from landmarks.evaluate.regress import warped_inputs

STORED, BORDER, SIZE = 80, 8, 32
# Integer stored pixels (an identity TPS snaps keypoints to pixels), near both ends of the 64 px crop and
# in the middle: (S - 1) / (s - 1) scaling would put the ends 0.17 px off the dot.
DOTS = np.array([[[18.0, 21.0]], [[40.0, 40.0]], [[62.0, 59.0]]])  # (B, K=1, 2) stored pixels
NO_WARP = TPSStrength(0.0, 0.0, 0.0, 0.0, 0.0)


def _dots() -> np.ndarray:
    """(B, STORED, STORED, 3) uint8: a Gaussian dot (sigma 3 px) on black at each image's keypoint."""
    yy, xx = np.mgrid[0:STORED, 0:STORED].astype(np.float64)
    d2 = (xx[None] - DOTS[:, 0, 0, None, None]) ** 2 + (yy[None] - DOTS[:, 0, 1, None, None]) ** 2
    dot = np.round(255.0 * np.exp(-d2 / (2 * 3.0 ** 2))).astype(np.uint8)
    return np.repeat(dot[..., None], 3, axis=-1)


def _centroid(images: np.ndarray) -> np.ndarray:
    """(B, H, W, 3) or (B, 3, H, W) -> (B, 2): each image's intensity centroid (x, y) in its pixels."""
    g = np.asarray(images, np.float64)
    g = g.mean(-1) if g.shape[-1] == 3 else g.mean(1)
    yy, xx = np.mgrid[0:g.shape[1], 0:g.shape[2]]
    total = g.sum((1, 2))
    return np.stack([(g * xx).sum((1, 2)) / total, (g * yy).sum((1, 2)) / total], -1)


def test_resize_keypoints_is_the_pixel_centre_map_and_inverts():
    kps = np.array([[-0.5, 0.0], [63.5, 31.0]])
    np.testing.assert_allclose(resize_keypoints(kps, 64, 32), [[-0.5, -0.25], [31.5, 15.25]])  # edges stay edges
    np.testing.assert_allclose(resize_keypoints(resize_keypoints(kps, 64, 32), 32, 64), kps)
    t = resize_keypoints(torch.tensor(kps, dtype=torch.float32), (64, 64), (32, 32))
    assert t.dtype == torch.float32 and torch.allclose(t, torch.tensor([[-0.5, -0.25], [31.5, 15.25]]))


def test_training_test_and_prediction_paths_agree_on_a_resized_dataset():
    images = _dots()
    test = eval_geometry({"image": images, "keypoints": DOTS.astype(np.float32)}, BORDER, SIZE)
    assert test["image"].shape == (3, SIZE, SIZE, 3)
    on_dot = _centroid(test["image"])
    np.testing.assert_allclose(test["keypoints"][:, 0], on_dot, atol=0.05)

    x, kps = warped_inputs(torch.from_numpy(images), torch.from_numpy(DOTS).float(), BORDER, SIZE,
                           torch.Generator().manual_seed(0), strength=NO_WARP)
    assert x.shape == (3, 3, SIZE, SIZE)
    np.testing.assert_allclose(kps.numpy(), test["keypoints"], atol=1e-4)  # train and test: one position
    np.testing.assert_allclose(_centroid(x.numpy()), on_dot, atol=0.05)

    pre = Preprocessing((0.0, 0.0, 1.0, 1.0), STORED, BORDER, SIZE, (0.5,) * 3, (0.25,) * 3)
    for b in range(len(images)):  # the photo is the stored image itself (a whole-image crop at scale 1)
        seen, box = pre.image_to_input(images[b])
        np.testing.assert_array_equal(seen, test["image"][b])
        back = pre.input_to_original(test["keypoints"][b], box)
        np.testing.assert_allclose(back, DOTS[b], atol=1e-4)  # the inverse of the test path
        np.testing.assert_allclose(pre.input_to_original(_centroid(seen[None]), box)[0], DOTS[b, 0], atol=0.15)


@pytest.mark.parametrize("side", [16, 48])
def test_resized_keypoints_follow_their_dot_up_and_down(side):
    """Upscaling too: 16 -> 32 (2x) and 48 -> 32; (S - 1) / (s - 1) is 0.5 px off at 2x."""
    from landmarks.coords import resize_with_keypoints

    yy, xx = torch.meshgrid(torch.arange(side, dtype=torch.float64), torch.arange(side, dtype=torch.float64),
                            indexing="ij")
    dot = torch.tensor([[side * 0.3, side * 0.7]], dtype=torch.float64)
    img = torch.exp(-((xx - dot[0, 0]) ** 2 + (yy - dot[0, 1]) ** 2) / (2 * (side / 12) ** 2))[None, None]
    x, kps = resize_with_keypoints(img, SIZE, dot[None])
    np.testing.assert_allclose(kps[0].numpy(), _centroid(x.numpy()), atol=0.05)
