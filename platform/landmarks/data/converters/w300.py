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

Geometry (DVE `ThreeHundredW.__getitem__`, "copied from matlab code"): the ground-truth box
is scaled so that its width becomes 52 px, and a 100 x 100 window around its centre is cut
(shifted 2 px up); in the image scaled by fac = 52 / bw that window is
    left = floor(fac * bcx) - 50,  top = floor(fac * bcy) - 52  (0-based edge coordinates)
with bw = xmax - xmin + 1, bcx = xmin + (bw + 1) / 2, bcy = ymin + (bh + 1) / 2. We cut the
same window from the original image, (left / fac, top / fac, 100 / fac, 100 / fac), zero-padded,
and resize it once to S x S, S = face_store_size(image_size). The .pts landmarks are made
0-based (DVE: `kp - 1`) and moved with the exact map of `landmarks.augment.geometry`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io

from ...augment.geometry import crop_resize
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
    keypoints: tuple[float, ...]  # x0, y0, ..., 0-based
    source: str  # the .pts file
    lines: tuple[int, ...]  # .pts line of each landmark
    box: tuple[float, float, float, float]  # crop window (left, top, width, height) in the image
    listed_at: str  # "<bounding box file>:<entry>" that names the image


def crop_window(bb_ground_truth: np.ndarray) -> tuple[float, float, float, float]:
    """DVE's 100 px window around a 52 px face, as a box in original-image edge coordinates."""
    xmin, ymin, xmax, ymax = (float(v) for v in bb_ground_truth)
    bw, bh = xmax - xmin + 1, ymax - ymin + 1
    bcx, bcy = xmin + (bw + 1) / 2, ymin + (bh + 1) / 2
    fac = FACE_PX / bw
    half = CROP_PX // 2
    left = math.floor(fac * bcx) - half
    top = math.floor(fac * bcy) - half - SHIFT_UP_PX
    return (left / fac, top / fac, CROP_PX / fac, CROP_PX / fac)


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
            image_size=face_store_size(self.image_size),
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
            tuple((kps - 1.0).ravel().tolist()),
            str(pts_path),
            lines,
            crop_window(bb),
            f"{mat_path}:{n}",
        )

    def load(self, item: W300Item) -> Record:
        image = read_image(item.path, "RGB", item.listed_at)
        h, w = image.shape[:2]
        kps = np.asarray(item.keypoints, dtype=np.float64).reshape(K, 2)
        check_inside(kps, w, h, item.source, item.lines)
        size = self.info.image_size
        out, moved, _ = crop_resize(image, item.box, (size, size), kps)
        return Record(item.image_id, out, moved.astype(np.float32), np.ones(K, bool))
