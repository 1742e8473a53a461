"""The converter interface: one dataset as distributed -> canonical records.

A converter knows one dataset's on-disk layout and its canonical geometry. It
does no I/O beyond reading its raw files: `landmarks.data.ingest` shards, encodes
and writes what it yields, in parallel, through `landmarks.storage`.

    conv = CONVERTERS["mafl"](root, image_size=96)
    items = conv.splits()            # {"train": [item, ...], "test": [...]}, parsed annotations
    record = conv.load(items["train"][0])   # image after geometry + moved keypoints
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import ConfigError

# Faces are stored larger than the network input and border-cropped at eval time:
# 136 px stored for a 96 px input, 20 px border (official code, Sec. 4 of the paper).
FACE_STORE_RATIO = 136 / 96
FACE_BORDER_RATIO = 20 / 96


def face_border(input_size: int) -> int:
    """Eval-time border crop for faces: 20 px at 96 px input, scaled alike (27 at 128)."""
    return round(input_size * FACE_BORDER_RATIO)


def face_store_size(input_size: int) -> int:
    """Stored image side for faces: input + 2 * border, so the eval border crop gives exactly the
    input size (136 at 96 px input; 182 at 128, the paper's 136/96 ratio rounded to whole borders)."""
    return input_size + 2 * face_border(input_size)


@dataclass(frozen=True)
class DatasetInfo:
    """What `dataset.json` says about a dataset besides its splits."""

    name: str
    landmark_names: tuple[str, ...]
    eye_indices: tuple[int, int] | None  # landmarks defining the inter-ocular distance
    stored_size: int  # stored side in pixels (square); the network input is `input_size`
    input_size: int  # network input side after the eval border crop
    border: int  # eval-time border crop in stored pixels (20 at 136 for faces, 0 for CUB)
    has_masks: bool = False
    # The encoded `image` column: "png" keeps the pixels of the canonical geometry, which are the official
    # loaders' (they decode the source each time); "jpeg" (q95) is smaller and faster to decode.
    image_format: str = "png"

    @property
    def num_landmarks(self) -> int:
        return len(self.landmark_names)


@dataclass
class Record:
    """One image after the canonical geometry.

    image: (H, W, 3) uint8; keypoints: (K, 2) float32, x then y, 0-based stored pixels;
    visible: (K,) bool; mask: (H, W) uint8 in {0, 255} or None.
    """

    image_id: str
    image: np.ndarray
    keypoints: np.ndarray
    visible: np.ndarray
    identity: str | None = None
    mask: np.ndarray | None = None


class BadItem(Exception):
    """Bad input: names the file and, where there is one, the line or row."""

    def __init__(self, source: str, line: int | None, message: str):
        self.source, self.line, self.message = str(source), line, message
        where = f"{self.source}:{line}" if line is not None else self.source
        super().__init__(f"{where}: {message}")

    def __reduce__(self):  # picklable across Ray tasks despite the 3-argument __init__
        return (BadItem, (self.source, self.line, self.message))


@dataclass
class Converter(ABC):
    """Base class. Subclasses set `info` in `__post_init__` and implement `splits` and `load`.

    `skip_bad=True` means: annotation lines that are malformed are collected in
    `self.skipped` instead of raising; `load` still raises `BadItem` and ingest
    decides whether to skip it.
    """

    root: str
    image_size: int = 96  # network input size; the stored size follows the dataset's geometry
    skip_bad: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    skipped: list[BadItem] = field(default_factory=list, init=False)

    info: DatasetInfo = field(init=False)

    @abstractmethod
    def splits(self) -> dict[str, list[Any]]:
        """Parse annotation files; return split name -> list of picklable items, in a fixed order."""

    @abstractmethod
    def load(self, item: Any) -> Record:
        """Read one item's image (and mask), apply the canonical geometry. Raises BadItem."""

    def bad(self, source: str, line: int | None, message: str) -> None:
        """Raise BadItem, or record it when skipping bad input."""
        err = BadItem(source, line, message)
        if not self.skip_bad:
            raise err
        self.skipped.append(err)


def check_keypoints(
    kps: np.ndarray, k: int, width: float | None, height: float | None, source: str, line: int | None
) -> np.ndarray:
    """Validate raw (K, 2) keypoints: count, finiteness, inside [0, width] x [0, height] if given.

    Returns float64 (K, 2). Raises BadItem naming `source` and `line`.
    """
    arr = np.asarray(kps, dtype=np.float64)
    if arr.size != 2 * k:
        raise BadItem(source, line, f"expected {k} landmarks ({2 * k} numbers), got {arr.size} numbers")
    arr = arr.reshape(k, 2)
    if not np.all(np.isfinite(arr)):
        raise BadItem(source, line, "landmark coordinate is NaN or infinite")
    if width is not None and height is not None:
        bad = (arr[:, 0] < -1) | (arr[:, 0] > width + 1) | (arr[:, 1] < -1) | (arr[:, 1] > height + 1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise BadItem(
                source, line, f"landmark {i} at ({arr[i, 0]:.1f}, {arr[i, 1]:.1f}) is outside the "
                f"{width:g}x{height:g} image"
            )
    return arr


def parse_float(token: str, source: str, line: int) -> float:
    try:
        value = float(token)
    except ValueError:
        raise BadItem(source, line, f"not a number: {token!r}") from None
    if math.isnan(value):
        raise BadItem(source, line, "landmark coordinate is NaN")
    return value


def option_choice(name: str, options: dict[str, Any], key: str, choices: tuple[str, ...]) -> str:
    """Converter option `key` if it is one of `choices`, else the first choice (the default).

    Raises ConfigError naming the converter, the option and the valid values.
    """
    value = options.get(key, choices[0])
    if value not in choices:
        raise ConfigError(f"{name}: option {key} must be one of {', '.join(choices)}, got {value!r}")
    return value
