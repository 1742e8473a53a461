"""CelebA (aligned and in-the-wild) and MAFL: raw files -> canonical face records.

Layout under `root` (as distributed):

    Img/img_align_celeba_hq/*.jpg      aligned images, the official default (`use_hq_ims=True`)
    Img/img_align_celeba/*.jpg         aligned 178x218 images, used when there is no _hq folder
    Img_in_the_wild/*.jpg              in-the-wild images (CelebAWild; the official folder)
    Img/img_celeba/*.jpg               in-the-wild images, used when there is no Img_in_the_wild
    Anno/list_landmarks_align_celeba.txt, Anno/list_landmarks_celeba.txt
                                       line 1 count, line 2 header, then `name x1 y1 ... x5 y5`
    Anno/list_bbox_celeba.txt          line 1 count, line 2 header, then `name x y width height`
                                       (only for CelebAWild with option crop=face-box)
    Anno/identity_CelebA.txt           `name identity` (optional: identity is None without it)
    Eval/list_eval_partition.txt       `name 0|1|2` (train / val / test)
    MAFL/training.txt, MAFL/testing.txt  19000 / 1000 names (required for MAFL; excluded from CelebA)

Option `image_dir` (a folder relative to root) overrides the image folder of each converter.

Geometry (all three store S x S images, S = face_store_size(image_size): 136 at 96). Keypoints
move by the official scaling, x' = (x - left) * S / width (no half-pixel shift; see
`landmarks.augment.geometry`). Official = contrast-landmark `data_loader/data_loaders_face.py`.

* Aligned (CelebA, MAFL), official `CelebAPrunedAligned_MAFLVal` / `MAFLAligned`: crop box
  (left 0, top 30, 178 x 178) (`crop(im, 30, 0, 178, 178)`, "move head up a bit"), resized to
  S (`Resize(imwidth)`); landmarks `y -= 30; kp *= imwidth / 178`:

      x' = x * S / 178,  y' = (y - 30) * S / 178

  The landmarks are in the 178x218 frame of the annotation file. An image of another size (an
  HQ re-render) gets the crop box scaled to its size; the landmarks keep the formula above.
* In the wild (CelebAWild), option `crop`:
  - `crop=none` (default), official `CelebA_MAFLVal` (pretraining in the wild, Table 5): the
    whole W x H image resized to S x S (`Resize((imwidth, imwidth))`, aspect not kept). Its
    landmarks are scaled alike, x' = x * S / W, y' = y * S / H; the official loader scales
    them by the aligned size instead (S / 178, S / 218: "wrongly scaled, but we don't use
    them"), which is wrong for these images.
  - `crop=face-box` (ours, for evaluating landmarks in the wild): a square box on the annotated
    face box (x, y, w, h): side 1.2 * max(w, h), centred at (x + w/2, y + h/2 - 0.1 h),
    zero-padded where it leaves the image, landmarks x' = (x - left) * S / side. The constants
    put the face at the aligned crop's scale and height: on the first images of the dataset
    the inter-ocular distance is 2.1x the aligned one, so the aligned 178 px crop spans ~375 px
    = 1.2 x the box height there, and its centre lies 0.1 h above the box centre. Rotation is
    not undone (that is what "in the wild" means).
  Landmarks outside the stored image ([-0.5, S - 0.5]) get visible=False and keep their
  coordinates.

Splits: CelebA and CelebAWild give train / val / test from the eval partition (0 / 1 / 2),
each minus the MAFL images when MAFL/ is present (the pretraining split never sees MAFL);
MAFL gives train (training.txt) and test (testing.txt), each in the order of
Eval/list_eval_partition.txt (the names' order), as the official `MAFLAligned` lists them: matching's
"different identity" test pairs are consecutive images of that order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...augment.geometry import crop_resize, scale_keypoints
from ._rawio import check_inside, check_setup, read_image, read_lines, require_file, where
from .base import (
    BadItem,
    Converter,
    DatasetInfo,
    Record,
    check_keypoints,
    face_border,
    face_store_size,
    option_choice,
    parse_float,
)

logger = logging.getLogger(__name__)

LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")
NUM_LANDMARKS = len(LANDMARK_NAMES)
ALIGNED_WH = (178, 218)  # size of img_align_celeba images
ALIGNED_BOX = (0.0, 30.0, 178.0, 178.0)  # (left, top, width, height): official `crop(im, 30, 0, 178, 178)`
ALIGNED_DIRS = ("Img/img_align_celeba_hq", "Img/img_align_celeba")  # in order of preference
WILD_DIRS = ("Img_in_the_wild", "Img/img_celeba")
WILD_CROPS = ("none", "face-box")  # CelebAWild option `crop`; the first is the default
WILD_BOX_SCALE = 1.2  # square side / max(w, h) of the annotated face box (module docstring)
WILD_BOX_SHIFT = 0.1  # box centre moved up by this fraction of the face box height
PARTITIONS = {"0": "train", "1": "val", "2": "test"}


@dataclass(frozen=True)
class FaceItem:
    """One face to load: where its image is and its raw annotation (0-based image pixels)."""

    image_id: str
    path: str
    keypoints: tuple[float, ...]  # x0, y0, x1, y1, ... as annotated
    source: str  # annotation file of the landmarks, for error messages
    line: int
    identity: str | None = None
    face_box: tuple[float, float, float, float] | None = None  # (x, y, w, h): CelebAWild crop=face-box


@dataclass
class _CelebAFiles(Converter):
    """Parsing shared by the three CelebA-derived converters."""

    OPTIONS = ("image_dir",)  # image_dir: image folder relative to root (overrides the default)

    def _setup(self, name: str) -> None:
        check_setup(name, self.root, self.options, self.OPTIONS)
        self.info = DatasetInfo(
            name=name,
            landmark_names=LANDMARK_NAMES,
            eye_indices=(0, 1),
            stored_size=face_store_size(self.image_size),
            input_size=self.image_size,
            border=face_border(self.image_size),
        )
        self.excluded_mafl = 0  # CelebA images left out because they are in MAFL
        self._rejected: set[str] = set()  # names whose annotation line was bad (reported once)

    @property
    def _root(self) -> Path:
        return Path(self.root)

    def _image_dir(self, defaults: tuple[str, ...]) -> Path:
        """Option image_dir, else the first of `defaults` (relative to root) that exists."""
        if "image_dir" in self.options:
            return self._root / self.options["image_dir"]
        for sub in defaults:
            if (self._root / sub).is_dir():
                return self._root / sub
        raise BadItem(
            str(self._root), None, f"image folder not found: looked for {', '.join(defaults)} "
            "(or set option image_dir)"
        )

    def _table(self, path: Path, ncols: int, header: bool) -> list[tuple[int, list[str]]]:
        """Lines of `name v1 .. v{ncols-1}`; CelebA's Anno files start with a count and a header."""
        lines = read_lines(require_file(path, path.name))
        if header:
            if not lines or not lines[0][1].isdigit():
                self.bad(str(path), 1, "line 1 must be the number of images")
            lines = lines[2:]
        rows = []
        for line, text in lines:
            tokens = text.split()
            if len(tokens) != ncols:
                self._rejected.add(tokens[0])
                self.bad(
                    str(path),
                    line,
                    f"expected {ncols} fields (name and {ncols - 1} values), got {len(tokens)}",
                )
                continue
            rows.append((line, tokens))
        return rows

    def _landmarks(self, path: Path, size: tuple[int, int] | None) -> dict[str, tuple[int, np.ndarray]]:
        """name -> (line, (5, 2) landmarks); range-checked against `size` (W, H) when given."""
        out: dict[str, tuple[int, np.ndarray]] = {}
        for line, tokens in self._table(path, 1 + 2 * NUM_LANDMARKS, header=True):
            try:
                if tokens[0] in out:
                    raise BadItem(
                        str(path), line, f"duplicate image {tokens[0]} (first at line {out[tokens[0]][0]})"
                    )
                values = [parse_float(t, str(path), line) for t in tokens[1:]]
                w, h = size if size is not None else (None, None)
                out[tokens[0]] = (line, check_keypoints(values, NUM_LANDMARKS, w, h, str(path), line))
            except BadItem as err:
                self._rejected.add(tokens[0])
                self.bad(err.source, err.line, err.message)
        return out

    def _partition(self) -> list[tuple[int, str, str]]:
        """(line, name, split) in file order."""
        path = self._root / "Eval" / "list_eval_partition.txt"
        rows = []
        for line, (name, part) in self._table(path, 2, header=False):
            if part not in PARTITIONS:
                self.bad(str(path), line, f"partition must be 0, 1 or 2, got {part!r}")
                continue
            rows.append((line, name, PARTITIONS[part]))
        return rows

    def _identities(self) -> dict[str, str]:
        path = self._root / "Anno" / "identity_CelebA.txt"
        if not path.is_file():
            return {}
        return {name: ident for _, (name, ident) in self._table(path, 2, header=False)}

    def _name_list(self, path: Path) -> list[tuple[int, str]]:
        """MAFL lists: one image name a line (first field), no duplicates."""
        seen: dict[str, int] = {}
        rows = []
        for line, text in read_lines(require_file(path, f"MAFL list {path.name}")):
            name = text.split()[0]
            if name in seen:
                self.bad(str(path), line, f"duplicate image {name} (first at line {seen[name]})")
                continue
            seen[name] = line
            rows.append((line, name))
        return rows

    def _mafl_names(self) -> set[str]:
        mafl = self._root / "MAFL"
        lists = [mafl / "training.txt", mafl / "testing.txt"]
        return {name for p in lists if p.is_file() for _, name in self._name_list(p)}

    def _partition_items(
        self,
        image_dir: Path,
        landmarks_path: Path,
        landmarks: dict[str, tuple[int, np.ndarray]],
        face_boxes: dict[str, tuple[float, float, float, float]] | None = None,
    ) -> dict[str, list[Any]]:
        """train / val / test from the eval partition, minus MAFL images, in file order."""
        identities, mafl = self._identities(), self._mafl_names()
        self.excluded_mafl = 0
        partition_path = self._root / "Eval" / "list_eval_partition.txt"
        out: dict[str, list[Any]] = {"train": [], "val": [], "test": []}
        for line, name, split in self._partition():
            if name in mafl:
                self.excluded_mafl += 1
                continue
            missing = self._missing(name, landmarks, landmarks_path, face_boxes)
            if missing:
                self.bad(str(partition_path), line, f"{name} has no {missing}")
                continue
            if name not in landmarks or (face_boxes is not None and name not in face_boxes):
                continue  # its annotation line was bad and is reported already
            lm_line, kps = landmarks[name]
            out[split].append(
                FaceItem(
                    image_id=name,
                    path=str(image_dir / name),
                    keypoints=tuple(kps.ravel().tolist()),
                    source=str(landmarks_path),
                    line=lm_line,
                    identity=identities.get(name),
                    face_box=None if face_boxes is None else face_boxes[name],
                )
            )
        logger.info("%s: %d MAFL images left out of the CelebA splits", self.info.name, self.excluded_mafl)
        return out

    def _missing(
        self, name: str, landmarks: dict, lm_path: Path, face_boxes: dict | None = None
    ) -> str | None:
        """What annotation `name` lacks (None if complete or if its bad line was reported)."""
        if name in self._rejected:
            return None
        if name not in landmarks:
            return f"landmarks in {lm_path}"
        if face_boxes is not None and name not in face_boxes:
            return "face box in Anno/list_bbox_celeba.txt"
        return None

    def _load_aligned(self, item: FaceItem) -> Record:
        """Official aligned crop (module docstring); landmarks in the 178x218 annotation frame."""
        image = read_image(item.path, "RGB", where(item.source, item.line))
        h, w = image.shape[:2]
        sx, sy = w / ALIGNED_WH[0], h / ALIGNED_WH[1]  # 1, 1 for 178x218 images
        left, top, bw, bh = ALIGNED_BOX
        size = self.info.stored_size
        out, _, _ = crop_resize(image, (left * sx, top * sy, bw * sx, bh * sy), (size, size))
        kps = np.asarray(item.keypoints, dtype=np.float64).reshape(NUM_LANDMARKS, 2)
        moved = scale_keypoints(kps, ALIGNED_BOX, (size, size))
        return Record(
            item.image_id, out, moved.astype(np.float32), np.ones(NUM_LANDMARKS, bool), item.identity
        )


