"""Canonical crop + resize of an image with its keypoints and mask (numpy + PIL).

Coordinate convention, used by every converter and stored in the Parquet shards:

* an image's pixel grid has **pixel centres at integer coordinates**: pixel column i
  covers [i - 0.5, i + 0.5), so (0, 0) is the centre of the top-left pixel;
* a crop box (left, top, width, height) is in **pixel-edge coordinates**, like
  PIL's boxes: (0, 0, w, h) is the whole w x h image, and the box may be
  fractional and may leave the image (zero padding there);
* cropping the box and resizing it to out_size = (W, H) moves a keypoint by the
  **official loaders' scaling** (`scale_keypoints`), with no half-pixel shift:

      x' = (x - left) * W / width
      y' = (y - top)  * H / height

  as contrast-landmark's `data_loader/data_loaders_face.py` (`MAFLAligned`:
  `kp[:, :, 1] -= 30; kp *= imwidth / 178.`) and `data_loaders_animal.py` (`CUB`: fractions
  of the image times the stored side) do. That is what produced the paper's numbers. The
  pixels themselves move by the exact map between the two grids,
  (x - left + 0.5) * W / width - 0.5, so a stored keypoint sits 0.5 * (1 - W / width) px
  right of (below) the content it was annotated on: 0.12 px for the 178 -> 136 CelebA crop,
  0 at scale 1, -0.5 px at 2x. The annotations are taken as the official code takes them.

Pixels are what the official loaders compute: a box with integer corners (every official crop) is
cut out alone, zero-padded where it leaves the image (`crop_padded`, the official `pad_and_crop`),
and resized alone with PIL's bilinear filter (`pil_resize`), which widens its support when
downscaling (antialiased) and renormalises its weights at the crop's edges, in Pillow 8.4's pass
order (the official environment's). Masks are resized with nearest neighbour, so they stay binary.
Only a fractional box (our own in-the-wild face crop) is resampled inside a margin of real pixels.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

Box = tuple[float, float, float, float]  # (left, top, width, height), pixel-edge coordinates


def crop_resize(
    image_hw3: np.ndarray,
    box: Box,
    out_size: tuple[int, int],
    keypoints_k2: np.ndarray | None = None,
    mask_hw: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Crop `box` out of an image (zero-padded where it leaves the image) and resize it.

    Args:
        image_hw3: (H, W, 3) uint8 RGB image.
        box: (left, top, width, height) in pixel-edge coordinates, width and height > 0.
        out_size: (W_out, H_out) of the result.
        keypoints_k2: optional (K, 2) keypoints, x then y, in the image's pixel coordinates.
        mask_hw: optional (H, W) uint8 mask with the image's height and width.

    Returns:
        image (H_out, W_out, 3) uint8; keypoints (K, 2) float64 moved by `scale_keypoints`
        with the same box (None if not given); mask (H_out, W_out) uint8 (None if not given).
    """
    left, top, width, height = (float(v) for v in box)
    out_w, out_h = int(out_size[0]), int(out_size[1])
    if not (width > 0 and height > 0 and math.isfinite(left) and math.isfinite(top)):
        raise ValueError(f"crop box must be finite with positive size, got {box}")
    if out_w <= 0 or out_h <= 0:
        raise ValueError(f"out_size must be positive, got {out_size}")
    if image_hw3.ndim != 3 or image_hw3.shape[2] != 3 or image_hw3.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image_hw3.shape} {image_hw3.dtype}")

    # A fractional box: bilinear downscaling reads up to `scale` pixels beyond it, so real pixels (or
    # zeros) are kept there and the result does not depend on where the box sits in the image.
    margin = math.ceil(max(width / out_w, height / out_h, 1.0)) + 1
    image = _resize_box(image_hw3, left, top, width, height, out_w, out_h, margin, Image.Resampling.BILINEAR)

    keypoints = None if keypoints_k2 is None else scale_keypoints(keypoints_k2, box, out_size)

    mask = None
    if mask_hw is not None:
        if mask_hw.shape != image_hw3.shape[:2]:
            raise ValueError(f"mask {mask_hw.shape} does not match image {image_hw3.shape[:2]}")
        mask = _resize_box(
            mask_hw.astype(np.uint8), left, top, width, height, out_w, out_h, 0, Image.Resampling.NEAREST
        )
    return image, keypoints, mask


