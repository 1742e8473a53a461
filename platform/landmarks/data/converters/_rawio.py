"""Reading the raw files of a dataset as distributed: text lines, images, masks, landmark checks.

Shared by the real-dataset converters. Every failure is a `BadItem` that names the
file and, where there is one, the line, so that a user can open the file and fix it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import scipy.io.matlab
from PIL import Image

from ...errors import ConfigError
from .base import BadItem

# What scipy.io.loadmat raises for a file it cannot read (v7.3 HDF5 files: NotImplementedError).
MAT_ERRORS = (OSError, ValueError, TypeError, NotImplementedError, scipy.io.matlab.MatReadError)


def check_setup(name: str, root: str | None, options: dict, valid: tuple[str, ...] = ()) -> None:
    """ConfigError unless a root is given and every option is one the converter takes."""
    if not root:
        raise ConfigError(f"{name}: needs --root, the dataset's top directory")
    unknown = set(options) - set(valid)
    if unknown:
        raise ConfigError(f"{name}: unknown option(s) {sorted(unknown)}; valid: {list(valid) or 'none'}")


def require_file(path: Path, what: str) -> Path:
    """`path` if it is a file, else BadItem saying which file of the layout is missing."""
    if not path.is_file():
        raise BadItem(str(path), None, f"{what} not found (is --root the dataset's top directory?)")
    return path


def read_text(path: Path) -> str:
    """A UTF-8 text file's contents; BadItem naming the file if it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise BadItem(str(path), None, f"not a UTF-8 text file ({err.reason})") from None
    except OSError as err:
        raise BadItem(str(path), None, f"cannot read: {err.strerror or err}") from None


def read_lines(path: Path, keep_blank: bool = False) -> list[tuple[int, str]]:
    """(1-based line number, stripped text) of every non-blank line of a text file.

    keep_blank: keep blank lines too (files whose line n belongs to row n of another file),
    except trailing ones.
    """
    lines = list(enumerate((ln.strip() for ln in read_text(path).rstrip().splitlines()), start=1))
    return lines if keep_blank else [(n, s) for n, s in lines if s]


def where(source: Path | str, line: int | None) -> str:
    return f"{source}:{line}" if line is not None else str(source)


def read_image(path: Path | str, mode: str, listed_at: str) -> np.ndarray:
    """Decode an image file to a uint8 array: mode "RGB" -> (H, W, 3), "L" -> (H, W).

    `listed_at` ("file:line" of the annotation that names the image) goes into the message.
    Pixel arrays are taken as stored (no EXIF rotation): the annotations refer to them.
    """
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert(mode))
    except FileNotFoundError:
        raise BadItem(str(path), None, f"image file not found (listed at {listed_at})") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:  # corrupt/truncated
        raise BadItem(str(path), None, f"cannot decode image ({err}; listed at {listed_at})") from None


def check_inside(
    kps_k2: np.ndarray,
    width: int,
    height: int,
    source: Path | str,
    lines: int | Sequence[int] | None,
    visible: np.ndarray | None = None,
) -> None:
    """Raise BadItem for the first (visible) landmark outside a width x height image.

    Same 1 px tolerance as `base.check_keypoints`; used where the image size is only known
    once the image is read (`load`). `lines`: one line for all landmarks or one per landmark.
    """
    x, y = kps_k2[:, 0], kps_k2[:, 1]
    bad = (x < -1) | (x > width + 1) | (y < -1) | (y > height + 1)
    if visible is not None:
        bad &= visible
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        line = lines if lines is None or isinstance(lines, int) else lines[i]
        raise BadItem(
            str(source),
            line,
            f"landmark {i} at ({x[i]:.1f}, {y[i]:.1f}) is outside the {width}x{height} image",
        )


def safe_relpath(text: str) -> str | None:
    """A relative path with '/' separators, or None if it is absolute or escapes its root.

    Some distributions (MTFL, AFLW lists) were written on Windows: backslashes become '/'.
    """
    rel = PurePosixPath(text.replace("\\", "/"))
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        return None
    return rel.as_posix()
