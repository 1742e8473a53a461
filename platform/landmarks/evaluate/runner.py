"""How a frozen-feature evaluation job runs: its MLflow run, and where it computes.

    metrics = run_evaluation("regress", cfg, args, plan, run_name(cfg, plan), evaluate_regression, params)

From the command line the evaluation runs as one Ray task with the resources of `ray.*`
(`cluster.run_task`); inside a Ray worker (a Tune trial) it runs in process. Either way the MLflow
run is created first and ends FINISHED, FAILED with the error as a tag, or KILLED on Ctrl-C (exit 130).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from .. import tracking
from ..cli import JobArgs, print_summary
from ..cluster import in_ray_worker, run_task
from ..config import to_flat_dict


def _remote_call(evaluate: Callable, cfg_dict: dict, cfg_cls: type, run_id: str, uri: str) -> dict:
    # A worker of a cluster started elsewhere has neither the driver's environment nor its working
    # directory: what the task looks up in MLflow (a `backbone.source` run id) is in the job's store.
    os.environ["MLFLOW_TRACKING_URI"] = uri
    cfg = cfg_cls.model_validate(cfg_dict)
    return evaluate(cfg, tracking.RunLogger(run_id, uri=uri))


def run_logged(job: str, cfg: Any, tags: dict, run_name: str, evaluate: Callable, verbose: bool,
               extra_params: dict | None = None, datasets: tuple = (), **in_process: Any) -> dict:
    """Create the MLflow run (with the dataset splits it reads, `datasets`: (manifest, path, split,
    context) each, as its inputs), then `evaluate(cfg, run_logger, **in_process)` in this process (inside
    a Ray worker) or as one Ray task; returns its metrics with the run id."""
    logger = tracking.start_run(cfg.mlflow.experiment, run_name, tags={"job": job, **tags})
    logger.log_params({**to_flat_dict(cfg), **(extra_params or {})})
    for manifest, path, split, context in datasets:
        logger.log_dataset(manifest, path, split, context)
    with logger.ending(job):  # Ctrl-C: the task cancelled, the run KILLED; an error: FAILED
        if in_ray_worker():
            metrics = evaluate(cfg, logger, **in_process)
        else:
            args = (evaluate, cfg.model_dump(mode="json"), type(cfg), logger.run_id, logger.uri)
            metrics = run_task(_remote_call, args, cfg.ray, job, verbose)
    logger.finish()
    return {**metrics, "mlflow_run_id": logger.run_id}


def head_params(plan: Any) -> dict:
    """The params every job that trains a head logs beside its config: its resolved settings, the training
    rows it drew and the backbone's fingerprint."""
    return {**plan.settings.params(), "resolved.train_rows": len(plan.rows),
            "backbone.fingerprint": plan.rep.info["fingerprint"]}


def run_evaluation(job: str, cfg: Any, args: JobArgs, plan: Any, run_name: str, evaluate: Callable,
                   extra_params: dict | None = None) -> dict:
    """What every evaluation job's `run_*` does once its `plan` is checked: `run_logged` with the plan's
    tags and the splits of its dataset it reads (train, val, test as it has them; the plan is handed to
    `evaluate` in process), then the summary lines."""
    contexts = {"train": "training", "val": "validation", "test": "evaluation"}
    splits = [s for s in getattr(plan, "splits", ("train", "test")) if s in plan.manifest.splits]
    datasets = tuple((plan.manifest, cfg.data.path, s, contexts.get(s, s)) for s in splits)
    metrics = run_logged(job, cfg, plan.tags, run_name, evaluate, args.verbose, extra_params, datasets, plan=plan)
    print_summary(job, metrics)
    return metrics
