"""iNaturalist 2017 Aves: unlabeled bird photos for pretraining (the paper's 100K images).

`root` is the `train_val_images` folder of iNat 2017 (`Aves/<species>/<hash>.jpg`, ...). The
images to use come from a list file with one relative path a line (the 100K Aves subset):
option `list_file` (absolute, or relative to root); by default the single `*.txt` file in
root. A leading `train_val_images/` on a path (as in the iNat JSON `file_name`) is dropped.

Geometry (option `crop`), border 0, no landmarks (K = 0):

* `crop=none` (default): the whole image resized to image_size x image_size, aspect not kept,
  as contrast-landmark `data_loader/data_loaders_animal.py` `InatAve` does
  (`transforms.Resize((imwidth, imwidth))`) and as the CUB images are stored.
* `crop=center`: a centred square of side min(w, h), resized alike (aspect kept; not the
  official geometry).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...augment.geometry import crop_resize
from ._rawio import check_setup, read_image, read_lines, require_file, safe_relpath
from .base import BadItem, Converter, DatasetInfo, Record, option_choice

ROOT_NAME = "train_val_images"
CROPS = ("none", "center")  # option `crop`; the first is the default


@dataclass(frozen=True)
class INatItem:
    image_id: str  # relative path under root
    path: str
    listed_at: str  # "<list file>:<line>"


@dataclass
class INatAves(Converter):
    """Unlabeled iNat-2017 Aves images listed in a text file, split "train"."""

    def __post_init__(self) -> None:
        check_setup("inat-aves", self.root, self.options, ("list_file", "crop"))
        self.crop = option_choice("inat-aves", self.options, "crop", CROPS)
        self.info = DatasetInfo(
            name="inat-aves",
            landmark_names=(),
            eye_indices=None,
            stored_size=self.image_size,
            input_size=self.image_size,
            border=0,
        )

    def list_file(self) -> Path:
        root = Path(self.root)
        if "list_file" in self.options:
            return require_file(root / self.options["list_file"], "image list (option list_file)")
        found = sorted(root.glob("*.txt"))
        if len(found) != 1:
            raise BadItem(
                str(root),
                None,
                f"expected exactly one *.txt image list in the root, found "
                f"{[p.name for p in found]}; name it with the list_file option",
            )
        return found[0]

    def splits(self) -> dict[str, list[Any]]:
        list_path = self.list_file()
        root = Path(self.root)
        seen: dict[str, int] = {}
        items = []
        for line, text in read_lines(list_path):
            rel = safe_relpath(text)
            if rel is not None and rel.startswith(ROOT_NAME + "/"):
                rel = rel[len(ROOT_NAME) + 1 :] or None
            if rel is None:
                self.bad(str(list_path), line, f"not a relative image path: {text!r}")
                continue
            if rel in seen:
                self.bad(str(list_path), line, f"{rel} listed twice (first at line {seen[rel]})")
                continue
            seen[rel] = line
            items.append(INatItem(rel, str(root / rel), f"{list_path}:{line}"))
        return {"train": items}

    def load(self, item: INatItem) -> Record:
        image = read_image(item.path, "RGB", item.listed_at)
        h, w = image.shape[:2]
        box = (0.0, 0.0, float(w), float(h))
        if self.crop == "center":
            side = min(w, h)
            box = ((w - side) / 2, (h - side) / 2, float(side), float(side))
        out, _, _ = crop_resize(image, box, (self.image_size, self.image_size))
        return Record(item.image_id, out, np.zeros((0, 2), np.float32), np.zeros(0, bool))
