"""Where an evaluation job's frozen backbone and projector come from (`backbone.source`, `projector.source`).

    backbone, info = load_backbone(cfg.backbone.source, cfg.model.backbone, seed=cfg.train.seed)
    projector = load_projector(cfg.projector.source, info["fingerprint"], in_channels)

`backbone.source` is one of
- ``random``: torchvision's initialisation, seeded (Table 4/5 "random init"),
- an MLflow run id of a pretraining run: its artifacts ``backbone/backbone.pt`` + ``backbone/meta.json``
  (written by `landmarks.models.formats.save_backbone`),
- a Ray Train checkpoint directory (``state.pt`` with the MoCo state dict + ``meta.json``), local or s3://,
- a ``.pt``/``.pth`` file, local or s3://: our ``backbone.pt`` (a ``meta.json`` beside it is checked), a
  local torchvision ImageNet weights file (Table 4/5 "ImageNet"; nothing is downloaded), or one of the
  authors' released MoCo checkpoints (``ckpt_epoch_800_resnet50_celeba.pth``, saved by their
  ``train_moco.py``; see docs/official_checkpoints.md): its query encoder ``model`` is loaded, its
  architecture read from the tensor shapes and checked against ``model.backbone``.

Every file is read with ``torch.load(weights_only=True)``; the only global allowed beyond torch's defaults
is ``argparse.Namespace`` (the official checkpoints' ``opt``).

`info["fingerprint"]` hashes the weights that shape the dense features (the MoCo head is left
out), so two sources with the same weights share one feature cache entry. `info["init"]` is
``random``, ``pretrained`` or ``imagenet``: the MLflow tag reports and tables group by.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import storage, tracking
from .data.manifest import Manifest
from .data.normalization import input_stats
from .errors import UserError
from .models import Projector, ResNetBackbone, build_backbone, load_backbone_weights
from .models.backbones import (
    CHECKPOINT_SAFE_GLOBALS,
    OFFICIAL_MOCO_PREFIX,
    extract_state_dict,
    identify_backbone,
    torch_load_weights,
)
from .models.formats import BACKBONE_FILE, META_FILE, PROJECTOR_FILE, STATE_FILE
from .models.representation import Representation, block_channels
from .registry import ARCHITECTURES


def fingerprint(backbone: torch.nn.Module) -> str:
    """SHA-256 (first 24 hex digits) of the architecture name and every non-head tensor."""
    digest = hashlib.sha256(str(getattr(backbone, "name", type(backbone).__name__)).encode())
    for key, tensor in sorted(backbone.state_dict().items()):
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            continue  # the MoCo head does not touch the dense features
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()[:24]


def _looks_like_path(source: str) -> bool:
    return "/" in source or os.sep in source or source.endswith((".pt", ".pth", ".tar")) or source.startswith(".")


def _random(name: str, seed: int) -> ResNetBackbone:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_backbone(name)


def _check_meta(meta: dict, name: str, where: str) -> None:
    got = meta.get("backbone")
    if got and got != name:
        raise UserError(f"backbone.source {where} holds a {got!r} backbone but model.backbone={name!r}; "
                        f"set model.backbone={got} or use a {name} checkpoint")


def _load_weights(backbone: ResNetBackbone, weights: Any, where: str) -> None:
    try:
        load_backbone_weights(backbone, weights)
    except (ValueError, FileNotFoundError) as err:
        raise UserError(f"backbone.source {where}: {err}") from None


def _local_copy(uri: str, tmp: Path) -> Path:
    """An s3:// checkpoint directory or file, copied into `tmp` (local paths are returned as is)."""
    if not storage.is_s3(uri):
        return Path(uri)
    files = storage.list_files(uri)
    if not files:  # a single object
        (tmp / Path(uri).name).write_bytes(storage.read_bytes(uri))
        return tmp / Path(uri).name
    for rel in files:
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_bytes(storage.read_bytes(storage.join(uri, rel)))
    return tmp


