"""CUB-200-2011, the paper's 35 Passeroidea species: 15 part landmarks + foreground masks.

Layout under `root` (as distributed; segmentations from the separate download):

    images.txt                         `image_id relative/path.jpg`
    images/<class>/<file>.jpg
    parts/parts.txt                    `part_id name` (optional: standard names otherwise)
    parts/part_locs.txt                `image_id part_id x y visible`, 15 parts, 1-based ids;
                                       x, y in image pixels; invisible parts are `0 0`
    segmentations/<class>/<file>.png   soft masks, 0..255
    bounding_boxes.txt                 not used: the canonical geometry has no crop

Splits: train (1241) / val (382) / test (383) from the lists shipped in
`landmarks/resources/cub_splits/` (relative image paths; the nested train_{10..500} subsets
there are selections of train made by the evaluation jobs, not separate splits). A listed
image that images.txt does not have is not part of the dataset on disk: it is left out and
counted in `self.absent` (a subset of CUB works).

Geometry, as contrast-landmark `data_loader/data_loaders_animal.py` `CUB`: the whole image is
resized to S x S, S = image_size (`transforms.Resize((imwidth, imwidth))`: no crop, aspect not
kept). The official annotations are fractions x / W, y / H of the W x H image, multiplied by the
stored side (`kp_unnormalize`); with part_locs x, y as the fractions' numerators a part moves to

    x' = x * S / W,  y' = y * S / H

(`landmarks.augment.geometry.scale_keypoints`, no half-pixel shift). The soft mask is
thresholded at 0.5 (value >= 128) and resized with nearest neighbour. Invisible parts get
visible=False and coordinates (0, 0), as the official loader gives them. Images are stored as
PNG: at 96 px JPEG artefacts are a sizeable part of the signal, and the set is small (2006
images).
"""

from __future__ import annotations

import importlib.resources
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...augment.geometry import crop_resize
from ._rawio import check_inside, check_setup, read_image, read_lines, require_file, safe_relpath
from .base import BadItem, Converter, DatasetInfo, Record, parse_float

logger = logging.getLogger(__name__)

NUM_PARTS = 15
STANDARD_PART_NAMES = (
    "back",
    "beak",
    "belly",
    "breast",
    "crown",
    "forehead",
    "left eye",
    "left leg",
    "left wing",
    "nape",
    "right eye",
    "right leg",
    "right wing",
    "tail",
    "throat",
)
SPLITS = ("train", "val", "test")


def split_list(split: str) -> list[str]:
    """Relative image paths of a shipped CUB split list (train, val, test, train_10, ...)."""
    res = importlib.resources.files("landmarks").joinpath(f"resources/cub_splits/{split}.txt")
    return [ln.strip() for ln in res.read_text(encoding="utf-8").splitlines() if ln.strip()]


@dataclass(frozen=True)
class CUBItem:
    image_id: str  # relative path, as in images.txt
    path: str
    mask_path: str
    keypoints: tuple[float, ...]  # x0, y0, ... as in part_locs.txt; 0 for invisible parts
    visible: tuple[bool, ...]
    parts_file: str  # part_locs.txt, for error messages
    lines: tuple[int, ...]  # its line of each part
    listed_at: str  # "images.txt:<line>"


