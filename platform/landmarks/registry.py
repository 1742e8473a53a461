"""The names the platform knows, in one place (torch-free, cheap to import):

- `ARCHITECTURES`: the backbones (`models.backbones` builds them; configs, reports and benchmarks
  read their names and channel counts from here);
- `REPRESENTATIONS`: the dense representation kinds (`models.representation` builds them; configs
  and the feature cache check against them), and `CONV4_STAGE`, the stage conv4 is made of;
- `METRIC_GOALS`: each headline metric and whether lower or higher is better (sweeps, reports);
- `JOBS`: job name -> (config class, run function), what `jobs/<name>.py` runs and what a sweep can
  grid over (all but `NOT_SWEPT`); `MODEL_TASKS`: the jobs that log a model; `COMMANDS`: the scripts
  with arguments of their own (ingest, sweep, report, demo, predict).
  Entries are import strings so that looking a job up imports only that job.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The dense representations (paper Sec. 3.2; SPEC "Represent"): what a backbone gives, the hypercolumn
# (layer4..layer1) or conv4, and `projected`, a projector on the hypercolumn.
BACKBONE_REPRESENTATIONS = ("hypercolumn", "conv4")
REPRESENTATIONS = (*BACKBONE_REPRESENTATIONS, "projected")
CONV4_STAGE = 2  # conv4_x is torchvision's layer3: index 2 of the stage outputs [layer1..layer4]


@dataclass(frozen=True)
class Architecture:
    """A ResNet of the registry: torchvision block type, blocks and bottleneck widths per stage, stem width."""

    block: str  # "basic" (ResNet18) or "bottleneck" (ResNet50)
    blocks_per_stage: tuple[int, int, int, int]
    widths: tuple[int, int, int, int]  # ``planes`` of each stage (the bottleneck width)
    stem_width: int
    params_m_table2: float | None  # with the 128-d head, Table 2 of the paper (None: not in it)

    @property
    def stage_channels(self) -> tuple[int, int, int, int]:
        expansion = 4 if self.block == "bottleneck" else 1
        return tuple(w * expansion for w in self.widths)  # type: ignore[return-value]

    @property
    def hypercolumn_channels(self) -> int:
        return sum(self.stage_channels)

    @property
    def conv4_channels(self) -> int:
        return self.stage_channels[CONV4_STAGE]


ARCHITECTURES: dict[str, Architecture] = {
    "resnet18": Architecture("basic", (2, 2, 2, 2), (64, 128, 256, 512), 64, 11.24),
    "resnet50": Architecture("bottleneck", (3, 4, 6, 3), (64, 128, 256, 512), 64, 23.77),
    "resnet50_half": Architecture("bottleneck", (3, 4, 6, 3), (32, 64, 128, 256), 64, 6.03),
    # Not in the paper: a quarter-width ResNet18 sized for pretraining on a CPU (`make demo`).
    "resnet18_quarter": Architecture("basic", (2, 2, 2, 2), (16, 32, 64, 128), 16, None),
}

# Headline metrics (SPEC "--metrics-out") and whether lower or higher is better.
METRIC_GOALS = {"iod": "min", "pck": "max", "iou": "max", "loss": "min", "match_same_px": "min",
                "match_diff_px": "min"}

JOBS: dict[str, tuple[str, str]] = {
    "pretrain": ("landmarks.config:PretrainConfig", "landmarks.train.pretrain:run_pretrain"),
    "train_projector": ("landmarks.config:ProjectorConfig", "landmarks.train.projector:run_projector"),
    "regress": ("landmarks.config:RegressConfig", "landmarks.evaluate.regress:run_regress"),
    "match": ("landmarks.config:MatchConfig", "landmarks.evaluate.match:run_match"),
    "segment": ("landmarks.config:SegmentConfig", "landmarks.evaluate.segment:run_segment"),
    "finetune": ("landmarks.config:FinetuneConfig", "landmarks.train.finetune:run_finetune"),
    "baseline": ("landmarks.config:BaselineConfig", "landmarks.evaluate.baseline:run_baseline"),
    "sweep": ("landmarks.sweep:SweepConfig", "landmarks.sweep:run_sweep"),
    "predict": ("landmarks.config:PredictConfig", "landmarks.predict.job:run_predict"),
}
NOT_SWEPT = ("sweep", "predict")  # jobs a sweep cannot run: a sweep itself, and using a model (no training)
# Jobs whose run logs a "model" (landmarks.models.artifact.LandmarkModel as an MLflow pyfunc) and what it predicts.
MODEL_TASKS: dict[str, str] = {"regress": "landmarks", "finetune": "landmarks", "segment": "mask",
                               "train_projector": "descriptors"}
# Commands with arguments of their own (not a config): name -> `main(argv=None) -> exit code`.
COMMANDS: dict[str, str] = {
    "ingest": "landmarks.data.ingest_cli:main",
    "sweep": "landmarks.sweep:sweep_main",  # a job (above) whose command line adds grid axes
    "report": "landmarks.report:main",
    "demo": "landmarks.demo:main",
    "predict": "landmarks.predict.job:main",  # a config job whose command line adds --overlays / --skip-bad
}


def _load(ref: str) -> Any:
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def command(name: str) -> Callable[..., int]:
    """The `main(argv=None)` of a command (`COMMANDS`)."""
    return _load(COMMANDS[name])


def config_class(job: str) -> type:
    if job not in JOBS:
        from .errors import ConfigError

        raise ConfigError(f"unknown job {job!r}; valid jobs: {', '.join(JOBS)}")
    return _load(JOBS[job][0])


def run_function(job: str) -> Callable:
    config_class(job)
    return _load(JOBS[job][1])


def job_for_preset(path: str | Path) -> str:
    """'jobs/configs/regress_mafl.yaml' -> 'regress' (longest job name that prefixes the file name)."""
    stem = Path(path).stem
    matches = [j for j in JOBS if stem == j or stem.startswith(j + "_")]
    if not matches:
        from .errors import ConfigError

        raise ConfigError(f"{path}: preset name does not start with a job name ({', '.join(JOBS)})")
    return max(matches, key=len)


def config_class_for_preset(path: str | Path) -> type:
    return config_class(job_for_preset(path))
