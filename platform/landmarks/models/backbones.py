"""Backbone registry and factory: ResNets with a MoCo v1 embedding head.

One registry (``landmarks.registry.ARCHITECTURES``) and one factory
(``build_backbone``), as in timm.
Every backbone is a torchvision ``ResNet`` built from torchvision's
``BasicBlock`` / ``Bottleneck`` with the parameter names of torchvision
(``conv1``, ``bn1``, ``layer1`` .. ``layer4``, ``fc``), so torchvision ImageNet
checkpoints, MoCo checkpoints and the authors' released checkpoints (official
``train_moco.py``: ``encoder.module.`` keys, see ``load_backbone_weights``) load
by name. ``fc`` is the MoCo v1 head: a
single Linear from the pooled features to ``low_dim`` (facebookresearch/moco
builds the encoder with ``num_classes=dim``).

Shared interface (heads never reach into a model's internals):

- ``forward(x_b3hw) -> (B, low_dim)``: global-average-pooled features + head.
- ``pooled(x_b3hw) -> (B, stage_channels[-1])``: pooled features, no head.
- ``stages(x_b3hw, num_stages=4) -> [layer1, layer2, layer3, layer4][:num_stages]``
  (torchvision names; the paper's conv2_x .. conv5_x), strides 4, 8, 16, 32.
- ``stage_channels``: channels of those outputs; ``name``: registry name.

Parameter counts with the 128-d head match Table 2 of the paper:
resnet18 11.24M, resnet50 23.77M, resnet50_half 6.03M (64-channel stem,
bottleneck widths 32/64/128/256, i.e. stage outputs 128/256/512/1024).
``resnet18_quarter`` is not in the paper: a ResNet18 at a quarter of the width
(16-channel stem, stages 16/32/64/128, 0.72M parameters), sized for pretraining
on a CPU (`make demo`), where a full ResNet18 gets too few MoCo steps to learn.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from landmarks.registry import ARCHITECTURES, Architecture

log = logging.getLogger(__name__)


_BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNetBackbone(ResNet):
    """torchvision ResNet with configurable stem/stage widths and the shared interface."""

    def __init__(self, name: str, spec: Architecture, low_dim: int = 128) -> None:
        # ResNet.__init__ hard-codes the stage widths, so build the same modules here
        # (same names, same initialisation) with ``spec.widths``.
        nn.Module.__init__(self)
        self.name = name
        self.low_dim = low_dim
        self._norm_layer = nn.BatchNorm2d
        self.inplanes = spec.stem_width
        self.dilation = 1
        self.groups = 1
        self.base_width = 64  # makes Bottleneck width == planes
        self.conv1 = nn.Conv2d(3, spec.stem_width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(spec.stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        n1, n2, n3, n4 = spec.blocks_per_stage
        block = _BLOCKS[spec.block]
        self.layer1 = self._make_layer(block, spec.widths[0], n1)
        self.layer2 = self._make_layer(block, spec.widths[1], n2, stride=2)
        self.layer3 = self._make_layer(block, spec.widths[2], n3, stride=2)
        self.layer4 = self._make_layer(block, spec.widths[3], n4, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.stage_channels: tuple[int, int, int, int] = spec.stage_channels
        self.fc = nn.Linear(self.stage_channels[-1], low_dim)
        for m in self.modules():  # torchvision's ResNet initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def stages(self, x_b3hw: torch.Tensor, num_stages: int = 4) -> list[torch.Tensor]:
        """Outputs of layer1..layer{num_stages}; later stages are not computed."""
        if not 1 <= num_stages <= 4:
            raise ValueError(f"num_stages must be in 1..4, got {num_stages}")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x_b3hw))))
        outs = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4)[:num_stages]:
            x = layer(x)
            outs.append(x)
        return outs

    def pooled(self, x_b3hw: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled layer4 features, (B, stage_channels[-1])."""
        return torch.flatten(self.avgpool(self.stages(x_b3hw)[-1]), 1)

    def forward(self, x_b3hw: torch.Tensor) -> torch.Tensor:
        """MoCo embedding (not normalized), (B, low_dim)."""
        return self.fc(self.pooled(x_b3hw))


