"""The MLflow side of a sweep: its parent run, the trials' job runs, and the end of the sweep:
mean +- std over repeats per grid cell and the best cell.

A trial's job run is found by its (deterministic, unique) run name: one left RUNNING by an
interruption is marked KILLED before the trial reruns; one that FINISHED after the sweep began
is reused, so a job that completed just as the sweep was interrupted is not run again.

A *cell* is a grid point without its repeat key (`repeat`, by default): the paper reports
mean and standard deviation over repeats of each annotation budget (Table 7). The std is
the sample standard deviation (ddof=1); a cell with one finished trial has none.

Logged to the sweep's parent MLflow run:
    metrics  cell/<label>/<metric>_mean, cell/<label>/<metric>_std, cell/<label>/n,
             best/<metric>_mean, best/<metric>_std, best/n, trials, trials_finished, trials_failed
    tags     best_cell (its label), best.<key> (its grid values), failed_trials
    files    sweep/cells.csv, sweep/cells.md, sweep/trials.csv
where <label> is `cell_label(point)`, e.g. "train.lr:0.01 annotations:10".
"""

from __future__ import annotations

import math
import re
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import tracking
from .errors import ConfigError, UserError
from .registry import METRIC_GOALS
from .report.tables import to_csv, to_markdown

# Per job, the metrics to rank by, first found in the trials' results wins (faces: iod, CUB: pck).
JOB_METRICS = {
    "pretrain": ("loss",), "train_projector": ("loss",), "regress": ("iod", "pck"),
    "finetune": ("iod", "pck"), "segment": ("iou",), "match": ("match_diff_px", "match_same_px"),
}


@dataclass
class TrialOutcome:
    point: dict[str, Any]  # grid key -> value
    run_name: str
    metrics: dict[str, float]  # the job's final metrics; empty unless finished
    mlflow_run_id: str | None
    error: str | None  # one line, for a failed trial
    finished: bool


@dataclass
class CellStats:
    cell: dict[str, Any]  # grid point without the repeat key
    label: str
    values: list[float] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)
    failed: int = 0

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None


def trial_outcome(result: Any, point: dict[str, Any], run_name: str = "") -> TrialOutcome:
    """A Tune `Result` -> TrialOutcome; the error is its last line (the job's own message)."""
    metrics = dict(result.metrics or {})
    error = None
    if result.error is not None:
        lines = [line.strip() for line in str(result.error).strip().splitlines() if line.strip()]
        error = lines[-1] if lines else type(result.error).__name__
    finished = error is None and "mlflow_run_id" in metrics  # what run_trial reports when the job is done
    values = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return TrialOutcome(point=point, run_name=run_name, metrics=values if finished else {},
                        mlflow_run_id=metrics.get("mlflow_run_id") or None, error=error, finished=finished)


def open_parent_run(experiment: str, run_name: str, restoring: bool, params: dict[str, Any],
                    tags: dict[str, Any]) -> tracking.RunLogger:
    """The sweep's run: when Tune restores, the parent run of the same Tune dir (`sweep_path` tag,
    which must have the same `sweep_spec`, i.e. job and grid), else a new run."""
    if restoring:
        runs = tracking.find_runs(experiment, tags={"sweep_path": tags["sweep_path"], "sweep_role": "parent"})
        if runs:
            previous = max(runs, key=lambda r: r.info.start_time)
            if previous.data.tags.get("sweep_spec") not in (None, tags["sweep_spec"]):
                raise ConfigError(
                    f"{tags['sweep_path']} was started with another job or grid; Tune cannot change a grid on "
                    "resume: choose another name, or delete that directory to start over")
            return tracking.start_run(experiment, None, run_id=previous.info.run_id)
    parent = tracking.start_run(experiment, run_name, tags={**tags, "sweep_role": "parent"})
    parent.log_params({"sweep": params})
    return parent