@dataclass
class CUB(Converter):
    """CUB birds with parts and masks, resized to image_size (no border)."""

    def __post_init__(self) -> None:
        check_setup("cub", self.root, self.options)
        self.info = DatasetInfo(
            name="cub",
            landmark_names=self._part_names(),
            eye_indices=None,
            stored_size=self.image_size,
            input_size=self.image_size,
            border=0,
            has_masks=True,
            image_format="png",
        )
        self.absent: dict[str, int] = {}

    def _part_names(self) -> tuple[str, ...]:
        path = Path(self.root) / "parts" / "parts.txt"
        if not path.is_file():
            return STANDARD_PART_NAMES
        names = {}
        for line, text in read_lines(path):
            pid, _, name = text.partition(" ")
            if not pid.isdigit() or not name.strip():
                raise BadItem(str(path), line, f"expected `part_id name`, got {text!r}")
            names[int(pid)] = name.strip()
        if sorted(names) != list(range(1, NUM_PARTS + 1)):
            raise BadItem(str(path), None, f"expected part ids 1..{NUM_PARTS}, got {sorted(names)}")
        return tuple(names[i] for i in range(1, NUM_PARTS + 1))

    def splits(self) -> dict[str, list[Any]]:
        root = Path(self.root)
        images_path = require_file(root / "images.txt", "CUB images.txt")
        by_path: dict[str, tuple[int, int]] = {}  # relative path -> (image id, line)
        for line, text in read_lines(images_path):
            tokens = text.split()
            rel = safe_relpath(tokens[1]) if len(tokens) == 2 and tokens[0].isdigit() else None
            if rel is None:
                self.bad(str(images_path), line, f"expected `image_id relative/path.jpg`, got {text!r}")
                continue
            by_path[rel] = (int(tokens[0]), line)

        wanted: dict[str, list[tuple[int, int, str]]] = {}
        for split in SPLITS:
            listed = split_list(split)
            wanted[split] = [(by_path[p][0], by_path[p][1], p) for p in listed if p in by_path]
            self.absent[split] = len(listed) - len(wanted[split])
        if any(self.absent.values()):
            logger.warning("cub: split images not in images.txt (not on disk), left out: %s", self.absent)

        ids = {image_id for items in wanted.values() for image_id, _, _ in items}
        parts_path = root / "parts" / "part_locs.txt"
        parts = self._parts(parts_path, ids)
        out: dict[str, list[Any]] = {}
        for split, items in wanted.items():
            out[split] = []
            for image_id, line, rel in items:
                if image_id not in parts:  # its part_locs lines were bad and skipped
                    continue
                kps, vis, lines = parts[image_id]
                out[split].append(
                    CUBItem(
                        rel,
                        str(root / "images" / rel),
                        str((root / "segmentations" / rel).with_suffix(".png")),
                        tuple(kps.ravel().tolist()),
                        tuple(vis.tolist()),
                        str(parts_path),
                        lines,
                        f"{images_path}:{line}",
                    )
                )
        return out

    def _parts(self, path: Path, ids: set[int]) -> dict[int, tuple[np.ndarray, np.ndarray, tuple[int, ...]]]:
        """image id -> ((15, 2) coords, (15,) visible, line of each part) for the wanted ids."""
        src = str(require_file(path, "CUB parts/part_locs.txt"))
        rows: dict[int, dict[int, tuple[int, float, float, bool]]] = {}
        bad_ids: set[int] = set()
        for line, text in read_lines(path):
            tokens = text.split()
            if tokens[0].isdigit() and int(tokens[0]) not in ids:
                continue  # an image outside the splits
            try:
                if len(tokens) != 5 or not tokens[0].isdigit() or not tokens[1].isdigit():
                    raise BadItem(src, line, f"expected `image_id part_id x y visible`, got {text!r}")
                image_id, part = int(tokens[0]), int(tokens[1])
                if not 1 <= part <= NUM_PARTS:
                    raise BadItem(src, line, f"part id {part} is not in 1..{NUM_PARTS}")
                if part in rows.get(image_id, {}):
                    raise BadItem(src, line, f"image {image_id} part {part} given twice")
                x, y = parse_float(tokens[2], src, line), parse_float(tokens[3], src, line)
                if tokens[4] not in ("0", "1"):
                    raise BadItem(src, line, f"visible must be 0 or 1, got {tokens[4]!r}")
                rows.setdefault(image_id, {})[part] = (line, x, y, tokens[4] == "1")
            except BadItem as err:
                if tokens and tokens[0].isdigit():
                    bad_ids.add(int(tokens[0]))
                self.bad(err.source, err.line, err.message)
        out = {}
        for image_id in sorted(ids):
            got = rows.get(image_id, {})
            if image_id in bad_ids:
                continue
            if len(got) != NUM_PARTS:
                last = max((ln for ln, _, _, _ in got.values()), default=None)
                self.bad(src, last, f"image {image_id} has {len(got)} parts, expected {NUM_PARTS}")
                continue
            ordered = [got[p] for p in range(1, NUM_PARTS + 1)]
            vis = np.array([v for _, _, _, v in ordered], dtype=bool)
            kps = np.array([[x, y] for _, x, y, _ in ordered], dtype=np.float64) * vis[:, None]
            out[image_id] = (kps, vis, tuple(ln for ln, _, _, _ in ordered))
        return out

    def load(self, item: CUBItem) -> Record:
        image = read_image(item.path, "RGB", item.listed_at)
        soft = read_image(item.mask_path, "L", item.listed_at)
        h, w = image.shape[:2]
        if soft.shape != (h, w):
            raise BadItem(item.mask_path, None, f"mask is {soft.shape[1]}x{soft.shape[0]}, image {w}x{h}")
        kps = np.asarray(item.keypoints, dtype=np.float64).reshape(NUM_PARTS, 2)
        vis = np.asarray(item.visible, dtype=bool)
        check_inside(kps, w, h, item.parts_file, item.lines, visible=vis)
        mask = np.where(soft >= 128, 255, 0).astype(np.uint8)  # soft mask thresholded at 0.5
        size = self.image_size
        out, moved, mask_out = crop_resize(image, (0.0, 0.0, float(w), float(h)), (size, size), kps, mask)
        moved[~vis] = 0.0
        return Record(item.image_id, out, moved.astype(np.float32), vis, None, mask_out)
