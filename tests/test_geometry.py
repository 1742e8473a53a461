"""crop_resize: pixels follow the exact grid map, keypoints the official scaling, padding where the box
leaves the image, masks stay binary."""

from __future__ import annotations

import numpy as np
import pytest

from landmarks.augment.geometry import crop_resize, scale_keypoints


def _centroid(image_hw3: np.ndarray) -> np.ndarray:
    """Intensity-weighted (x, y) centre of a dark image with one bright spot."""
    w = image_hw3[..., 0].astype(np.float64)
    ys, xs = np.mgrid[: w.shape[0], : w.shape[1]]
    return np.array([(w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()])


@pytest.mark.parametrize(
    "box, out_size",
    [
        ((0, 30, 178, 178), (136, 136)),  # CelebA canonical crop: downscale
        ((10.5, 7.25, 40, 30), (96, 72)),  # fractional box, upscale
        ((-20, -10, 150, 150), (50, 50)),  # box leaves the image
        ((3, 40, 100, 60), (100, 120)),  # anisotropic
    ],
)
def test_bright_pixel_and_official_keypoint(box, out_size):
    """The pixel lands at the exact grid map; its keypoint at the official (x - left) * W / width,
    0.5 * (1 - scale) px from it."""
    rng = np.random.default_rng(0)
    left, top, width, height = box
    sx, sy = out_size[0] / width, out_size[1] / height
    for _ in range(5):
        image = np.zeros((218, 178, 3), np.uint8)
        x = int(rng.integers(max(0, left) + 8, min(178, left + width) - 8))
        y = int(rng.integers(max(0, top) + 8, min(218, top + height) - 8))
        image[y, x] = 255
        out, kps, mask = crop_resize(image, box, out_size, np.array([[x, y]], np.float64))
        assert out.shape == (out_size[1], out_size[0], 3) and out.dtype == np.uint8 and mask is None
        np.testing.assert_allclose(kps[0], [(x - left) * sx, (y - top) * sy], atol=1e-9)
        pixel = [(x - left + 0.5) * sx - 0.5, (y - top + 0.5) * sy - 0.5]
        assert np.linalg.norm(_centroid(out) - pixel) < 0.5
        np.testing.assert_allclose(kps[0] - pixel, [0.5 * (1 - sx), 0.5 * (1 - sy)], atol=1e-9)


def test_scale_keypoints_is_the_official_celeba_crop():
    """MAFLAligned: keypoints[:, :, 1] -= 30; keypoints *= imwidth / 178."""
    kps = np.array([[69.0, 109.0], [106.0, 113.0], [0.0, 30.0]])
    official = kps.copy()
    official[:, 1] -= 30
    official *= 136 / 178
    np.testing.assert_allclose(scale_keypoints(kps, (0, 30, 178, 178), (136, 136)), official, atol=1e-12)
    with pytest.raises(ValueError, match="positive size"):
        scale_keypoints(kps, (0, 0, 0, 10), (4, 4))


def test_padding_where_box_leaves_image():
    image = np.full((20, 30, 3), 200, np.uint8)
    out, _, _ = crop_resize(image, (-10, -5, 30, 20), (30, 20))  # scale 1: pure shift
    assert (out[:5] == 0).all() and (out[:, :10] == 0).all()
    assert (out[5:, 10:] == 200).all()


def test_box_fully_outside_is_black_and_interior_box_is_exact_crop():
    image = np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    out, _, _ = crop_resize(image, (100, 100, 10, 10), (10, 10))
    assert (out == 0).all()
    out, _, _ = crop_resize(image, (7, 3, 20, 30), (20, 30))  # integer box, scale 1
    np.testing.assert_array_equal(out, image[3:33, 7:27])


def test_mask_nearest_and_rectangle_position():
    image = np.zeros((60, 80, 3), np.uint8)
    mask = np.zeros((60, 80), np.uint8)
    mask[10:20, 30:50] = 255  # rows 10..19, cols 30..49
    _, _, out = crop_resize(image, (20, 0, 40, 60), (80, 120), mask_hw=mask)  # scale 2, shift 20
    assert set(np.unique(out)) <= {0, 255}
    ys, xs = np.nonzero(out)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (20, 39, 20, 59)


def test_bad_arguments():
    image = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(ValueError, match="positive size"):
        crop_resize(image, (0, 0, 0, 5), (4, 4))
    with pytest.raises(ValueError, match="uint8"):
        crop_resize(image.astype(np.float32), (0, 0, 5, 5), (4, 4))
    with pytest.raises(ValueError, match="does not match"):
        crop_resize(image, (0, 0, 5, 5), (4, 4), mask_hw=np.zeros((9, 10), np.uint8))
