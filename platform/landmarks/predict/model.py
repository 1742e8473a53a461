"""A trained model as one self-contained thing: representation + head + how images are prepared for it.

    model = LandmarkModel.load("model_dir")           # what every trained job saves (and logs to MLflow)
    x, box = model.preprocessing.image_to_input(image)  # any photo -> the network input, as its dataset was
    out = model.predict(x[None])                       # {"landmarks": (1, K, 2) input pixels, ...}
    model.preprocessing.input_to_original(out["landmarks"][0], box)   # -> pixels of the photo

A model directory holds ``model.pt`` (state dicts: backbone, projector, head; weights-only loadable)
and ``meta.json``: the architecture (backbone, representation, layers, projector, head), the task
(``landmarks``: a regressor; ``mask``: a segmentation head; ``descriptors``: a projector alone) and
``preprocessing``, read from the training dataset's dataset.json: the canonical crop of an original
image (a fraction of it: the aligned CelebA crop for faces, the whole image elsewhere), the stored
side, the eval border, the input side and the input normalisation. Pure torch (no Ray, no MLflow).
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..augment.geometry import crop_resize
from ..coords import resize_keypoints
from ..data.normalization import input_stats
from ..data.reader import eval_geometry
from ..errors import UserError
from ..metrics import headline_metric
from ..models import LandmarkRegressor, Projector, SegmentationHead, build_backbone
from ..models.representation import Representation, dense_size

MODEL_FILE, META_FILE = "model.pt", "meta.json"
TASKS = ("landmarks", "mask", "descriptors")
WHOLE = (0.0, 0.0, 1.0, 1.0)


def canonical_crop(dataset: str) -> tuple[float, float, float, float]:
    """The part of an original image a dataset's converter keeps, as fractions (left, top, width, height):
    the official aligned CelebA crop (top 30, 178 x 178 of 178 x 218) for celeba and mafl; the whole
    image for the others (they are squashed whole, or were cropped before they reach us)."""
    from ..data.converters.celeba import ALIGNED_BOX, ALIGNED_WH

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


class LandmarkModel(nn.Module):
    """A representation (frozen or fine-tuned backbone, + projector) and a head, ready to predict.

    `predict(images)` takes uint8 network inputs (B, S, S, 3) and returns numpy arrays: for a regressor
    ``landmarks`` (B, K, 2) in input pixels; for a segmentation head ``mask`` (B, S, S) bool and
    ``mask_prob``; for a projector alone ``descriptors`` (B, dim, S, S).
    """

    def __init__(self, rep: Representation, head: nn.Module | None, task: str, meta: dict) -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        self.rep, self.head, self.task, self.meta = rep, head, task, meta
        self.preprocessing = Preprocessing.from_dict(meta["preprocessing"])
        self.backbone, self.projector = rep.backbone, rep.projector  # registered as submodules

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.meta["map_size"])

    @torch.no_grad()
    def predict(self, images_bhw3: np.ndarray | torch.Tensor) -> dict[str, np.ndarray]:
        self.eval()
        stages = self.rep.stages(images_bhw3)
        side = self.preprocessing.input_size
        if self.task == "landmarks":
            from ..coords import normalized_to_pixels

            norm = self.rep.landmarks(self.head, [s.float() for s in stages], self.size)
            return {"landmarks": normalized_to_pixels(norm, side).cpu().numpy()}
        if self.task == "mask":
            prob = torch.sigmoid(self.rep.mask_logits(self.head, [s.float() for s in stages], self.size, side))
            return {"mask": (prob > 0.5).cpu().numpy(), "mask_prob": prob.cpu().numpy()}
        return {"descriptors": self.rep.dense([s.float() for s in stages], (side, side)).cpu().numpy()}

    def to(self, device: torch.device | str) -> LandmarkModel:  # type: ignore[override]
        self.rep.to(device)
        if self.head is not None:
            self.head.to(device)
        return self

    def state(self) -> dict[str, dict[str, torch.Tensor]]:
        """The weights, as model.pt holds them: backbone, projector and head state dicts (CPU tensors)."""
        return {"backbone": _cpu(self.rep.backbone.state_dict()),
                "projector": _cpu(self.rep.projector.state_dict()) if self.rep.projector is not None else {},
                "head": _cpu(self.head.state_dict()) if self.head is not None else {}}

    def save(self, directory: str | Path) -> Path:
        """model.pt (state dicts, weights-only loadable) + meta.json into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.state(), directory / MODEL_FILE)
        (directory / META_FILE).write_text(json.dumps(self.meta, indent=2, sort_keys=True))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> LandmarkModel:
        """The model saved in `directory`; a directory that holds none is a one-line UserError."""
        directory = Path(directory)
        if not (directory / META_FILE).is_file() or not (directory / MODEL_FILE).is_file():
            raise UserError(f"{directory}: not a landmark model (no {META_FILE} and {MODEL_FILE}; log one with a "
                            "regress, segment, train_projector or finetune run)")
        meta = json.loads((directory / META_FILE).read_text())
        if "preprocessing" not in meta:
            raise UserError(f"{directory}: the model has no preprocessing metadata; it cannot prepare images")
        state = torch.load(directory / MODEL_FILE, map_location="cpu", weights_only=True)
        return cls.from_state(meta, state, source=str(directory))

    @classmethod
    def from_state(cls, meta: dict, state: dict, source: str = "") -> LandmarkModel:
        """The model of `meta` (meta.json) with the weights of `state` (model.pt)."""
        arch = meta["architecture"]
        backbone = build_backbone(arch["backbone"], low_dim=arch["low_dim"])
        backbone.load_state_dict(state["backbone"])
        projector = None
        if arch.get("projector"):
            projector = Projector(arch["projector"]["in_channels"], arch["projector"]["dim"],
                                  arch["projector"]["softargmax_mul"])
            projector.load_state_dict(state["projector"])
        head = _build_head(meta["task"], arch.get("head"))
        if head is not None:
            head.load_state_dict(state["head"])
        pre = Preprocessing.from_dict(meta["preprocessing"])
        rep = Representation(arch["representation"], backbone, {"source": source}, projector,
                             arch["layers"], pre.mean, pre.std)
        return cls(rep.to("cpu"), head, meta["task"], meta)


