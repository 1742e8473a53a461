"""Job name -> (config class, run function): what `jobs/<name>.py` runs and what a sweep can grid over.

Entries are import strings so that looking a job up imports only that job.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

JOBS: dict[str, tuple[str, str]] = {
    "pretrain": ("landmarks.train.configs:PretrainConfig", "landmarks.train.pretrain:run_pretrain"),
    "train_projector": ("landmarks.train.configs:ProjectorConfig", "landmarks.train.projector:run_projector"),
    "regress": ("landmarks.train.configs:RegressConfig", "landmarks.train.regress:run_regress"),
    "match": ("landmarks.train.configs:MatchConfig", "landmarks.train.match:run_match"),
    "segment": ("landmarks.train.configs:SegmentConfig", "landmarks.train.segment:run_segment"),
    "finetune": ("landmarks.train.configs:FinetuneConfig", "landmarks.train.finetune:run_finetune"),
    "sweep": ("landmarks.sweep:SweepConfig", "landmarks.sweep:run_sweep"),
}


def _load(ref: str) -> Any:
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


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
