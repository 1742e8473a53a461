"""The files the platform writes weights into: one place for their names and how they are saved and read.

    backbone.pt + meta.json    a pretrained backbone (`save_backbone`; MLflow artifact "backbone")
    projector.pt + meta.json   a trained projector (`save_projector`; MLflow artifact "projector")
    state.pt + meta.json       a Ray Train checkpoint (`save_checkpoint` / `load_checkpoint`)
    model.pt + meta.json       a trained model (`models.artifact`: `save_model_files` / `load_model_files`)

Every ``.pt`` holds tensors and plain containers only (loadable with ``torch.load(weights_only=True)``);
``meta.json`` is sorted, indented JSON. Reading files a user names (the authors' checkpoints, torchvision
weights, with their error messages) is `landmarks.sources`'s; it uses these names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

META_FILE = "meta.json"
BACKBONE_FILE = "backbone.pt"
PROJECTOR_FILE = "projector.pt"
STATE_FILE = "state.pt"
MODEL_FILE = "model.pt"
MODEL_DIR = "landmark_model"  # the name a trained model's directory is saved (and logged) under


def cpu_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict detached onto the CPU (what every saved file holds)."""
    return {k: v.detach().cpu() for k, v in state.items()}


def _save(state: Any, meta: dict, directory: str | Path, filename: str) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(state, directory / filename)
    write_meta(meta, directory)
    return directory / filename


def write_meta(meta: dict, directory: str | Path) -> Path:
    path = Path(directory) / META_FILE
    path.write_text(json.dumps(meta, indent=2, sort_keys=True))
    return path


def read_meta(directory: str | Path) -> dict:
    """The meta.json of `directory`, or {} when it has none."""
    path = Path(directory) / META_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def save_backbone(backbone: torch.nn.Module | dict[str, torch.Tensor], meta: dict, directory: str | Path) -> Path:
    """backbone.pt (the backbone's state dict, CPU) + meta.json into `directory` -> backbone.pt's path;
    what evaluation jobs load (`sources.load_backbone`)."""
    state = backbone.state_dict() if isinstance(backbone, torch.nn.Module) else backbone
    return _save(cpu_state(state), meta, directory, BACKBONE_FILE)


def save_projector(state: dict[str, torch.Tensor], meta: dict, directory: str | Path) -> Path:
    """projector.pt (proj.weight (dim, C, 1, 1), proj.bias (dim,)) + meta.json -> projector.pt's path;
    what `sources.load_projector` reads."""
    return _save(cpu_state(state), meta, directory, PROJECTOR_FILE)


def save_checkpoint(state: dict[str, Any], meta: dict, directory: str | Path) -> Path:
    """state.pt (model/optimizer state dicts, epoch, step, ...) + meta.json -> `directory`."""
    _save(state, meta, directory, STATE_FILE)
    return Path(directory)


def load_checkpoint(directory: str | Path, map_location: str | torch.device = "cpu") -> tuple[dict, dict]:
    """(state.pt, meta.json) of a checkpoint directory."""
    directory = Path(directory)
    return torch.load(directory / STATE_FILE, map_location=map_location, weights_only=True), read_meta(directory)


def save_model_files(state: dict[str, dict[str, torch.Tensor]], meta: dict, directory: str | Path) -> Path:
    """model.pt ({"backbone", "projector", "head"} state dicts) + meta.json -> `directory`."""
    _save(state, meta, directory, MODEL_FILE)
    return Path(directory)


def has_model_files(directory: str | Path) -> bool:
    return (Path(directory) / META_FILE).is_file() and (Path(directory) / MODEL_FILE).is_file()


def load_model_files(directory: str | Path) -> tuple[dict, dict]:
    """(model.pt on the CPU, meta.json) of a model directory (`has_model_files`)."""
    directory = Path(directory)
    return torch.load(directory / MODEL_FILE, map_location="cpu", weights_only=True), read_meta(directory)


# Where the classes of a whole pickled module of ours come from (`load_pickled_module` allows only these).
MODULE_CLASS_PACKAGES = ("torch.nn.", "torchvision.models.", "landmarks.models.")


def load_pickled_module(path: str | Path) -> torch.nn.Module:
    """A whole `nn.Module` saved with ``torch.save(module)`` (an mlflow.pytorch model's model.pth), on the CPU,
    loaded weights-only: the `nn.Module` classes of `MODULE_CLASS_PACKAGES` it names are allow-listed, and a
    file that pickles anything else (a function, another class) raises ``pickle.UnpicklingError`` instead of
    running it."""
    import importlib

    allowed = []
    for name in torch.serialization.get_unsafe_globals_in_checkpoint(path):
        module, _, attr = name.rpartition(".")
        if module.startswith(MODULE_CLASS_PACKAGES):
            cls = getattr(importlib.import_module(module), attr, None)
            if isinstance(cls, type) and issubclass(cls, torch.nn.Module):
                allowed.append(cls)
    with torch.serialization.safe_globals(allowed):
        return torch.load(path, map_location="cpu", weights_only=True)


__all__ = ["BACKBONE_FILE", "META_FILE", "MODEL_DIR", "MODEL_FILE", "PROJECTOR_FILE", "STATE_FILE", "cpu_state",
           "has_model_files", "load_checkpoint", "load_model_files", "load_pickled_module",
           "read_meta", "save_backbone",
           "save_checkpoint", "save_model_files", "save_projector", "write_meta"]