def build_backbone(name: str, low_dim: int = 128) -> ResNetBackbone:
    """Build a registered backbone with a ``low_dim`` MoCo head (128 in the paper, Sec. 4)."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown backbone {name!r}; valid choices: {sorted(ARCHITECTURES)}")
    if int(low_dim) != low_dim or low_dim < 1:
        raise ValueError(f"low_dim must be a positive integer, got {low_dim!r}")
    return ResNetBackbone(name, ARCHITECTURES[name], int(low_dim))


# ----------------------------------------------------------------------------- weights

_HEAD_PREFIX = "fc."
# The official train_moco.py saves InsResNet*.state_dict(): a torchvision-named ResNet wrapped in
# nn.DataParallel under ``encoder``, hence ``encoder.module.conv1.weight`` ...
OFFICIAL_MOCO_PREFIX = "encoder.module."
_WRAPPER_PREFIXES = (OFFICIAL_MOCO_PREFIX, "module.", "_orig_mod.", "backbone.", "model.")
_NESTING_KEYS = ("state_dict", "model", "backbone")


@dataclass
class LoadReport:
    """What ``load_backbone_weights`` did, key by key."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the model, absent from the checkpoint
    unexpected: list[str] = field(default_factory=list)  # in the checkpoint, unknown to the model
    skipped: dict[str, str] = field(default_factory=dict)  # key -> why (e.g. 1000-class fc)

    def __str__(self) -> str:
        parts = [f"{self.source}: loaded {len(self.loaded)} tensors"]
        if self.missing:
            parts.append(f"missing {len(self.missing)} (kept at init): {self.missing}")
        if self.unexpected:
            parts.append(f"unexpected {len(self.unexpected)} (ignored): {self.unexpected}")
        for key, why in self.skipped.items():
            parts.append(f"skipped {key}: {why}")
        return "; ".join(parts)


# Globals a weights-only load allows besides torch's defaults (tensors, storages, OrderedDict, plain
# containers and values). The official train_moco.py pickles its argparse options (`opt`), an
# argparse.Namespace of str/int/float/bool/None/list values; nothing else it saves needs more.
CHECKPOINT_SAFE_GLOBALS: tuple[type, ...] = (argparse.Namespace,)


def torch_load_weights(path: str | os.PathLike, extra_globals: tuple = ()) -> object:
    """``torch.load(path)`` weights-only on the CPU, allowing ``CHECKPOINT_SAFE_GLOBALS`` (and
    `extra_globals`) only.

    Zip (PyTorch >= 1.6) and legacy (PyTorch 1.4, the authors' version) files both load. Anything
    else pickled (a custom class, a dict subclass, a function) raises ``pickle.UnpicklingError``.
    """
    with torch.serialization.safe_globals([*CHECKPOINT_SAFE_GLOBALS, *extra_globals]):
        return torch.load(path, map_location="cpu", weights_only=True)