def mask_png(mask_hw: np.ndarray) -> bytes:
    """A predicted mask (H, W) bool -> PNG bytes (0 / 255)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(mask_hw.astype(np.uint8) * 255).save(buf, format="PNG")
    return buf.getvalue()


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in state.items()}


def _build_head(task: str, spec: dict | None) -> nn.Module | None:
    if task == "landmarks":
        return LandmarkRegressor(spec["in_channels"], spec["num_landmarks"], spec["points_per_landmark"],
                                 spec["softmax_scale"])
    if task == "mask":
        return SegmentationHead(spec["in_channels"])
    return None


_METRICS = {"mask": "iou", "descriptors": "match_same_px"}


def model_meta(rep: Representation, head: nn.Module | None, task: str, manifest: Any, input_size: int,
               extra: dict | None = None) -> dict:
    """meta.json of a model trained on the dataset of `manifest` (its architecture and preprocessing)."""
    head_spec = None
    if isinstance(head, LandmarkRegressor):
        head_spec = {"type": "regressor", "in_channels": head.heatmaps.in_channels,
                     "num_landmarks": head.num_landmarks, "points_per_landmark": head.points_per_landmark,
                     "softmax_scale": head.softmax_scale}
    elif isinstance(head, SegmentationHead):
        head_spec = {"type": "segmentation", "in_channels": head.classifier.in_channels}
    projector = rep.projector
    architecture = {
        "backbone": rep.backbone.name, "low_dim": rep.backbone.fc.out_features, "representation": rep.kind,
        "layers": rep.layers, "head": head_spec,
        "projector": None if projector is None else {"in_channels": projector.in_channels, "dim": projector.dim,
                                                     "softargmax_mul": projector.softargmax_mul},
    }
    return {"task": task, "architecture": architecture, "dataset": manifest.name, "K": manifest.K,
            "landmark_names": list(manifest.landmark_names), "eye_indices": manifest.eye_indices,
            "metric": _METRICS.get(task) or headline_metric(manifest.eye_indices), "map_size": list(dense_size(rep.kind, input_size)),
            "preprocessing": asdict(Preprocessing.from_manifest(manifest, input_size)),
            "backbone_fingerprint": rep.info.get("fingerprint"), **(extra or {})}


__all__ = ["LandmarkModel", "Preprocessing", "canonical_crop", "mask_png", "model_meta"]
