"""The trained-model format: a representation (backbone, + projector) and a head, ready to predict.

    model = LandmarkModel(rep, head, "landmarks", model_meta(rep, head, "landmarks", manifest, preprocessing))
    save_model(model, "model_dir")                 # model.pt + meta.json (`models.formats`)
    with saved_model(model) as directory: ...      # the same, into a temp directory (to log it)
    model = load_model("model_dir")                # what every trained job saves (and logs to MLflow)
    out = model.predict(x)                         # x: (B, S, S, 3) uint8 -> {"landmarks": (B, K, 2), ...}

One registered `Task` per kind of model (`TASKS`): ``landmarks`` (a regressor), ``mask`` (a segmentation
head), ``descriptors`` (a projector alone): how its head is built and described in meta.json, what its
prediction outputs (the column and type of the MLflow signature) and its metric. meta.json holds the
architecture, the task, the dataset (K, landmark names, eye indices) and its preprocessing (a dict;
`data.preprocessing.Preprocessing` reads it). Pure torch: no Ray, no MLflow.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..coords import normalized_to_pixels
from ..errors import UserError
from ..metrics import headline_metric
from .backbones import build_backbone
from .formats import (
    META_FILE,
    MODEL_DIR,
    MODEL_FILE,
    cpu_state,
    has_model_files,
    load_model_files,
    read_meta,
    save_model_files,
)
from .heads import LandmarkRegressor, Projector, SegmentationHead
from .representation import Representation, dense_size


@dataclass(frozen=True)
class Task:
    """What one kind of trained model is.

    `predict(rep, head, stages, map_size, side)` -> numpy outputs of a batch; `output` / `output_type`
    ("double_array" or "binary") the column its served prediction fills; `metric` the metric its job
    reports (None: "iod" on a dataset with eye indices, else "pck")."""

    name: str
    output: str
    output_type: str
    metric: str | None
    predict: Callable[..., dict[str, np.ndarray]]
    head_spec: Callable[[nn.Module], dict] | None = None
    build_head: Callable[[dict], nn.Module] | None = None

    def metric_for(self, eye_indices: Sequence[int] | None) -> str:
        return self.metric or headline_metric(eye_indices)


def _landmarks(rep: Representation, head: nn.Module, stages: list, size: tuple[int, int], side: int) -> dict:
    """{"landmarks": (B, K, 2) in input pixels}."""
    return {"landmarks": normalized_to_pixels(rep.landmarks(head, stages, size), side).cpu().numpy()}


def _mask(rep: Representation, head: nn.Module, stages: list, size: tuple[int, int], side: int) -> dict:
    """{"mask": (B, S, S) bool, "mask_prob": (B, S, S) float}."""
    prob = torch.sigmoid(rep.mask_logits(head, stages, size, side))
    return {"mask": (prob > 0.5).cpu().numpy(), "mask_prob": prob.cpu().numpy()}


def _descriptors(rep: Representation, head: None, stages: list, size: tuple[int, int], side: int) -> dict:
    """{"descriptors": (B, dim, S, S)}."""
    return {"descriptors": rep.dense(stages, (side, side)).cpu().numpy()}


def _regressor_spec(head: LandmarkRegressor) -> dict:
    return {"type": "regressor", "in_channels": head.heatmaps.in_channels, "num_landmarks": head.num_landmarks,
            "points_per_landmark": head.points_per_landmark, "softmax_scale": head.softmax_scale}


def _regressor(spec: dict) -> LandmarkRegressor:
    return LandmarkRegressor(spec["in_channels"], spec["num_landmarks"], spec["points_per_landmark"],
                             spec["softmax_scale"])


TASKS: dict[str, Task] = {task.name: task for task in (
    Task("landmarks", "landmarks", "double_array", None, _landmarks, _regressor_spec, _regressor),
    Task("mask", "mask", "binary", "iou", _mask,
         lambda head: {"type": "segmentation", "in_channels": head.classifier.in_channels},
         lambda spec: SegmentationHead(spec["in_channels"])),
    Task("descriptors", "descriptors", "double_array", "match_same_px", _descriptors),
)}


class LandmarkModel(nn.Module):
    """A representation (frozen or fine-tuned backbone, + projector) and the head of `task` (`TASKS`).

    `predict(images)` takes uint8 network inputs (B, S, S, 3) and returns the task's numpy outputs.
    """

    def __init__(self, rep: Representation, head: nn.Module | None, task: str, meta: dict) -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task must be one of {tuple(TASKS)}, got {task!r}")
        self.rep, self.head, self.task, self.meta = rep, head, task, meta

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.meta["map_size"])

    @property
    def input_size(self) -> int:
        return int(self.meta["preprocessing"]["input_size"])

    @torch.no_grad()
    def predict(self, images_bhw3: np.ndarray | torch.Tensor) -> dict[str, np.ndarray]:
        self.eval()
        stages = [s.float() for s in self.rep.stages(images_bhw3)]
        return TASKS[self.task].predict(self.rep, self.head, stages, self.size, self.input_size)

    def to(self, device: torch.device | str) -> LandmarkModel:  # type: ignore[override]
        self.rep.to(device)
        if self.head is not None:
            self.head.to(device)
        return self

    def state(self) -> dict[str, dict[str, torch.Tensor]]:
        """The weights, as model.pt holds them: backbone, projector and head state dicts (CPU tensors)."""
        return {"backbone": cpu_state(self.rep.backbone.state_dict()),
                "projector": cpu_state(self.rep.projector.state_dict()) if self.rep.projector is not None else {},
                "head": cpu_state(self.head.state_dict()) if self.head is not None else {}}


def save_model(model: LandmarkModel, directory: str | Path) -> Path:
    """model.pt (state dicts, weights-only loadable) + meta.json into `directory` -> `directory`."""
    return save_model_files(model.state(), model.meta, directory)


@contextmanager
def saved_model(model: LandmarkModel) -> Iterator[Path]:
    """`model` saved (`save_model`) into a temporary directory, removed afterwards (to log it)."""
    with tempfile.TemporaryDirectory(prefix="landmarks-model-") as tmp:
        yield save_model(model, Path(tmp) / MODEL_DIR)


def load_model(directory: str | Path) -> LandmarkModel:
    """The model saved in `directory` (on the CPU); a directory that holds none is a one-line UserError."""
    if not has_model_files(directory):
        raise UserError(f"{directory}: not a landmark model (no {META_FILE} and {MODEL_FILE}; log one with a "
                        "regress, segment, train_projector or finetune run)")
    if "preprocessing" not in read_meta(directory):
        raise UserError(f"{directory}: the model has no preprocessing metadata; it cannot prepare images")
    state, meta = load_model_files(directory)
    return model_from_state(meta, state, source=str(directory))


def model_from_state(meta: dict, state: dict, source: str = "") -> LandmarkModel:
    """The model of `meta` (meta.json) with the weights of `state` (model.pt)."""
    arch, task = meta["architecture"], TASKS[meta["task"]]
    backbone = build_backbone(arch["backbone"], low_dim=arch["low_dim"])
    backbone.load_state_dict(state["backbone"])
    projector = None
    if arch.get("projector"):
        projector = Projector(arch["projector"]["in_channels"], arch["projector"]["dim"],
                              arch["projector"]["softargmax_mul"])
        projector.load_state_dict(state["projector"])
    head = task.build_head(arch["head"]) if task.build_head else None
    if head is not None:
        head.load_state_dict(state["head"])
    pre = meta["preprocessing"]
    rep = Representation(arch["representation"], backbone, {"source": source}, projector, arch["layers"],
                         tuple(pre["mean"]), tuple(pre["std"]))
    return LandmarkModel(rep.to("cpu"), head, task.name, meta)


def model_meta(rep: Representation, head: nn.Module | None, task: str, manifest: Any, preprocessing: dict,
               extra: dict | None = None) -> dict:
    """meta.json of a model trained on the dataset of `manifest`, read as `preprocessing` says
    (`data.preprocessing.dataset_preprocessing`)."""
    spec = TASKS[task]
    projector = rep.projector
    architecture = {
        "backbone": rep.backbone.name, "low_dim": rep.backbone.fc.out_features, "representation": rep.kind,
        "layers": rep.layers, "head": spec.head_spec(head) if spec.head_spec and head is not None else None,
        "projector": None if projector is None else {"in_channels": projector.in_channels, "dim": projector.dim,
                                                     "softargmax_mul": projector.softargmax_mul},
    }
    return {"task": task, "architecture": architecture, "dataset": manifest.name, "K": manifest.K,
            "landmark_names": list(manifest.landmark_names), "eye_indices": manifest.eye_indices,
            "metric": spec.metric_for(manifest.eye_indices),
            "map_size": list(dense_size(rep.kind, int(preprocessing["input_size"]))),
            "preprocessing": dict(preprocessing), "backbone_fingerprint": rep.info.get("fingerprint"), **(extra or {})}


__all__ = ["TASKS", "LandmarkModel", "Task", "load_model", "model_from_state", "model_meta", "save_model",
           "saved_model"]
