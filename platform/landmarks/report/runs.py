"""MLflow runs -> `RunRecord`s: one flat description of each finished job run, as the tables need it.

The jobs tag their runs (`job`, `dataset`, `backbone`, `representation`, `budget`, `init`,
`projector_dim`, `repeat`, `image_size`, `backbone_source`; see `landmarks.evaluate.regress`) and
log their flattened config as params; where a tag is missing the param of the same setting is
used. Two settings live on the *pretraining* run a backbone came from, found through
`backbone_source` when it is an MLflow run id: whether it saw in-the-wild CelebA (Tables 4/5)
and which fraction of its data (Table 9). Sweep parents, reports and unfinished runs are skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .. import tracking
from ..errors import UserError
from ..registry import ARCHITECTURES

# Channels of the representations (SPEC "Represent"; conv4 = layer3), from the one registry.
HYPERCOLUMN_DIMS = {name: arch.hypercolumn_channels for name, arch in ARCHITECTURES.items()}
CONV4_DIMS = {name: arch.conv4_channels for name, arch in ARCHITECTURES.items()}
# Our dataset names (jobs/ingest.py DATASET) -> the paper CSVs' column prefixes.
PAPER_DATASETS = {"mafl": "mafl", "aflw-mtfl": "aflw_m", "aflw": "aflw_r", "300w": "300w", "cub": "cub"}
# Our `init` tag (sources.load_backbone) -> the paper's name for it.
INIT_NAMES = {"pretrained": "ours", "random": "random", "imagenet": "imagenet"}
METRICS = ("iod", "pck", "iou", "match_same_px", "match_diff_px", "loss")
RUN_ID = re.compile(r"[0-9a-f]{32}")


@dataclass
class RunRecord:
    run_id: str
    run_name: str
    experiment: str
    job: str
    dataset: str  # the paper's name where it has one (aflw_m, ...), else ours (synthetic-faces)
    backbone: str
    representation: str
    budget: str  # "all" or the number of annotated images
    init: str  # ours | random | imagenet | ...
    projected: str  # "1" / "0"
    dim: str  # channels of the evaluated representation
    in_the_wild: str  # "1" / "0"
    finetuned: str  # "1" / "0"
    fraction: str  # fraction of the pretraining data ("0.25"), "" where unknown
    image_size: str
    repeat: str
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)


def load_records(experiments: list[str]) -> list[RunRecord]:
    """Finished job runs of every experiment; UserError for an experiment that has none."""
    records: list[RunRecord] = []
    lookup = _SourceLookup()
    for name in experiments:
        runs = tracking.find_runs(name)
        if not runs:
            raise UserError(f"MLflow experiment {name!r} has no runs at {tracking.safe_uri(tracking.tracking_uri())} "
                            "(check the name and MLFLOW_TRACKING_URI)")
        kept = [r for r in runs if r.info.status == "FINISHED" and r.data.tags.get("job")
                and r.data.tags.get("job") not in ("sweep", "report") and r.data.tags.get("sweep_role") != "parent"]
        records += [to_record(r, name, lookup) for r in kept]
    if not records:
        raise UserError(f"no finished job runs in {', '.join(experiments)} (runs that are still going, failed, "
                        "sweep parents and reports are not reported)")
    return records


def _first(*values: Any) -> str:
    return next((str(v) for v in values if v not in (None, "", "None")), "")


def _budget(value: str) -> str:
    try:
        return "all" if value in ("", "all") else str(int(float(value)))
    except ValueError:
        return value


def to_record(run: Any, experiment: str, lookup: _SourceLookup | None = None) -> RunRecord:
    tags, params = dict(run.data.tags), dict(run.data.params)
    job = tags.get("job", "")
    backbone = _first(tags.get("backbone"), params.get("model.backbone"))
    representation = _first(tags.get("representation"), params.get("representation"))
    projected = representation == "projected"
    if projected:
        dim = _first(tags.get("projector_dim"), params.get("projector.dim"))
    elif job == "pretrain":
        dim = ""
    else:
        dim = str((CONV4_DIMS if representation == "conv4" else HYPERCOLUMN_DIMS).get(backbone, ""))
    init = _first(tags.get("init"), _init_from_source(params.get("backbone.source", "")))
    source = _first(tags.get("backbone_source"), params.get("backbone.source"))
    origin = (lookup or _SourceLookup()).pretraining(source) if RUN_ID.fullmatch(source) else {}
    wild = _first(tags.get("in_the_wild"), "1" if origin.get("dataset") == "celeba-wild" else "0")
    fraction = _first(tags.get("pretrain_fraction"), origin.get("data_fraction"),
                      tags.get("data_fraction") if job == "pretrain" else None)
    finetuned = job == "finetune" or _first(tags.get("finetuned"), params.get("finetune")).lower() in ("1", "true")
    dataset = _first(tags.get("dataset"))
    return RunRecord(
        run_id=run.info.run_id, run_name=run.info.run_name or "", experiment=experiment, job=job,
        dataset=PAPER_DATASETS.get(dataset, dataset), backbone=backbone, representation=representation,
        budget=_budget(_first(tags.get("budget"), params.get("annotations"))), init=INIT_NAMES.get(init, init),
        projected="1" if projected else "0", dim=dim, in_the_wild="1" if wild in ("1", "True", "true") else "0",
        finetuned="1" if finetuned else "0", fraction=f"{float(fraction):.2f}" if fraction else "",
        image_size=_first(tags.get("image_size"), params.get("data.image_size")),
        repeat=_first(tags.get("repeat"), params.get("repeat"), "0"),
        metrics={k: float(v) for k, v in run.data.metrics.items()}, params=params,
    )


def _init_from_source(source: str) -> str:
    if not source:
        return ""
    if source == "random":
        return "random"
    return "imagenet" if "imagenet" in source.lower() else "pretrained"


class _SourceLookup:
    """Tags of the pretraining runs backbones came from, each fetched once."""

    def __init__(self):
        self._cache: dict[str, dict[str, str]] = {}

    def pretraining(self, run_id: str) -> dict[str, str]:
        if run_id not in self._cache:
            try:
                self._cache[run_id] = dict(tracking.get_run(run_id).data.tags)
            except UserError:  # the run is gone or lives at another tracking server
                self._cache[run_id] = {}
        return self._cache[run_id]
