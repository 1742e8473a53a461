"""AFLW faces, 5 landmarks, in the two versions the paper evaluates on.

AFLWMTFL (AFLW_M, Thewlis et al. ICCV 2017 / DVE protocol), under `root`:

    aflw_cropped/facedata_cropped.csv   header row; columns `crop_file` and `set` (found by name);
                                        landmarks in the 10 columns from 0-based index 4 on
                                        (the spec's 1-based "columns 5..14"; DVE reads them as
                                        `iloc[:, 4:14]`) = x1, y1, ..., x5, y5, 1-based pixels;
                                        rows with set == 1 are the training set (10122 in full)
    aflw_cropped/<crop_file>            150x150 face crops
    MTFL/testing.txt                    `path x1..x5 y1..y5 [gender smile glasses pose]`, 1-based
                                        (2995 rows in full); paths may use Windows backslashes
    MTFL/<path>                         150x150 face crops (the TCDCN release)

AFLW (AFLW_R, Jakab et al. / DVE `AFLW`), under `root`:

    aflw_{train,test}_images.txt        one image path a line, relative to output/
    aflw_{train,test}_keypoints.mat     `gt`: N x 5 x 2 landmarks in (y, x) order, 0-based
                                        pixels; `hw`: N x 2 image (height, width)
    output/<path>                       face crops

Geometry, as contrast-landmark `data_loader/data_loaders_face.py` (`AFLW_MTFL`, `AFLW`): both
sets are already face crops, and the whole crop is resized to S x S, S = face_store_size(image_size)
(136 at 96; the eval border crop then leaves the input size, as for every face set). Keypoints
move by the official scaling, no half-pixel shift (`landmarks.augment.geometry.scale_keypoints`):

* AFLW_M: `kp -= 1; kp *= imwidth / 150` after `Resize(imwidth)` of the 150x150 crops, i.e.
  x' = (x - 1) * S / W, y' = (y - 1) * S / H for a W x H crop (150 x 150 as distributed). An
  MTFL test image that is not square is padded to a centred square of side D = max(W, H) first
  (keeps the aspect ratio, as `Resize(imwidth)` does) and x' = (x - 1 + (D - W) / 2) * S / D.
* AFLW_R: `kp *= imwidth / sizes` with `Resize((imwidth, imwidth))`: x' = x * S / w,
  y' = y * S / h with (h, w) the row's `hw`, whatever the size of the image file.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io

from ...augment.geometry import crop_resize, scale_keypoints
from ...errors import ConfigError
from ._rawio import (
    MAT_ERRORS,
    check_inside,
    check_setup,
    read_image,
    read_lines,
    read_text,
    require_file,
    safe_relpath,
    where,
)
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

LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")
K = len(LANDMARK_NAMES)
AFLW_M_CROP = 150  # side of the aflw_cropped training crops
AFLW_M_LANDMARK_COL = 4  # 0-based index of x1 in facedata_cropped.csv (DVE: iloc[:, 4:14])


@dataclass(frozen=True)
class AFLWItem:
    """One face: image path, raw landmarks made 0-based, in the image or in `frame_wh`."""

    image_id: str
    path: str
    keypoints: tuple[float, ...]  # x0, y0, ..., 0-based
    source: str  # annotation file, for error messages
    line: int
    frame_wh: tuple[float, float] | None = None  # AFLW_R `hw` (as w, h); None: the image itself
    square: bool = False  # pad to a centred square before resizing (MTFL test images)


def _face_info(name: str, image_size: int) -> DatasetInfo:
    return DatasetInfo(
        name=name,
        landmark_names=LANDMARK_NAMES,
        eye_indices=(0, 1),
        stored_size=face_store_size(image_size),
        input_size=image_size,
        border=face_border(image_size),
    )


def _load_crop(item: AFLWItem, store: int) -> Record:
    """Whole crop (or its centred square) -> store x store, landmarks scaled the official way."""
    image = read_image(item.path, "RGB", where(item.source, item.line))
    h, w = image.shape[:2]
    kps = np.asarray(item.keypoints, dtype=np.float64).reshape(K, 2)
    box = (0.0, 0.0, float(w), float(h))
    if item.square and w != h:
        side = max(w, h)
        box = ((w - side) / 2, (h - side) / 2, float(side), float(side))
    if item.frame_wh is None:  # landmarks in the image's pixels: they follow the box
        check_inside(kps, w, h, item.source, item.line)
        frame = box
    else:  # AFLW_R: landmarks in the `hw` frame (checked against it in `splits`), scaled from it
        frame = (0.0, 0.0, *item.frame_wh)
    out, _, _ = crop_resize(image, box, (store, store))
    moved = scale_keypoints(kps, frame, (store, store))
    return Record(item.image_id, out, moved.astype(np.float32), np.ones(K, bool))


@dataclass
class AFLWMTFL(Converter):
    """AFLW_M: train = aflw_cropped rows with set == 1, test = the MTFL AFLW test images.

    Option `landmark_col`: 0-based column of x1 in facedata_cropped.csv (default 4).
    """

    def __post_init__(self) -> None:
        check_setup("aflw-mtfl", self.root, self.options, ("landmark_col",))
        col = self.options.get("landmark_col", AFLW_M_LANDMARK_COL)
        if isinstance(col, bool) or not isinstance(col, int) or col < 0:
            raise ConfigError(f"aflw-mtfl: option landmark_col must be a non-negative integer, got {col!r}")
        self.landmark_col = col
        self.info = _face_info("aflw-mtfl", self.image_size)

    def splits(self) -> dict[str, list[Any]]:
        return {"train": self._train(), "test": self._test()}

    def _train(self) -> list[AFLWItem]:
        path = require_file(Path(self.root) / "aflw_cropped" / "facedata_cropped.csv", "AFLW_M training csv")
        first = self.landmark_col
        items, src = [], str(path)
        with io.StringIO(read_text(path), newline="") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            for col in ("crop_file", "set"):
                if col not in header:
                    raise BadItem(src, 1, f"header has no column {col!r} (columns: {header})")
            crop_col, set_col = header.index("crop_file"), header.index("set")
            lm_cols = range(first, first + 2 * K)
            if len(header) < first + 2 * K or crop_col in lm_cols or set_col in lm_cols:
                raise BadItem(
                    src,
                    1,
                    f"landmark columns {first}..{first + 2 * K - 1} (0-based) do not fit "
                    f"the header {header}; set the `landmark_col` option",
                )
            for row in reader:
                line = reader.line_num
                if not any(cell.strip() for cell in row):
                    continue
                try:
                    if len(row) != len(header):
                        raise BadItem(src, line, f"expected {len(header)} fields, got {len(row)}")
                    if parse_float(row[set_col], src, line) != 1:
                        continue
                    rel = safe_relpath(row[crop_col].strip())
                    if rel is None:
                        raise BadItem(src, line, f"bad crop_file path {row[crop_col]!r}")
                    raw = [parse_float(row[c], src, line) for c in lm_cols]  # x1, y1, ..., 1-based
                    kps = check_keypoints(raw, K, AFLW_M_CROP, AFLW_M_CROP, src, line) - 1.0
                except BadItem as err:
                    self.bad(err.source, err.line, err.message)
                    continue
                items.append(
                    AFLWItem(
                        f"aflw_cropped/{rel}", str(path.parent / rel), tuple(kps.ravel().tolist()), src, line
                    )
                )
        return items

    def _test(self) -> list[AFLWItem]:
        path = require_file(Path(self.root) / "MTFL" / "testing.txt", "MTFL test list")
        items, src = [], str(path)
        for line, text in read_lines(path):
            tokens = text.split()
            try:
                if len(tokens) not in (1 + 2 * K, 1 + 2 * K + 4):
                    raise BadItem(
                        src,
                        line,
                        f"expected a path, {2 * K} landmark numbers and optionally "
                        f"4 attributes, got {len(tokens)} fields",
                    )
                rel = safe_relpath(tokens[0])
                if rel is None:
                    raise BadItem(src, line, f"bad image path {tokens[0]!r}")
                raw = np.array([parse_float(t, src, line) for t in tokens[1 : 1 + 2 * K]])
                kps = check_keypoints(raw.reshape(2, K).T, K, None, None, src, line) - 1.0  # x1..x5 y1..y5
            except BadItem as err:
                self.bad(err.source, err.line, err.message)
                continue
            items.append(
                AFLWItem(
                    f"MTFL/{rel}", str(path.parent / rel), tuple(kps.ravel().tolist()), src, line, square=True
                )
            )
        return items

    def load(self, item: AFLWItem) -> Record:
        return _load_crop(item, self.info.stored_size)


@dataclass
class AFLW(Converter):
    """AFLW_R: the train / test lists with their .mat landmarks (gt in (y, x), hw)."""

    def __post_init__(self) -> None:
        check_setup("aflw", self.root, self.options)
        self.info = _face_info("aflw", self.image_size)

    def splits(self) -> dict[str, list[Any]]:
        return {split: self._split(split) for split in ("train", "test")}

    def _split(self, split: str) -> list[AFLWItem]:
        root = Path(self.root)
        list_path = require_file(root / f"aflw_{split}_images.txt", f"AFLW {split} image list")
        mat_path = require_file(root / f"aflw_{split}_keypoints.mat", f"AFLW {split} keypoints")
        names = read_lines(list_path, keep_blank=True)
        try:
            mat = scipy.io.loadmat(str(mat_path))
        except MAT_ERRORS as err:
            raise BadItem(str(mat_path), None, f"cannot read .mat file: {err}") from None
        for key in ("gt", "hw"):
            if key not in mat:
                raise BadItem(str(mat_path), None, f"no variable {key!r} (has {sorted(mat)})")
        gt, hw = np.asarray(mat["gt"], dtype=np.float64), np.asarray(mat["hw"], dtype=np.float64)
        if gt.ndim != 3 or gt.shape[1:] != (K, 2) or hw.shape != (gt.shape[0], 2):
            raise BadItem(
                str(mat_path), None, f"expected gt N x {K} x 2 and hw N x 2, got gt {gt.shape}, hw {hw.shape}"
            )
        if len(names) != gt.shape[0]:
            raise BadItem(
                str(list_path), None, f"{len(names)} lines but {mat_path.name} has {gt.shape[0]} rows"
            )
        items, src = [], str(mat_path)
        for row, name in names:
            at = f"row {row} (= {list_path.name} line {row})"
            rel = safe_relpath(name)
            if rel is None:
                self.bad(str(list_path), row, f"bad image path {name!r}")
                continue
            try:
                h, w = hw[row - 1]
                if not (h > 0 and w > 0):
                    raise BadItem(src, row, f"hw must be positive, got {h}x{w}")
                kps = check_keypoints(gt[row - 1][:, ::-1], K, w, h, src, row)  # (y, x) -> (x, y)
            except BadItem as err:
                self.bad(src, row, f"{at}: {err.message}")
                continue
            items.append(
                AFLWItem(
                    rel,
                    str(root / "output" / rel),
                    tuple(kps.ravel().tolist()),
                    src,
                    row,
                    frame_wh=(float(w), float(h)),
                )
            )
        return items

    def load(self, item: AFLWItem) -> Record:
        return _load_crop(item, self.info.stored_size)
