"""The driver side of every Ray Train job (pretrain, train_projector, finetune): one skeleton.

    plan = Training(job="finetune", what="fine-tuning", cfg=cfg, name=name, meta=meta, compatible=KEYS, ...)
    return run_training(plan, train_loop_per_worker, loop_config, datasets, finish, args.verbose)

1. the latest checkpoint Ray Train kept under `name` is looked up and checked (`check_resume`: the
   `compatible` keys of its meta.json must equal this run's `meta`); a run whose checkpoint says it is
   `finished` is only logged again (no cluster),
2. the MLflow run starts, or continues the one the checkpoint belongs to (params, and dataset inputs
   on a new run),
3. a TorchTrainer runs the job's `train_loop_per_worker` (`cluster.fit_torch_trainer`) with the job's
   loop config plus the config the workers read (`cfg`, every setting resolved), the run id and the
   tracking URI,
4. `finish(outcome, logger)` logs the result and returns the job's metrics (printed as its summary).

Ctrl-C and a tracking server that stops answering end the run as `RunLogger.ending` says, with the
command that resumes it (`checkpoint.resume_hint`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import tracking
from ..cli import print_summary
from ..cluster import fit_torch_trainer, join_cluster
from ..errors import UserError
from .checkpoint import latest_checkpoint, remove_orphan_temp_dirs, resume_hint


@dataclass
class Training:
    """One training run, planned and checked before any work."""

    job: str  # the job's name: its printed lines ("[pretrain] ...") and summary
    what: str  # what the job does, in messages: "pretraining"
    cfg: Any  # the job's config (cfg.ray, cfg.checkpoint, cfg.mlflow, cfg.max_failures), every setting resolved
    name: str  # the Ray Train run name (and the MLflow run's)
    meta: dict  # this run's settings that a checkpoint under `name` must share (`compatible`)
    compatible: tuple[str, ...]
    remedy: Callable[[str, str, Any, Any], str]  # (checkpoint, key, its value, this run's) -> the error
    tags: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    datasets: list[tuple[Any, str, str, str]] = field(default_factory=list)  # (manifest, path, split, context)
    finished: Callable[[dict], bool] = lambda meta: False  # a checkpoint's meta -> nothing left to train


@dataclass
class Outcome:
    """The checkpoint a run ended with: its URI, its Ray `Checkpoint` and the metrics reported with it
    (for a run that was already finished: the checkpoint's meta.json)."""

    checkpoint_uri: str
    checkpoint: Any
    metrics: dict


def check_resume(previous: tuple[str, dict] | None, meta: dict, compatible: tuple[str, ...],
                 remedy: Callable[[str, str, Any, Any], str]) -> None:
    """A checkpoint (uri, meta) under this run name must agree with this run on every `compatible` key;
    a mismatch is the UserError `remedy` words (`new_run`, or the job's own)."""
    if not previous:
        return
    where, old = previous
    for key in compatible:
        if key in old and old[key] != meta[key]:
            raise UserError(remedy(where, key, old[key], meta[key]))


def new_run(what: str) -> Callable[[str, str, Any, Any], str]:
    """The mismatch that asks for another run name: "checkpoint X was trained with dim=64, this run has ..."."""
    return lambda where, key, old, new: (f"checkpoint {where} was trained with {key}={old!r}, this run has {new!r}; "
                                         f"set another mlflow.run_name (or checkpoint.storage_path) to {what}")


def run_training(plan: Training, loop: Callable[[dict], None], loop_config: Callable[[], dict],
                 datasets: Callable[[], dict], finish: Callable[[Outcome, tracking.RunLogger], dict],
                 verbose: bool = False) -> dict:
    """Plan -> resume check -> TorchTrainer -> finish (module docstring) -> the job's metrics."""
    cfg, name = plan.cfg, plan.name
    previous = latest_checkpoint(cfg.checkpoint.storage_path, name)
    check_resume(previous, plan.meta, plan.compatible, plan.remedy)
    done = previous is not None and plan.finished(previous[1])
    use_gpu = False if done else join_cluster(cfg.ray, plan.what, verbose)

    logger = tracking.start_run(cfg.mlflow.experiment, name, tags=plan.tags,
                                run_id=previous[1].get("mlflow_run_id") if previous else None)
    logger.log_params(plan.params)
    if not previous:
        for manifest, path, split, context in plan.datasets:
            logger.log_dataset(manifest, path, split, context)
    if previous:
        print(f"[{plan.job}] {name}: already finished, nothing to train ({previous[0]})" if done else
              f"[{plan.job}] resuming {name} from {previous[0]} (epoch {previous[1]['epoch'] + 1} done)", flush=True)
    with logger.ending(plan.what, rerun=resume_hint(name)):
        if done:
            from ray.train import Checkpoint

            outcome = Outcome(previous[0], Checkpoint(previous[0]), dict(previous[1]))
        else:
            config = {**loop_config(), "cfg": cfg.model_dump(mode="json"), "mlflow_run_id": logger.run_id,
                      "tracking_uri": tracking.tracking_uri()}
            try:
                result = fit_torch_trainer(loop, config, cfg, name, use_gpu, datasets(), plan.what, verbose=verbose)
            finally:
                remove_orphan_temp_dirs()  # checkpoints of workers killed before Ray persisted them (this node)
            if result.checkpoint is None:
                raise UserError(f"{plan.what} ended without a checkpoint")
            outcome = Outcome(result.checkpoint.path, result.checkpoint, dict(result.metrics))
        metrics = finish(outcome, logger)
    print_summary(plan.job, metrics)
    return metrics


__all__ = ["Outcome", "Training", "check_resume", "new_run", "run_training"]