@dataclass
class CelebA(_CelebAFiles):
    """Aligned CelebA for pretraining: train / val / test partitions minus the MAFL images."""

    def __post_init__(self) -> None:
        self._setup("celeba")

    def splits(self) -> dict[str, list[Any]]:
        image_dir = self._image_dir(ALIGNED_DIRS)
        path = self._root / "Anno" / "list_landmarks_align_celeba.txt"
        return self._partition_items(image_dir, path, self._landmarks(path, ALIGNED_WH))

    def load(self, item: FaceItem) -> Record:
        return self._load_aligned(item)


@dataclass
class MAFL(_CelebAFiles):
    """MAFL: 19000 train / 1000 test aligned CelebA faces with the CelebA landmarks."""

    def __post_init__(self) -> None:
        self._setup("mafl")

    def splits(self) -> dict[str, list[Any]]:
        image_dir = self._image_dir(ALIGNED_DIRS)
        lm_path = self._root / "Anno" / "list_landmarks_align_celeba.txt"
        landmarks, identities = self._landmarks(lm_path, ALIGNED_WH), self._identities()
        order = self._partition_order()
        out: dict[str, list[Any]] = {}
        for split, fname in (("train", "training.txt"), ("test", "testing.txt")):
            list_path = self._root / "MAFL" / fname
            out[split] = []
            names = self._name_list(list_path)
            # The official MAFLAligned lists a split in list_eval_partition.txt's order (the image names'),
            # not the MAFL list's: matching's consecutive test pairs are the official ones.
            names.sort(key=lambda item: order.get(item[1], (len(order), item[1])))
            for line, name in names:
                missing = self._missing(name, landmarks, lm_path)
                if missing:
                    self.bad(str(list_path), line, f"{name} has no {missing}")
                    continue
                if name not in landmarks:
                    continue  # its landmark line was bad and is reported already
                lm_line, kps = landmarks[name]
                out[split].append(
                    FaceItem(
                        name,
                        str(image_dir / name),
                        tuple(kps.ravel().tolist()),
                        str(lm_path),
                        lm_line,
                        identities.get(name),
                    )
                )
        return out

    def load(self, item: FaceItem) -> Record:
        return self._load_aligned(item)

    def _partition_order(self) -> dict[str, tuple[int, str]]:
        """name -> its position in Eval/list_eval_partition.txt (name order where the file is absent)."""
        if not (self._root / "Eval" / "list_eval_partition.txt").is_file():
            return {}
        return {name: (i, name) for i, (_, name, _) in enumerate(self._partition())}