def close_stale_runs(experiment: str, run_name: str, tags: dict) -> None:
    """A trial cut off by an interruption left its run RUNNING: nest it, mark it KILLED, then rerun."""
    for run in tracking.find_runs(experiment, name=run_name, status="RUNNING"):
        logger = tracking.RunLogger(run.info.run_id)
        logger.set_tags({k: v for k, v in tags.items() if k != "sweep_trial_id"})
        logger.finish("KILLED")


def adopt_failed_runs(experiment: str, run_name: str, since_ms: int, tags: dict, message: str) -> None:
    """Nest the run a failing job created (if any) under the sweep, and mark it FAILED."""
    for run in tracking.find_runs(experiment, name=run_name):
        if run.info.start_time >= since_ms:
            logger = tracking.RunLogger(run.info.run_id)
            logger.set_tags(tags)
            if run.info.status == "RUNNING":
                logger.fail(message)


def finished_run(experiment: str, run_name: str, since_ms: int) -> Any | None:
    """The FINISHED run of this trial's name since the sweep began, if an earlier attempt got that far."""
    runs = [r for r in tracking.find_runs(experiment, name=run_name, status="FINISHED")
            if r.info.start_time >= since_ms]
    return max(runs, key=lambda r: r.info.start_time) if runs else None


def cell_of(point: dict[str, Any], repeat_key: str) -> dict[str, Any]:
    return {k: v for k, v in point.items() if k != repeat_key}


def cell_label(point: dict[str, Any], repeat_key: str = "repeat") -> str:
    """'train.lr:0.01 annotations:10': usable inside an MLflow metric name ('all' for no keys)."""
    parts = [f"{k}:{re.sub(r'[^A-Za-z0-9_.-]', '_', str(v))}" for k, v in cell_of(point, repeat_key).items()]
    return " ".join(parts) or "all"


def resolve_metric(job: str, metric: str | None, mode: str | None,
                   outcomes: list[TrialOutcome]) -> tuple[str, str]:
    """The configured metric, else the job's headline metric found in the finished trials."""
    reported = sorted({k for o in outcomes if o.finished for k in o.metrics})
    if metric is None:
        candidates = JOB_METRICS.get(job, tuple(METRIC_GOALS))
        metric = next((m for m in candidates if any(m in o.metrics for o in outcomes)), None)
        if metric is None:
            raise UserError(f"no finished trial reported any of {', '.join(candidates)}; set `metric` "
                            f"to one of the reported metrics: {', '.join(reported) or 'none'}")
    elif not any(metric in o.metrics for o in outcomes if o.finished):
        raise UserError(f"metric {metric!r} was not reported by any finished trial; reported: "
                        f"{', '.join(reported) or 'none'}")
    return metric, mode or METRIC_GOALS[metric]


def aggregate(outcomes: list[TrialOutcome], metric: str, repeat_key: str = "repeat") -> list[CellStats]:
    """One CellStats per cell, in the order the cells first appear in `outcomes`."""
    cells: dict[str, CellStats] = {}
    for o in outcomes:
        label = cell_label(o.point, repeat_key)
        stats = cells.setdefault(label, CellStats(cell_of(o.point, repeat_key), label))
        value = o.metrics.get(metric)
        if o.finished and value is not None and math.isfinite(value):
            stats.values.append(float(value))
            stats.run_ids.append(o.mlflow_run_id or "")
        elif not o.finished:
            stats.failed += 1
    return list(cells.values())


def best_cell(cells: list[CellStats], mode: str) -> CellStats | None:
    scored = [c for c in cells if c.n]
    if not scored:
        return None
    return (min if mode == "min" else max)(scored, key=lambda c: c.mean)


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def cell_rows(cells: list[CellStats], metric: str, best: CellStats | None) -> list[dict[str, Any]]:
    rows = []
    for c in cells:
        rows.append({**{k: str(v) for k, v in c.cell.items()}, f"{metric}_mean": _fmt(c.mean),
                     f"{metric}_std": _fmt(c.std), "n": c.n, "failed": c.failed,
                     "best": "*" if c is best else ""})
    return rows


