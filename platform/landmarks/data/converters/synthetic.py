"""Synthetic faces: a seeded procedural dataset of face-like images with the 5 MAFL landmarks.

The built-in dataset of the demo and of most tests; `synthetic_render` draws the images. Each
shows one head (face, hair, ears, neck, shoulders) on a cluttered background, and its landmarks
are defined by visible structure, never by a marker: 0 left eye and 1 right eye, the centre of
the eye opening (the iris wanders with the gaze; "left" is image-left in a frontal face, as
CelebA's lefteye_x); 2 nose, the tip at the foot of a shaded ridge above the nostrils; 3, 4 left
and right mouth, the ends of the dark line between the lips. All five lie inside the central
`input_size` crop. The mask is the head (face, ears, hair) as 0/255, minus any occluder. Stored
size `face_store_size(image_size)` (136 for 96), inter-ocular distance about 30 px at 136 as in
MAFL, `border = face_border(image_size)`.

Options (`options={...}`; `jobs/ingest.py synthetic-faces --num-images N --seed S`):
    num_images           total images over all splits (default 4000; at least 3)
    seed                 non-negative integer (default 0); same seed -> identical records
    images_per_identity  default 6; an identity keeps face shape, skin, hair, eye colour and
                         glasses, while pose, expression, light and background change per image
    difficulty           "easy" | "normal" (default) | "hard": ranges of rotation (8/22/40 deg),
                         yaw, pitch, scale and shift; background clutter and decoy eyes; light,
                         noise and blur; occluders (hard only). Table: `LEVELS` below.

Identities: max(ceil(N / images_per_identity), min(N, 10)), so that even a tiny set has several
per split; image i belongs to identity floor(i * n_ids / N) (contiguous, balanced blocks). The
seed shuffles identities into test, val and train: max(round(0.1 * n_ids), min(2, n_ids // 3))
each to test and val (80/10/10), the rest to train; no identity crosses splits.

Determinism: image i is drawn from its own generator seeded by (seed, i) and its identity from
(seed, identity), so `load(item)` returns the same bytes in any order or process (given the same
numpy and Pillow), and items can be rendered in parallel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ...errors import ConfigError
from .base import Converter, DatasetInfo, Record, face_border, face_store_size
from .synthetic_render import render_face

LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")

# rot: max in-plane degrees; yaw, pitch: max radians; scale: face-size range; shift: max offset as
# a fraction of the image; blobs: background blob count range; pairs (decoy eyes), stripes,
# occluder, blur: probabilities; noise: sensor noise sigma (0-255); light: shading strength;
# shades: whether identities with glasses may wear sunglasses (hiding the eyes).
LEVELS = {
    "easy": {"rot": 8, "yaw": 0.2, "pitch": 0.08, "scale": (0.92, 1.08), "shift": 0.03, "blobs": (2, 5),
             "pairs": 0.1, "stripes": 0.2, "occluder": 0.0, "noise": 2.0, "blur": 0.1, "light": 0.25,
             "shades": False},
    "normal": {"rot": 22, "yaw": 0.45, "pitch": 0.15, "scale": (0.8, 1.15), "shift": 0.07, "blobs": (6, 14),
               "pairs": 0.4, "stripes": 0.4, "occluder": 0.0, "noise": 4.0, "blur": 0.3, "light": 0.45,
               "shades": True},
    "hard": {"rot": 40, "yaw": 0.7, "pitch": 0.22, "scale": (0.7, 1.2), "shift": 0.1, "blobs": (12, 24),
             "pairs": 0.8, "stripes": 0.6, "occluder": 0.35, "noise": 7.0, "blur": 0.5, "light": 0.65,
             "shades": True},
}
DIFFICULTIES = tuple(LEVELS)
_DEFAULTS = {"num_images": 4000, "seed": 0, "images_per_identity": 6, "difficulty": "normal"}
_MIN_IDENTITIES = 10
_TAG_SPLIT = 2  # random stream of the split assignment (the renderer uses tags 0 and 1)


class SyntheticItem(NamedTuple):
    split: str
    index: int  # global image index, 0..num_images-1
    identity: int


@dataclass
class SyntheticFaces(Converter):
    """Procedural faces; `root` is unused (nothing is read from disk)."""

    root: str | None = None

    def __post_init__(self) -> None:
        opts = {**_DEFAULTS, **self.options}
        if set(opts) != set(_DEFAULTS):
            raise ConfigError(f"synthetic-faces: unknown option(s) {sorted(set(opts) - set(_DEFAULTS))}; "
                              f"valid: {list(_DEFAULTS)}")
        for key, low in (("num_images", 3), ("seed", 0), ("images_per_identity", 1)):
            v = opts[key]
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
                raise ConfigError(f"synthetic-faces: option {key} must be an integer >= {low}, got {v!r}")
        if opts["difficulty"] not in LEVELS:
            raise ConfigError(f"synthetic-faces: option difficulty must be one of {list(DIFFICULTIES)}, "
                              f"got {opts['difficulty']!r}")
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size < 32:
            raise ConfigError(f"synthetic-faces: image_size must be an integer >= 32, "
                              f"got {self.image_size!r}")
        self.num_images, self.seed = int(opts["num_images"]), int(opts["seed"])
        self.difficulty = opts["difficulty"]
        self.num_identities = max(-(-self.num_images // int(opts["images_per_identity"])),
                                  min(self.num_images, _MIN_IDENTITIES))
        self.info = DatasetInfo(
            name="synthetic-faces", landmark_names=LANDMARK_NAMES, eye_indices=(0, 1),
            stored_size=face_store_size(self.image_size), input_size=self.image_size,
            border=face_border(self.image_size), has_masks=True, image_format="jpeg",
        )

    def identity_of(self, index: int) -> int:
        return index * self.num_identities // self.num_images

    def splits(self) -> dict[str, list[SyntheticItem]]:
        n_ids = self.num_identities
        order = np.random.default_rng([self.seed, _TAG_SPLIT]).permutation(n_ids).tolist()
        k = max(round(0.1 * n_ids), min(2, n_ids // 3))
        split_of = {i: "test" if r < k else "val" if r < 2 * k else "train" for r, i in enumerate(order)}
        out: dict[str, list[SyntheticItem]] = {"train": [], "val": [], "test": []}
        for i in range(self.num_images):
            ident = self.identity_of(i)
            out[split_of[ident]].append(SyntheticItem(split_of[ident], i, ident))
        return out

    def load(self, item: SyntheticItem) -> Record:
        index = item[1]
        if not 0 <= index < self.num_images:
            raise ValueError(f"synthetic-faces: image index {index} outside 0..{self.num_images - 1}")
        ident = self.identity_of(index)
        image, kps, mask = render_face(self.info.stored_size, self.info.border, self.seed, ident, index,
                                       LEVELS[self.difficulty])
        return Record(image_id=f"synthetic/{index:07d}", image=image, keypoints=kps,
                      visible=np.ones(len(LANDMARK_NAMES), dtype=bool), identity=f"id{ident:06d}", mask=mask)