@dataclass
class CelebAWild(_CelebAFiles):
    """In-the-wild CelebA: the original photos, whole (default) or cropped on the face box."""

    OPTIONS = ("image_dir", "crop")  # crop: "none" (official whole-image resize) or "face-box"

    def __post_init__(self) -> None:
        self._setup("celeba-wild")
        self.crop = option_choice("celeba-wild", self.options, "crop", WILD_CROPS)

    def splits(self) -> dict[str, list[Any]]:
        image_dir = self._image_dir(WILD_DIRS)
        lm_path = self._root / "Anno" / "list_landmarks_celeba.txt"
        boxes = self._face_boxes() if self.crop == "face-box" else None
        return self._partition_items(image_dir, lm_path, self._landmarks(lm_path, None), boxes)

    def _face_boxes(self) -> dict[str, tuple[float, float, float, float]]:
        path = self._root / "Anno" / "list_bbox_celeba.txt"
        boxes = {}
        for line, tokens in self._table(path, 5, header=True):
            try:
                x, y, w, h = (parse_float(t, str(path), line) for t in tokens[1:])
                if not (w > 0 and h > 0):
                    raise BadItem(str(path), line, f"face box width and height must be > 0, got {w}x{h}")
                boxes[tokens[0]] = (x, y, w, h)
            except BadItem as err:
                self._rejected.add(tokens[0])
                self.bad(err.source, err.line, err.message)
        return boxes

    def load(self, item: FaceItem) -> Record:
        image = read_image(item.path, "RGB", where(item.source, item.line))
        h, w = image.shape[:2]
        kps = np.asarray(item.keypoints, dtype=np.float64).reshape(NUM_LANDMARKS, 2)
        check_inside(kps, w, h, item.source, item.line)
        size = self.info.stored_size
        box = wild_box(item.face_box) if self.crop == "face-box" else (0.0, 0.0, float(w), float(h))
        out, moved, _ = crop_resize(image, box, (size, size), kps)
        visible = np.all((moved >= -0.5) & (moved <= size - 0.5), axis=1)
        return Record(item.image_id, out, moved.astype(np.float32), visible, item.identity)


def wild_box(face_box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """Square crop box (left, top, side, side) for an annotated face box (x, y, w, h)."""
    x, y, w, h = face_box
    side = WILD_BOX_SCALE * max(w, h)
    cx, cy = x + w / 2, y + h / 2 - WILD_BOX_SHIFT * h
    return (cx - side / 2, cy - side / 2, side, side)
