"""Typed job configs: pydantic models with the paper's defaults, YAML presets, dotted overrides.

    cfg = load_config(PretrainConfig, "jobs/configs/pretrain_synthetic_cpu.yaml",
                      ["train.lr=0.1", "ray.num_workers=2"])

A preset may name another preset it derives from with `base: other.yaml` (resolved
next to it); its own keys then override the base's. Unknown keys and bad values
raise `ConfigError`, whose message names the key and the valid keys or values;
jobs turn it into exit code 2 (see `landmarks.cli`).

Shared key names (SPEC "Config keys") live in the section models below; each job's
config composes the sections it needs, so `train.lr` means the same everywhere.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .. import storage
from ..errors import ConfigError
from ..registry import ARCHITECTURES, REPRESENTATIONS

Backbone = Literal[tuple(ARCHITECTURES)]  # the registered backbones (landmarks.registry)
RepresentationKind = Literal[REPRESENTATIONS]  # the dense representations (landmarks.registry)


class Section(BaseModel):
    """Base of every config model: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class DataConfig(Section):
    path: str = Field("", description="dataset directory or s3:// URI written by jobs/ingest.py")
    image_size: int = Field(96, ge=32, description="network input size (faces stored at x136/96)")
    fraction: float = Field(1.0, gt=0.0, le=1.0, description="seeded fraction of the training split")


class ModelConfig(Section):
    backbone: Backbone = "resnet50"
    low_dim: int = Field(128, ge=1, description="MoCo head dimension (MoCo v1 / paper: 128)")


class TrainConfig(Section):
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(256, ge=1, description="global batch size, split over workers")
    lr: float = Field(0.03, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    seed: int = 0
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="fp32: the official code's arithmetic; bf16: autocast to bfloat16 (faster on GPUs; "
        "losses and soft-argmax stay fp32)")


class RayConfig(Section):
    num_workers: int = Field(1, ge=1)
    use_gpu: bool | Literal["auto"] = Field("auto", description="auto: use GPUs when the cluster has them")
    cpus_per_worker: float = Field(1.0, gt=0.0)
    gpus_per_worker: float = Field(1.0, gt=0.0, le=8.0, description="GPU share per worker when use_gpu")
    wait_for_resources: bool = Field(False, description="do not refuse requests the cluster cannot place now")


class MlflowConfig(Section):
    experiment: str = "landmarks"
    run_name: str | None = None


class CheckpointConfig(Section):
    storage_path: str = Field("runs/ray", description="Ray Train storage: local dir or s3:// URI")
    every_epochs: int = Field(1, ge=1)
    keep: int = Field(2, ge=1)


class BackboneSource(Section):
    source: str = Field(
        "random", description="MLflow run id of a pretraining run, checkpoint path, 'random', or ImageNet .pth"
    )


class ProjectorSource(Section):
    source: str | None = Field(None, description="MLflow run id or file of a trained projector")
    dim: int | Literal["auto"] = Field(
        "auto", description="dimensions of projector.source; auto: read from it (a number is checked against it)")

    @field_validator("dim")
    @classmethod
    def _dim_range(cls, v: Any) -> Any:
        if isinstance(v, int) and not 1 <= v <= 4096:
            raise ValueError("projector.dim must be from 1 to 4096, or 'auto'")
        return v


Annotations = Union[int, Literal["all"]]  # noqa: UP007 (pydantic error locations read "annotations.int")


def _check_annotations(value: Any) -> Any:
    if isinstance(value, int) and value < 1:
        raise ValueError("annotations must be a positive integer or 'all'")
    return value


class AnnotationsMixin(Section):
    annotations: Annotations = "all"

    @field_validator("annotations")
    @classmethod
    def _positive(cls, v: Any) -> Any:
        return _check_annotations(v)


# ---------------------------------------------------------------------------------------------
# Loading and overriding


