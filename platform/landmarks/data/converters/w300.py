"""300W, 68 landmarks: the official bounding boxes + .pts files -> canonical face crops.

Layout under `root` (the iBUG distribution):

    Bounding Boxes/bounding_boxes_{afw,helen_trainset,lfpw_trainset,helen_testset,lfpw_testset,ibug}.mat
        1 x N cell of structs {imgName, bb_detector, bb_ground_truth}; boxes are
        [xmin ymin xmax ymax] in 1-based (MATLAB) pixels
    afw/, helen/trainset/, lfpw/trainset/, helen/testset/, lfpw/testset/, ibug/
        <imgName> images with <stem>.pts beside them: `version: 1`, `n_points: 68`, `{`,
        68 lines `x y` (1-based pixels), `}`

Splits (Ren et al., "Face alignment at 3000 fps", as in DVE `ThreeHundredW`):
train = AFW + HELEN trainset + LFPW trainset (3148), test = HELEN testset + LFPW testset +
IBUG (689). As in DVE, only IBUG box entries named `image*` are used (the others have no
images). A box entry whose .pts file is absent is not part of the dataset on disk: it is
counted in `self.absent` and left out, so that a subset of the images works.

Geometry, as contrast-landmark `data_loader/data_loaders_face.py` `ThreeHundredW.__getitem__`
("basically copied from matlab code"), in 1-based (MATLAB) coordinates: with
bw = xmax - xmin + 1, bh = ymax - ymin + 1, bcx = xmin + (bw + 1) / 2, bcy = ymin + (bh + 1) / 2,
the image is resized by fac = 52 / bw (face 52 px wide) to int(W * fac) x int(H * fac) (PIL's default
filter, bicubic), the 100 x 100 window from (cutl, cutt) = (floor(fac * bcx) - 50, floor(fac * bcy) - 52)
(0-based edge coordinates; `pad_and_crop`, zero padding) is cut out of that, and resized to S x S,
S = face_store_size(image_size) (`Resize(imwidth)`, bilinear): two resamples, as the official. The
.pts landmarks (1-based) move as the official ones do, `kp * fac - cut`, then `- 1` ("from matlab to
python style"), then `* imwidth / 100` (no half-pixel shift):

    x' = (x * fac - cutl - 1) * S / 100,  y' = (y * fac - cutt - 1) * S / 100
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
from PIL import Image

from ...augment.geometry import crop_padded, pil_resize, scale_keypoints
from ._rawio import MAT_ERRORS, check_inside, check_setup, read_image, read_lines
from .base import (
    BadItem,
    Converter,
    DatasetInfo,
    Record,
    check_keypoints,
    face_border,
    face_store_size,
    parse_float,
)

logger = logging.getLogger(__name__)

K = 68
FACE_PX, CROP_PX, SHIFT_UP_PX = 52, 100, 2  # DVE ThreeHundredW: bw_ = 52, 100 px crop, `by - pp - 2`
# (bounding box file stem, image folder) per split, in DVE's order
SUBSETS = {
    "train": (("afw", "afw"), ("helen_trainset", "helen/trainset"), ("lfpw_trainset", "lfpw/trainset")),
    "test": (("helen_testset", "helen/testset"), ("lfpw_testset", "lfpw/testset"), ("ibug", "ibug")),
}
# iBUG 68-point markup: jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth 48-67
LANDMARK_NAMES = tuple(
    [f"jaw_{i}" for i in range(17)]
    + [f"right_brow_{i}" for i in range(5)]
    + [f"left_brow_{i}" for i in range(5)]
    + [f"nose_{i}" for i in range(9)]
    + [f"right_eye_{i}" for i in range(6)]
    + [f"left_eye_{i}" for i in range(6)]
    + [f"mouth_{i}" for i in range(20)]
)


@dataclass(frozen=True)
class W300Item:
    image_id: str
    path: str
    keypoints: tuple[float, ...]  # x0, y0, ... as in the .pts file (1-based)
    source: str  # the .pts file
    lines: tuple[int, ...]  # .pts line of each landmark
    bb: tuple[float, float, float, float]  # bb_ground_truth [xmin ymin xmax ymax], 1-based
    listed_at: str  # "<bounding box file>:<entry>" that names the image


@dataclass(frozen=True)
class Window:
    """The official crop of one face: the image is scaled by `fac`, then 100 x 100 px are cut
    from (left, top) of the scaled image (0-based edge coordinates: official `cutl`, `cutt`)."""

    fac: float
    left: int
    top: int


def official_window(bb_ground_truth: tuple[float, ...] | np.ndarray) -> Window:
    """The official 100 px window around a face made 52 px wide (module docstring)."""
    xmin, ymin, xmax, ymax = (float(v) for v in bb_ground_truth)
    bw, bh = xmax - xmin + 1, ymax - ymin + 1
    bcx, bcy = xmin + (bw + 1) / 2, ymin + (bh + 1) / 2
    fac = FACE_PX / bw
    half = CROP_PX // 2
    return Window(fac, math.floor(fac * bcx) - half, math.floor(fac * bcy) - half - SHIFT_UP_PX)


def window_keypoints(kps_1based: np.ndarray, window: Window, size: int) -> np.ndarray:
    """Official keypoint map: `kp * fac - cut`, `- 1` (MATLAB to 0-based), `* size / 100`."""
    scaled = np.asarray(kps_1based, dtype=np.float64) * window.fac - 1.0
    return scale_keypoints(scaled, (window.left, window.top, CROP_PX, CROP_PX), (size, size))


def read_pts(path: Path) -> tuple[np.ndarray, tuple[int, ...]]:
    """(68, 2) 1-based points of a .pts file and the line of each. Raises BadItem."""
    src = str(path)
    lines = read_lines(path)
    header = {}
    body_start = None
    for i, (line, text) in enumerate(lines):
        if text == "{":
            body_start = i + 1
            break
        key, _, value = text.partition(":")
        if not value:
            raise BadItem(src, line, f"expected `key: value` header or `{{`, got {text!r}")
        header[key.strip()] = (line, value.strip())
    if body_start is None:
        raise BadItem(src, None, "no `{` opening the point list")
    if "n_points" in header and header["n_points"][1] != str(K):
        raise BadItem(src, header["n_points"][0], f"n_points is {header['n_points'][1]}, expected {K}")
    points, point_lines = [], []
    for line, text in lines[body_start:]:
        if text == "}":
            break
        tokens = text.split()
        if len(tokens) != 2:
            raise BadItem(src, line, f"expected `x y`, got {text!r}")
        points.append([parse_float(t, src, line) for t in tokens])
        point_lines.append(line)
    else:
        raise BadItem(src, None, "no `}` closing the point list")
    kps = check_keypoints(points, K, None, None, src, point_lines[-1] if point_lines else None)
    return kps, tuple(point_lines)


def _boxes(mat_path: Path) -> list[tuple[int, str, np.ndarray]]:
    """(entry number, imgName, bb_ground_truth) of an official bounding box file."""
    try:
        mat = scipy.io.loadmat(str(mat_path), simplify_cells=True)
    except MAT_ERRORS as err:
        raise BadItem(str(mat_path), None, f"cannot read .mat file: {err}") from None
    if "bounding_boxes" not in mat:
        raise BadItem(str(mat_path), None, f"no variable 'bounding_boxes' (has {sorted(mat)})")
    entries = mat["bounding_boxes"]
    entries = [entries] if isinstance(entries, dict) else list(np.ravel(entries))
    out = []
    for n, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict) or "imgName" not in entry or "bb_ground_truth" not in entry:
            raise BadItem(str(mat_path), n, "entry lacks imgName / bb_ground_truth")
        out.append((n, str(entry["imgName"]), np.asarray(entry["bb_ground_truth"], dtype=np.float64).ravel()))
    return out


@dataclass
class W300(Converter):
    """300W: 3148 train / 689 test faces, 68 landmarks, inter-ocular = outer eye corners 36, 45."""

    def __post_init__(self) -> None:
        check_setup("300w", self.root, self.options)
        self.info = DatasetInfo(
            name="300w",
            landmark_names=LANDMARK_NAMES,
            eye_indices=(36, 45),
            stored_size=face_store_size(self.image_size),
            input_size=self.image_size,
            border=face_border(self.image_size),
        )
        self.absent: dict[str, int] = {}

    def splits(self) -> dict[str, list[Any]]:
        root = Path(self.root)
        box_dir = root / "Bounding Boxes"
        if not any(
            (box_dir / f"bounding_boxes_{s}.mat").is_file() for sub in SUBSETS.values() for s, _ in sub
        ):
            raise BadItem(str(box_dir), None, "no official bounding_boxes_*.mat files found")
        out: dict[str, list[Any]] = {}
        self.absent = {}
        for split, subsets in SUBSETS.items():
            out[split] = []
            for stem, folder in subsets:
                mat_path = box_dir / f"bounding_boxes_{stem}.mat"
                if not mat_path.is_file():
                    logger.warning("300w: %s absent, subset %s left out", mat_path, folder)
                    continue
                for n, name, bb in _boxes(mat_path):
                    if stem == "ibug" and not name.startswith("image"):
                        continue
                    item = self._item(root, folder, name, bb, mat_path, n)
                    if item is not None:
                        out[split].append(item)
        if any(self.absent.values()):
            logger.warning("300w: box entries without a .pts file (not on disk): %s", self.absent)
        return out

    def _item(
        self, root: Path, folder: str, name: str, bb: np.ndarray, mat_path: Path, n: int
    ) -> W300Item | None:
        image_path = root / folder / name
        pts_path = image_path.with_suffix(".pts")
        if not pts_path.is_file():
            self.absent[folder] = self.absent.get(folder, 0) + 1
            return None
        try:
            if bb.size != 4 or not np.all(np.isfinite(bb)) or bb[2] < bb[0] or bb[3] < bb[1]:
                raise BadItem(
                    str(mat_path),
                    n,
                    f"entry {n} ({name}): bb_ground_truth must be [xmin ymin xmax ymax], got {bb.tolist()}",
                )
            kps, lines = read_pts(pts_path)
        except BadItem as err:
            self.bad(err.source, err.line, err.message)
            return None
        return W300Item(
            f"{folder}/{name}",
            str(image_path),
            tuple(kps.ravel().tolist()),
            str(pts_path),
            lines,
            (float(bb[0]), float(bb[1]), float(bb[2]), float(bb[3])),
            f"{mat_path}:{n}",
        )

    def load(self, item: W300Item) -> Record:
        image = read_image(item.path, "RGB", item.listed_at)
        h, w = image.shape[:2]
        kps = np.asarray(item.keypoints, dtype=np.float64).reshape(K, 2)
        check_inside(kps - 1.0, w, h, item.source, item.lines)
        window = official_window(item.bb)
        if int(w * window.fac) < 1 or int(h * window.fac) < 1:
            raise BadItem(item.listed_at, None, f"face box {item.bb} is too wide for the {w}x{h} image")
        size = self.info.stored_size
        scaled = pil_resize(image, (int(w * window.fac), int(h * window.fac)), Image.Resampling.BICUBIC)
        out = pil_resize(crop_padded(scaled, window.left, window.top, CROP_PX, CROP_PX), (size, size))
        moved = window_keypoints(kps, window, size)
        return Record(item.image_id, out, moved.astype(np.float32), np.ones(K, bool))