def _read_meta(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: unreadable meta.json ({err})") from None


def _one_line(err: BaseException | str, limit: int = 300) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _torch_load(path: Path, where: str, what: str = "backbone.source", extra_globals: tuple = ()) -> Any:
    """``path`` loaded weights-only (``torch_load_weights``); a failure is a one-line UserError naming `where`."""
    where = storage.redact(where)
    unreadable = f"{what} {where}: cannot read {path.name} as PyTorch weights"
    try:
        return torch_load_weights(path, extra_globals)
    except pickle.UnpicklingError as err:  # weights-only refused a global, or a corrupt pickle stream
        refused = re.search(r"GLOBAL (\S+)", str(err))
        if refused is None:  # torch's message advises weights_only=False: keep only the unpickler's reason
            reason = re.search(r"WeightsUnpickler error:\s*(.+)", str(err))
            detail = _one_line(reason.group(1) if reason else err)
            raise UserError(f"{unreadable}, the file is corrupt, truncated or not a PyTorch checkpoint "
                            f"({detail})") from None
        allowed = ", ".join(f"{c.__module__}.{c.__qualname__}" for c in CHECKPOINT_SAFE_GLOBALS)
        raise UserError(f"{what} {where}: weights-only loading refused the pickled global {refused.group(1)}; "
                        f"a MoCo checkpoint (the authors' train_moco.py or ours) pickles only tensors, plain "
                        f"containers and {allowed}, so this is not one; if you trust the file, re-save its "
                        "state_dict() with torch.save and pass that") from None
    except (RuntimeError, OSError, ValueError, EOFError, TypeError, AttributeError) as err:
        # zip / legacy-format errors: a truncated download, or not a PyTorch file at all
        raise UserError(f"{unreadable}, the file is truncated (an incomplete download?), corrupt or not a "
                        f"PyTorch checkpoint ({_one_line(err)})") from None


def _is_imagenet(state: Any) -> bool:
    """torchvision ImageNet files end in a 1000-way classifier."""
    w = state.get("fc.weight") if isinstance(state, dict) else None
    return isinstance(w, torch.Tensor) and w.dim() == 2 and w.shape[0] == 1000


def _is_official_moco(raw: Any) -> bool:
    """The authors' train_moco.py layout: {"opt": Namespace, "model": {"encoder.module.*": ...}, "model_ema", ...}."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("model"), Mapping) or not raw["model"]:
        return False
    return isinstance(raw.get("opt"), argparse.Namespace) or all(
        str(k).startswith(OFFICIAL_MOCO_PREFIX) for k in raw["model"])


_OPT_FIELDS = ("model", "dataset", "image_size", "image_crop", "epochs", "nce_k", "width")


def _from_official_moco(raw: Mapping, name: str, where: str) -> tuple[ResNetBackbone, dict]:
    """The query encoder (``model``, as the authors' eval_face.py loads it; not ``model_ema``) of an official
    checkpoint, with its architecture identified from the tensor shapes and cross-checked with ``opt.model``."""
    where = storage.redact(where)
    opt = raw.get("opt")
    opt_vars = vars(opt) if isinstance(opt, argparse.Namespace) else {}
    opt_model = opt_vars.get("model") if isinstance(opt_vars.get("model"), str) else None
    try:
        state = extract_state_dict(raw["model"], where)
    except (ValueError, TypeError) as err:
        raise UserError(f"backbone.source {where}: official MoCo checkpoint without backbone weights "
                        f"({_one_line(err)})") from None
    arch = identify_backbone(state)
    said = f"opt.model={opt_model!r}" if opt_model else "no opt.model"
    if arch is None and opt_model not in ARCHITECTURES:
        raise UserError(f"backbone.source {where}: official MoCo checkpoint ({said}) holds a backbone that is none "
                        f"of {sorted(ARCHITECTURES)} (tensor shapes match no registered architecture); use one of the "
                        "released ResNet18/ResNet50/ResNet50-half MoCo checkpoints")
    if arch is not None and opt_model in ARCHITECTURES and not _opt_model_agrees(opt_model, opt_vars.get("width"), arch):
        raise UserError(f"backbone.source {where}: inconsistent official MoCo checkpoint: {said} but its tensor "
                        f"shapes are a {arch!r} backbone; re-download the file")
    if arch is not None and arch != name:
        raise UserError(f"backbone.source {where}: official MoCo checkpoint holds a {arch!r} backbone ({said}) "
                        f"but model.backbone={name!r}; set model.backbone={arch}")
    head = state.get("fc.weight")
    low_dim = int(head.shape[0]) if isinstance(head, torch.Tensor) and head.dim() == 2 else 128
    backbone = build_backbone(name, low_dim=low_dim)
    _load_weights(backbone, state, where)
    meta: dict[str, Any] = {"backbone": name, "low_dim": low_dim}
    if isinstance(raw.get("epoch"), int):
        meta["epoch"] = raw["epoch"]
    meta.update({f"opt.{k}": opt_vars[k] for k in _OPT_FIELDS
                 if isinstance(opt_vars.get(k), (str, int, float, bool))})
    return backbone, {"init": "pretrained", "type": "official_moco", "meta": meta}


def _opt_model_agrees(opt_model: str, width: Any, arch: str) -> bool:
    """``opt.model`` vs the identified architecture; the half-width ResNet50 (InsResNet50(width=0.5)) may be
    recorded as 'resnet50_half' or as 'resnet50' (with or without a ``width`` option)."""
    if opt_model == "resnet50" and arch == "resnet50_half":
        return not isinstance(width, (int, float)) or float(width) == 0.5
    return opt_model == arch


def _from_path(source: str, name: str, tmp: Path) -> tuple[ResNetBackbone, dict]:
    exists = storage.exists(source) if storage.is_s3(source) else os.path.exists(source)
    if not exists:
        raise UserError(f"backbone.source: no such checkpoint file or directory: {storage.redact(source)} "
                        "(expected 'random', an MLflow run id, a Ray checkpoint dir, or a .pt/.pth file)")
    path = _local_copy(source, tmp)
    if path.is_dir():
        if not (path / STATE_FILE).is_file():
            raise UserError(f"backbone.source {source}: directory has no {STATE_FILE} (not a Ray Train checkpoint)")
        meta = _read_meta(path / META_FILE)
        _check_meta(meta, name, source)
        state = _torch_load(path / STATE_FILE, source)
        backbone = build_backbone(name, low_dim=int(meta.get("low_dim", 128)))
        _load_weights(backbone, state.get("model", state) if isinstance(state, dict) else state, source)
        return backbone, {"init": "pretrained", "type": "checkpoint", "meta": meta}
    meta = _read_meta(path.parent / META_FILE) if path.name == BACKBONE_FILE else {}
    _check_meta(meta, name, source)
    state = _torch_load(path, source)
    if not meta and _is_official_moco(state):
        return _from_official_moco(state, name, source)
    backbone = build_backbone(name, low_dim=int(meta.get("low_dim", 128)))
    _load_weights(backbone, state, source)
    init = "imagenet" if not meta and _is_imagenet(state) else "pretrained"
    return backbone, {"init": init, "type": "imagenet_file" if init == "imagenet" else "file", "meta": meta}


def _from_run(run_id: str, name: str, tmp: Path) -> tuple[ResNetBackbone, dict]:
    tracking.get_run(run_id)  # UserError: MLflow run ... does not exist
    try:
        directory = tracking.download_artifact(run_id, "backbone", tmp)
    except UserError:
        raise UserError(f"backbone.source: MLflow run {run_id} has no 'backbone' artifact; is it a "
                        "pretraining run (jobs/pretrain.py) that finished?") from None
    meta = _read_meta(directory / META_FILE)
    _check_meta(meta, name, f"(MLflow run {run_id})")
    backbone = build_backbone(name, low_dim=int(meta.get("low_dim", 128)))
    _load_weights(backbone, _torch_load(directory / BACKBONE_FILE, run_id), f"(MLflow run {run_id})")
    return backbone, {"init": "pretrained", "type": "mlflow_run", "mlflow_run_id": run_id, "meta": meta}


def load_backbone(source: str, backbone_name: str, seed: int = 0) -> tuple[ResNetBackbone, dict]:
    """The frozen backbone named by `source` (module docstring), in eval mode on the CPU.

    Returns (backbone, info) with info keys: source, type, init, backbone, fingerprint,
    meta (the checkpoint's meta.json, possibly empty), mlflow_run_id (for a run id).

    Raises:
        UserError (one line, naming the source): unknown run id, missing path, unreadable or truncated
            file, a file pickling a class weights-only loading refuses, or weights of another backbone.
    """
    source = (source or "").strip()
    if not source:
        raise UserError("backbone.source is empty: pass 'random', an MLflow run id, or a checkpoint path")
    if source == "random":
        backbone, info = _random(backbone_name, seed), {"init": "random", "type": "random", "meta": {}, "seed": seed}
    else:
        with tempfile.TemporaryDirectory(prefix="landmarks-backbone-") as tmp:  # downloads, gone once loaded
            if _looks_like_path(source) or os.path.exists(source):
                backbone, info = _from_path(source, backbone_name, Path(tmp))
            else:  # anything else names an MLflow run (ids are 32 hex digits)
                backbone, info = _from_run(source, backbone_name, Path(tmp))
    info.update(source=source, backbone=backbone_name, fingerprint=fingerprint(backbone))
    return backbone.eval(), info


# ----------------------------------------------------------------------------- projector

# The official train_feature_projector.py saves {"opt": Namespace, "epoch", "feat_disiller" (sic):
# DataParallel(FeatDistiller).state_dict() ("module.reg_conv.weight"/"bias"), "val_error" and
# "test_error": [np.mean(...), np.mean(...)]}: numpy float64 scalars besides the Namespace.
OFFICIAL_PROJECTOR_KEY = "feat_disiller"
_NUMPY_SCALAR_GLOBALS = (np.dtype, type(np.dtype("float64")), np.float64(0).__reduce__()[0])


def _projector_state(raw: Any, where: str) -> dict[str, torch.Tensor]:
    state = raw
    nesting = ("state_dict", "projector", "model", OFFICIAL_PROJECTOR_KEY)
    while isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        inner = next((state[k] for k in nesting if isinstance(state.get(k), dict)), None)
        if inner is None:
            raise UserError(f"projector.source {where}: no projector weights found (keys {sorted(state)[:10]})")
        state = inner
    if not isinstance(state, dict):
        raise UserError(f"projector.source {where}: expected a state dict, got {type(state).__name__}")
    weights = {k: v for k, v in state.items() if isinstance(v, torch.Tensor) and v.dim() == 4}
    if len(weights) != 1:
        raise UserError(f"projector.source {where}: expected one 1x1 conv weight, found {sorted(weights)}")
    key = next(iter(weights))
    bias = state.get(key[: -len("weight")] + "bias")
    return {"proj.weight": weights[key], **({"proj.bias": bias} if bias is not None else {})}


def _official_projector_meta(raw: Any, where: str) -> dict | None:
    """meta for an official feature-projector checkpoint (its softmax multiplier from `opt`), else None."""
    if not isinstance(raw, Mapping) or OFFICIAL_PROJECTOR_KEY not in raw:
        return None
    opt = vars(raw.get("opt") or argparse.Namespace())
    mode, kernel = opt.get("distill_mode", "softmax"), int(opt.get("kernel_size", 1))
    if mode not in ("softmax", "linear") or kernel != 1:
        raise UserError(f"projector.source {where}: an official projector with distill_mode={mode!r}, kernel_size="
                        f"{kernel}; only the paper's 1x1 softmax (or linear) projectors are supported")
    val = raw.get("val_error")
    return {"official": True, "epoch": raw.get("epoch"), "dim": opt.get("out_dim"),
            "softargmax_mul": float(opt.get("softargmax_mul", 7.0)) if mode == "softmax" else 0.0,
            "backbone": opt.get("model"), **({"val_match_diff_px": float(val[1])} if val else {})}


def _projector_files(source: str, tmp: Path) -> tuple[Path, dict, str]:
    """(weights file, meta, description) for a run id, a directory or a file; downloads go into `tmp`."""
    if source and not _looks_like_path(source) and not os.path.exists(source):
        tracking.get_run(source)
        try:
            directory = tracking.download_artifact(source, "projector", tmp)
        except UserError:
            raise UserError(f"projector.source: MLflow run {source} has no 'projector' artifact; is it a "
                            "jobs/train_projector.py run that finished?") from None
        return directory / PROJECTOR_FILE, _read_meta(directory / META_FILE), f"(MLflow run {source})"
    path = _local_copy(source, tmp)
    if not path.exists():
        raise UserError(f"projector.source: no such file or directory: {source}")
    if path.is_dir():
        path = path / PROJECTOR_FILE
        if not path.is_file():
            raise UserError(f"projector.source {source}: directory has no {PROJECTOR_FILE}")
    return path, _read_meta(path.parent / META_FILE), source


def load_projector(source: str, backbone_fingerprint: str, in_channels: int,
                   backbone_name: str | None = None) -> Projector:
    """The trained projector named by `source`, in eval mode on the CPU: an MLflow run id of
    jobs/train_projector.py, a directory with projector.pt + meta.json, a projector.pt file, or the
    authors' feature-projector checkpoint (train_feature_projector.py's ``{"opt", "feat_disiller", ...}``;
    its ``softargmax_mul`` is read from ``opt``).

    meta.json ({"backbone_fingerprint", "backbone", "dim", "in_channels", "layers", "softargmax_mul"}) is
    checked against this job's backbone: a projector trained on other weights is a UserError. A
    projector.pt without "softargmax_mul" in its meta.json (trained before the projector had its
    spatial softmax) stays a plain 1x1 conv.
    """
    if not source:
        raise UserError("representation=projected needs projector.source (an MLflow run id of "
                        "jobs/train_projector.py, or a projector.pt file)")
    with tempfile.TemporaryDirectory(prefix="landmarks-projector-") as tmp:
        path, meta, where = _projector_files(source, Path(tmp))
        raw = _torch_load(path, where, what="projector.source", extra_globals=_NUMPY_SCALAR_GLOBALS)
    meta = _official_projector_meta(raw, where) or meta
    trained_on = meta.get("backbone_fingerprint")
    if trained_on and trained_on != backbone_fingerprint:
        named = f" ({meta['backbone']})" if meta.get("backbone") else ""
        raise UserError(f"projector.source {where} was trained on another backbone{named}, weights "
                        f"{trained_on[:12]}, but backbone.source gives weights {backbone_fingerprint[:12]}"
                        f"{f' ({backbone_name})' if backbone_name else ''}; use the projector trained on this "
                        "backbone, or the backbone.source it was trained on")
    state = _projector_state(raw, where)
    dim, got_in = state["proj.weight"].shape[:2]
    if got_in != in_channels or tuple(state["proj.weight"].shape[2:]) != (1, 1):
        raise UserError(f"projector.source {where} maps {got_in} channels (layers={meta.get('layers', '?')}) but "
                        f"this representation has {in_channels}; match `layers` and model.backbone to the projector")
    state.setdefault("proj.bias", torch.zeros(int(dim)))
    projector = Projector(in_channels, int(dim), float(meta.get("softargmax_mul", 0.0)))
    projector.load_state_dict(state)
    projector.meta = dict(meta, source=source)
    return projector.eval()


# ----------------------------------------------------------------------------- the representation


def load_representation(cfg: Any, manifest: Manifest, seed: int) -> Representation:
    """`cfg.representation` of the backbone from backbone.source (+ the projector from projector.source),
    with the dataset's input normalisation; every mismatch is a UserError."""
    backbone, info = load_backbone(cfg.backbone.source, cfg.model.backbone, seed=seed)
    projector = None
    if cfg.representation == "projected":
        if not cfg.projector.source:
            raise UserError("representation=projected needs projector.source: the MLflow run id of a "
                            "jobs/train_projector.py run (or a projector.pt file) trained on this backbone")
        in_channels = sum(block_channels(backbone.stage_channels, "hypercolumn", cfg.layers))
        projector = load_projector(cfg.projector.source, info["fingerprint"], in_channels, cfg.model.backbone)
        if cfg.projector.dim not in ("auto", projector.dim):
            raise UserError(f"projector.dim={cfg.projector.dim} but projector.source {cfg.projector.source} projects "
                            f"to {projector.dim} dimensions; set projector.dim={projector.dim} or projector.dim=auto")
        info["projector_dim"] = projector.dim
    mean, std, _ = input_stats(manifest)
    return Representation(cfg.representation, backbone, info, projector, cfg.layers, mean, std)