def _is_state_dict(obj: Mapping) -> bool:
    return len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def extract_state_dict(obj: object, source: str) -> dict[str, torch.Tensor]:
    """Unwrap checkpoint nesting and wrapper prefixes down to backbone keys."""
    while isinstance(obj, Mapping) and not _is_state_dict(obj):
        inner = next((obj[k] for k in _NESTING_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            raise ValueError(
                f"{source}: no state dict found; top-level keys {sorted(map(str, obj))[:20]} "
                f"(expected tensors, or one of {list(_NESTING_KEYS)} holding them)"
            )
        obj = inner
    if not isinstance(obj, Mapping):
        raise TypeError(f"{source}: expected a state dict (mapping of tensors), got {type(obj).__name__}")
    state = dict(obj)
    changed = True
    while changed:
        changed = False
        if any(k.startswith("encoder_q.") for k in state):  # MoCo: keep the query encoder only
            state = {k[len("encoder_q.") :]: v for k, v in state.items() if k.startswith("encoder_q.")}
            changed = True
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


@functools.cache
def _body_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """Shapes of a registered backbone's non-head tensors (built on the meta device)."""
    with torch.device("meta"):
        model = build_backbone(name)
    return _body(model.state_dict())


def _body(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {
        k: tuple(v.shape)
        for k, v in state.items()
        if not k.startswith(_HEAD_PREFIX) and not k.endswith("num_batches_tracked")
    }


def identify_backbone(state: Mapping[str, torch.Tensor]) -> str | None:
    """The registered backbone whose (non-head) tensor shapes `state` has, or None."""
    body = _body(state)
    return next((n for n in ARCHITECTURES if _body_shapes(n) == body), None)


def load_backbone_weights(
    backbone: ResNetBackbone,
    path_or_state_dict: str | os.PathLike | Mapping,
    strict: bool = True,
) -> LoadReport:
    """Load torchvision-ImageNet, MoCo, or plain backbone weights into ``backbone``.

    Accepts a file path (``torch_load_weights``: weights-only, no downloads) or an
    in-memory checkpoint: a plain state dict, a MoCo state dict (``encoder_q.``
    / ``module.encoder_q.`` keys; the key encoder and queue are ignored), or
    either nested under ``state_dict`` / ``model`` / ``backbone``. The authors'
    checkpoints (``{"opt", "model", "contrast", "optimizer", "epoch",
    "model_ema"}``) give ``model``, the query encoder, with its
    ``encoder.module.`` prefix stripped; ``model_ema`` is ignored. A head whose
    shape differs (torchvision's 1000-class ``fc``, another ``low_dim``) is
    skipped and reported; the head keeps its initialisation.

    Raises:
        FileNotFoundError: the path does not exist.
        TypeError: the file holds something other than a mapping of tensors.
        ValueError: the checkpoint holds another registered architecture (the
            message names both), or, with ``strict``, its non-head tensors do
            not match the model (missing / unexpected / mis-shaped keys listed).
    """
    if isinstance(path_or_state_dict, Mapping):
        source, raw = "<state dict>", path_or_state_dict
    else:
        source = os.fspath(path_or_state_dict)
        if not os.path.isfile(source):
            raise FileNotFoundError(f"backbone weights file not found: {source}")
        raw = torch_load_weights(source)
    state = extract_state_dict(raw, source)
    target = backbone.state_dict()
    body_ckpt, body_model = _body(state), _body(target)

    if body_ckpt != body_model:
        arch = identify_backbone(state)
        if arch is not None and arch != backbone.name:
            raise ValueError(
                f"{source}: checkpoint holds a {arch!r} backbone but the model is {backbone.name!r}; "
                f"set model.backbone={arch} or use a {backbone.name} checkpoint"
            )
        missing = sorted(set(body_model) - set(body_ckpt))
        unexpected = sorted(set(body_ckpt) - set(body_model))
        mis_shaped = {
            k: (body_ckpt[k], body_model[k])
            for k in sorted(set(body_ckpt) & set(body_model))
            if body_ckpt[k] != body_model[k]
        }
        if strict:
            raise ValueError(
                f"{source}: checkpoint does not match backbone {backbone.name!r}: "
                f"{len(missing)} missing (first {missing[:5]}), {len(unexpected)} unexpected "
                f"(first {unexpected[:5]}), {len(mis_shaped)} mis-shaped "
                f"(checkpoint vs model, first {list(mis_shaped.items())[:3]}); pass strict=False to "
                f"load the matching tensors only"
            )

    report = LoadReport(source)
    to_load: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key not in target:
            report.unexpected.append(key)
        elif tuple(tensor.shape) != tuple(target[key].shape):
            report.skipped[key] = (
                f"checkpoint shape {tuple(tensor.shape)} != model {tuple(target[key].shape)}"
            )
        else:
            to_load[key] = tensor
    report.missing = sorted(k for k in target if k not in state and not k.endswith("num_batches_tracked"))
    backbone.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    log.info("%s", report)
    return report