def _valid_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        sub = _section_type(field.annotation)
        if sub is not None:
            keys += _valid_keys(sub, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def _section_type(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) is Union:
        for arg in get_args(annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                return arg
    return None


def valid_keys(model: type[BaseModel]) -> list[str]:
    """All dotted keys of a config model, e.g. ['data.path', ..., 'train.lr']."""
    return _valid_keys(model)


def set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_preset(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """Read a YAML preset, following `base:` chains (relative to the file)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: 'base' chain loops back to itself")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    base = tree.pop("base", None)
    if base:
        tree = _merge(read_preset(path.parent / base, _seen + (path.resolve(),)), tree)
    return tree


def parse_override(text: str) -> tuple[str, Any]:
    """'train.lr=1e-3' -> ('train.lr', 0.001). Values are YAML scalars ('all', '[1, 2]', 'true')."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value (e.g. train.lr=0.01)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", key):
        raise ConfigError(f"override {text!r}: {key!r} is not a dotted key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", raw.strip()):
        value = float(raw)  # YAML 1.1 reads '1e-3' as a string
    return key, value


def _unknown_key(model: type[BaseModel], key: str, source: str) -> ConfigError:
    keys = valid_keys(model)
    close = [k for k in keys if k.split(".")[-1] == key.split(".")[-1]]
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return ConfigError(f"{source}: unknown key '{key}'{hint}; valid keys: {', '.join(keys)}")


def build_config(model: type[BaseModel], tree: dict, source: str = "config") -> Any:
    """Validate a nested dict into `model`, with errors that name dotted keys and the fix."""
    try:
        return model.model_validate(tree)
    except ValidationError as err:
        raise _describe(model, err, source) from None


def _describe(model: type[BaseModel], err: ValidationError, source: str) -> ConfigError:
    lines = []
    for e in err.errors():
        parts = [str(p) for p in e["loc"]]
        # Union branches add their type name to the location ('annotations.int'); drop it.
        parts = [p for p in parts if not re.fullmatch(r"int|str|float|bool|literal\[.*\]|function-.*", p)]
        key = ".".join(parts)
        if e["type"] == "extra_forbidden":
            return _unknown_key(model, key, source)
        lines.append(f"{source}: bad value for '{key}': {e.get('input')!r}: {e['msg']}")
    # Union errors repeat per branch; keep them unique.
    return ConfigError("; ".join(dict.fromkeys(lines)))


def load_config(model: type[BaseModel], path: str | Path | None = None, overrides: list[str] = ()) -> Any:
    """Preset file (optional) + dotted overrides -> a validated config of type `model`."""
    tree = read_preset(path) if path else {}
    source = str(path) if path else "config"
    for text in overrides:
        key, value = parse_override(text)
        if key not in valid_keys(model):
            raise _unknown_key(model, key, "override")
        set_dotted(tree, key, value)
        source = "config + overrides"
    return build_config(model, tree, source)


def to_flat_dict(cfg: BaseModel) -> dict[str, Any]:
    """Dotted key -> value, for MLflow params and Tune grids."""
    return flatten(cfg.model_dump(mode="json"))


def with_overrides(cfg: BaseModel, flat: dict[str, Any]) -> Any:
    """A copy of `cfg` with dotted keys replaced (validated), e.g. a Tune trial's grid point."""
    tree = cfg.model_dump(mode="json")
    for key, value in flat.items():
        if key not in valid_keys(type(cfg)):
            raise _unknown_key(type(cfg), key, "override")
        set_dotted(tree, key, value)
    return build_config(type(cfg), tree, "overrides")


def absolute_paths(cfg: Any) -> Any:
    """A copy with a local data.path (and features.dir, validation.path where the config has them) made
    absolute, so that Ray workers, which run in another directory, read the same files."""
    cfg = cfg.model_copy(deep=True)
    for section, key in (("data", "path"), ("features", "dir"), ("validation", "path")):
        part = getattr(cfg, section, None)
        value = getattr(part, key, "") if part is not None else ""
        if value and not storage.is_s3(value):
            setattr(part, key, str(Path(value).expanduser().resolve()))
    return cfg