def scale_keypoints(keypoints_k2: np.ndarray, box: Box, out_size: tuple[int, int]) -> np.ndarray:
    """Keypoints of `box` resized to out_size = (W, H), the official way (no half-pixel shift).

    x' = (x - left) * W / width, y' = (y - top) * H / height (module docstring): contrast-landmark
    `data_loaders_face.py` / `data_loaders_animal.py`. Returns (K, 2) float64.
    """
    left, top, width, height = (float(v) for v in box)
    if not (width > 0 and height > 0):
        raise ValueError(f"box must have a positive size, got {box}")
    kps = np.asarray(keypoints_k2, dtype=np.float64).reshape(-1, 2)
    scale = np.array([out_size[0] / width, out_size[1] / height])
    return (kps - (left, top)) * scale


def pil_resize(array: np.ndarray, size: tuple[int, int], resample: int = Image.Resampling.BILINEAR) -> np.ndarray:
    """PIL's resize of a whole (H, W[, 3]) uint8 array to size = (W', H'), in Pillow 8.4's order (the
    official environment): the horizontal pass, then the vertical one, each rounded to 8 bits. Pillow
    13 runs the vertical pass first when the height shrinks more than twice as much as the width."""
    pil = Image.fromarray(np.ascontiguousarray(array))
    width, height = (int(v) for v in size)
    if resample == Image.Resampling.NEAREST or pil.size == (width, height):
        return np.asarray(pil.resize((width, height), resample))
    if pil.size[0] != width:
        pil = pil.resize((width, pil.size[1]), resample)
    if pil.size[1] != height:
        pil = pil.resize((width, height), resample)
    return np.asarray(pil)


def crop_padded(array: np.ndarray, left: int, top: int, width: int, height: int) -> np.ndarray:
    """array[top:top + height, left:left + width] with zeros where the box leaves the array (the official
    `pad_and_crop`)."""
    h, w = array.shape[:2]
    if left >= 0 and top >= 0 and left + width <= w and top + height <= h:
        return array[top:top + height, left:left + width]
    out = np.zeros((height, width) + array.shape[2:], dtype=array.dtype)
    sx0, sy0, sx1, sy1 = max(left, 0), max(top, 0), min(left + width, w), min(top + height, h)
    if sx0 < sx1 and sy0 < sy1:
        out[sy0 - top:sy1 - top, sx0 - left:sx1 - left] = array[sy0:sy1, sx0:sx1]
    return out


def _resize_box(
    array: np.ndarray,
    left: float,
    top: float,
    width: float,
    height: float,
    out_w: int,
    out_h: int,
    margin: int,
    resample: int,
) -> np.ndarray:
    """Resize the box of `array` ((H, W) or (H, W, 3) uint8) to (out_h, out_w), zero-padded."""
    if all(float(v).is_integer() for v in (left, top, width, height)):  # the official crop, then resize
        box = crop_padded(array, int(left), int(top), int(width), int(height))
        return pil_resize(box, (out_w, out_h), resample)
    x0, y0 = math.floor(left) - margin, math.floor(top) - margin
    x1, y1 = math.ceil(left + width) + margin, math.ceil(top + height) + margin
    h, w = array.shape[:2]
    if x0 >= 0 and y0 >= 0 and x1 <= w and y1 <= h:
        canvas = array[y0:y1, x0:x1]
    else:
        canvas = np.zeros((y1 - y0, x1 - x0) + array.shape[2:], dtype=array.dtype)
        sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if sx0 < sx1 and sy0 < sy1:
            canvas[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = array[sy0:sy1, sx0:sx1]
    pil = Image.fromarray(np.ascontiguousarray(canvas))
    rel = (left - x0, top - y0, left - x0 + width, top - y0 + height)
    return np.asarray(pil.resize((out_w, out_h), resample, box=rel))