def trial_rows(outcomes: list[TrialOutcome], metric: str) -> list[dict[str, Any]]:
    return [{**{k: str(v) for k, v in o.point.items()}, "run_name": o.run_name,
             "status": "finished" if o.finished else "failed",
             metric: _fmt(o.metrics.get(metric)), "mlflow_run_id": o.mlflow_run_id or "", "error": o.error or ""}
            for o in outcomes]


def finish_sweep(name: str, cfg: Any, outcomes: list[TrialOutcome], parent: Any, job: str) -> dict[str, Any]:
    """Aggregate, log to the parent run, print the summary; UserError when every trial failed."""
    failed = [o for o in outcomes if not o.finished]
    if len(failed) == len(outcomes):
        first = failed[0] if failed else None
        parent.fail(f"all {len(outcomes)} trials failed")
        for o in failed:
            print(f"[sweep] FAILED {o.run_name}: {o.error}", flush=True)
        raise UserError(f"sweep {name}: all {len(outcomes)} trials failed; first: "
                        f"{first.run_name if first else '-'}: {first.error if first else '-'}")
    metric, mode = resolve_metric(job, cfg.metric, cfg.mode, outcomes)
    cells = aggregate(outcomes, metric, cfg.repeat_key)
    best = best_cell(cells, mode)
    rows = cell_rows(cells, metric, best)
    _log_parent(parent, cells, best, metric, outcomes, rows)

    print(f"\n[sweep] {name}: {metric} ({mode}) per cell, mean +- std over {cfg.repeat_key}:", flush=True)
    print(to_markdown(rows), flush=True)
    for o in failed:
        print(f"[sweep] FAILED {o.run_name}: {o.error}", flush=True)
    if best is not None:
        print(f"[sweep] best cell: {best.label}  {metric}={best.mean:.4g}"
              + (f" +- {best.std:.4g}" if best.std is not None else "") + f" (n={best.n})", flush=True)
    parent.finish("FINISHED")
    return {
        metric: best.mean if best else None, f"{metric}_std": best.std if best else None,
        "metric": metric, "mode": mode, "best_cell": best.cell if best else None,
        "trials": len(outcomes), "finished": len(outcomes) - len(failed), "failed": len(failed),
        "failed_trials": [o.run_name for o in failed], "mlflow_run_id": parent.run_id,
        "best_run_id": best_run(best, mode),
    }


def best_run(cell: CellStats | None, mode: str) -> str | None:
    """The MLflow run of the best trial of the best cell (the one a sweep registers)."""
    if cell is None or not cell.n:
        return None
    pick = (min if mode == "min" else max)(range(cell.n), key=lambda i: cell.values[i])
    return cell.run_ids[pick] or None


def _log_parent(parent: Any, cells: list[CellStats], best: CellStats | None, metric: str,
                outcomes: list[TrialOutcome], rows: list[dict[str, Any]]) -> None:
    values: dict[str, float] = {
        "trials": len(outcomes), "trials_finished": sum(o.finished for o in outcomes),
        "trials_failed": sum(not o.finished for o in outcomes),
    }
    for c in cells:
        values[f"cell/{c.label}/n"] = c.n
        if c.mean is not None:
            values[f"cell/{c.label}/{metric}_mean"] = c.mean
        if c.std is not None:
            values[f"cell/{c.label}/{metric}_std"] = c.std
    tags: dict[str, Any] = {"metric": metric,
                            "failed_trials": ", ".join(o.run_name for o in outcomes if not o.finished) or "none"}
    if best is not None:
        values.update({f"best/{metric}_mean": best.mean, "best/n": best.n})
        if best.std is not None:
            values[f"best/{metric}_std"] = best.std
        tags["best_cell"] = best.label
        tags.update({f"best.{k}": v for k, v in best.cell.items()})
    parent.log_metrics(values)
    parent.set_tags(tags)
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "cells.csv").write_text(to_csv(rows))
        Path(tmp, "cells.md").write_text(to_markdown(rows))
        Path(tmp, "trials.csv").write_text(to_csv(trial_rows(outcomes, metric)))
        parent.log_artifact(tmp, "sweep")
