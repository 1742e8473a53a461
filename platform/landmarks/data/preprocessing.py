"""How an image becomes a trained model's network input, and how its landmarks go back (`Preprocessing`).

    pre = Preprocessing.from_dict(model.meta["preprocessing"])
    x, box = pre.image_to_input(image)            # any photo (H, W, 3) -> the network input (S, S, 3)
    pre.input_to_original(landmarks_k2, box)      # input pixels (K, 2) -> pixels of the photo

Read from the training dataset's dataset.json: the canonical crop of an original image (a fraction of
it: the aligned CelebA crop for faces, the whole image elsewhere), the stored side, the eval border, the
input side and the input normalisation. A trained model keeps it as a dict in its meta.json
(`models.artifact`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..augment.geometry import crop_resize
from ..coords import resize_keypoints
from ..errors import UserError
from .normalization import input_stats
from .reader import eval_geometry

WHOLE = (0.0, 0.0, 1.0, 1.0)


def canonical_crop(dataset: str) -> tuple[float, float, float, float]:
    """The part of an original image a dataset's converter keeps, as fractions (left, top, width, height):
    the official aligned CelebA crop (top 30, 178 x 178 of 178 x 218) for celeba and mafl; the whole
    image for the others (they are squashed whole, or were cropped before they reach us)."""
    from .converters.celeba import ALIGNED_BOX, ALIGNED_WH

    if dataset in ("celeba", "mafl"):
        left, top, width, height = ALIGNED_BOX
        return left / ALIGNED_WH[0], top / ALIGNED_WH[1], width / ALIGNED_WH[0], height / ALIGNED_WH[1]
    return WHOLE


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the network input (and how its landmarks go back), from a dataset's geometry."""

    crop: tuple[float, float, float, float]  # of the original image, fractions (left, top, width, height)
    stored_size: int  # the crop resized to this square
    border: int  # then this many pixels cut from each side (the eval border)
    input_size: int  # and the rest resized to this (normally it already is)
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_manifest(cls, manifest: Any, input_size: int) -> Preprocessing:
        """The preprocessing of a dataset (its `Manifest`) read at `input_size`."""
        mean, std, _ = input_stats(manifest)
        return cls(canonical_crop(manifest.name), int(manifest.stored_size), int(manifest.border), int(input_size),
                   tuple(mean), tuple(std))

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        try:
            return cls(tuple(data["crop"]), int(data["stored_size"]), int(data["border"]), int(data["input_size"]),
                       tuple(data["mean"]), tuple(data["std"]))
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"the model's preprocessing metadata is incomplete ({err!r}); it was not saved by "
                            "a landmarks job of this version") from None

    def box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The crop box (left, top, width, height) in pixels of a `width` x `height` original image."""
        left, top, w, h = self.crop
        return left * width, top * height, w * width, h * height

    def image_to_input(self, image_hw3: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float, float]]:
        """An original RGB image (H, W, 3) uint8 -> (the network input (S, S, 3) uint8, its crop box)."""
        box = self.box(image_hw3.shape[1], image_hw3.shape[0])
        stored, _, _ = crop_resize(image_hw3, box, (self.stored_size, self.stored_size))
        return self.stored_to_input(stored[None])[0], box

    def stored_to_input(self, images_bhw3: np.ndarray) -> np.ndarray:
        """Images at the stored size (B, s, s, 3) -> the network input (B, S, S, 3), as every evaluation
        reads them (`data.reader.eval_geometry`: the eval border crop, a resize only for another size)."""
        return eval_geometry({"image": images_bhw3}, self.border, self.input_size)["image"]

    def input_to_stored(self, kps_px: np.ndarray) -> np.ndarray:
        """Keypoints (..., 2) in input pixels -> stored-image pixels (before the border crop): the
        inverse of `eval_geometry`'s keypoint mapping."""
        side = self.stored_size - 2 * self.border
        return resize_keypoints(np.asarray(kps_px, np.float64), self.input_size, side) + self.border

    def input_to_original(self, kps_px: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
        """Keypoints in input pixels -> pixels of the original image cropped by `box`: the inverse of the
        converters' official scaling (`augment.geometry.scale_keypoints`)."""
        left, top, width, height = box
        stored = self.input_to_stored(kps_px)
        return stored * np.array([width / self.stored_size, height / self.stored_size]) + np.array([left, top])


def dataset_preprocessing(manifest: Any, input_size: int) -> dict:
    """A dataset's `Preprocessing` at `input_size`, as a trained model's meta.json keeps it."""
    return asdict(Preprocessing.from_manifest(manifest, input_size))


__all__ = ["Preprocessing", "canonical_crop", "dataset_preprocessing"]
