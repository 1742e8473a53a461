"""Ray Train / Ray task resources from a config's `ray.*` section, checked before any work starts."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any

from ..errors import UserError

HEALTH_CHECK_INTERVAL_ENV, HEALTH_CHECK_INTERVAL_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5"


def resolve_use_gpu(use_gpu: bool | str, resources: dict[str, float]) -> bool:
    """'auto' -> True when the cluster has GPUs."""
    if use_gpu == "auto":
        return resources.get("GPU", 0) > 0
    return bool(use_gpu)


def check_resources(ray_cfg: Any, use_gpu: bool, resources: dict[str, float], what: str = "job") -> None:
    """Refuse, with a hint, a request the running cluster cannot place (instead of pending forever)."""
    if getattr(ray_cfg, "wait_for_resources", False):
        return
    workers = getattr(ray_cfg, "num_workers", 1)
    cpus_needed = workers * ray_cfg.cpus_per_worker
    cpus = resources.get("CPU", 0)
    if cpus_needed > cpus:
        raise UserError(
            f"{what} asks for {workers} worker(s) x {ray_cfg.cpus_per_worker:g} CPU = {cpus_needed:g} CPUs "
            f"but the Ray cluster has {cpus:g}; lower ray.num_workers / ray.cpus_per_worker, or add nodes "
            f"(set ray.wait_for_resources=true on an autoscaling cluster)"
        )
    if use_gpu:
        gpus_needed = workers * ray_cfg.gpus_per_worker
        gpus = resources.get("GPU", 0)
        if gpus_needed > gpus:
            raise UserError(
                f"{what} asks for {workers} worker(s) x {ray_cfg.gpus_per_worker:g} GPU = {gpus_needed:g} GPUs "
                f"but the Ray cluster has {gpus:g}; lower ray.num_workers, set ray.use_gpu=false, or add "
                f"GPU nodes (ray.wait_for_resources=true on an autoscaling cluster)"
            )


def join_cluster(ray_cfg: Any, what: str, verbose: bool = False) -> bool:
    """Connect to Ray (landmarks.cluster.connect), check it can hold the job's workers -> use_gpu."""
    from ..cluster import connect

    resources = connect(verbose=verbose)
    use_gpu = resolve_use_gpu(ray_cfg.use_gpu, resources)
    check_resources(ray_cfg, use_gpu, resources, what)
    return use_gpu


def scaling_config(ray_cfg: Any, use_gpu: bool):
    from ray.train import ScalingConfig

    resources = {"CPU": ray_cfg.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = ray_cfg.gpus_per_worker
    return ScalingConfig(num_workers=ray_cfg.num_workers, use_gpu=use_gpu, resources_per_worker=resources)


def task_options(ray_cfg: Any, use_gpu: bool) -> dict[str, float]:
    """Options for a single Ray task running a whole (evaluation) job."""
    opts = {"num_cpus": ray_cfg.cpus_per_worker}
    if use_gpu:
        opts["num_gpus"] = ray_cfg.gpus_per_worker
    return opts


def _run_worker(loop: Callable[[dict], None], verbose: bool, config: dict[str, Any]) -> None:
    """A Train worker: unless `verbose`, hide the "Reporting training result ..." line that Ray 2.60
    logs at INFO per report and worker through a logger named after its file (so the `ray.train`
    level misses it); then run the job's loop."""
    if not verbose:
        try:
            from ray.train.v2._internal.execution import context
        except ImportError:  # another Ray layout: its lines show, nothing else changes
            pass
        else:
            logging.getLogger(context.__file__).setLevel(logging.WARNING)
    loop(config)


def fit_torch_trainer(loop: Callable[[dict], None], loop_config: dict[str, Any], cfg: Any, name: str, use_gpu: bool,
                      datasets: dict[str, Any], what: str, verbose: bool = False):
    """Run `loop` as a Ray Train TorchTrainer with the job's scaling (cfg.ray), checkpoint storage and
    retention (cfg.checkpoint) and failure policy (cfg.max_failures) -> ray.train.Result.

    A worker's error reaches the user as one line, "<what> failed: <the cause>". Ray Train's own
    INFO lines (worker group started, checkpoint created, results reported) are shown only with
    `verbose`; the ray-train-*.log files of the session keep the first two either way.
    """
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, TrainingFailedError
    from ray.train.torch import TorchTrainer

    from .checkpoint import absolute_storage

    # The controller polls its workers at this interval (Ray 2.60: 2 s) and needs two polls to see
    # the end of training: 0.5 s makes every fit return ~3 s sooner and notices a lost worker sooner,
    # for a few more tiny actor calls a second. An explicit setting wins.
    os.environ.setdefault(HEALTH_CHECK_INTERVAL_ENV, HEALTH_CHECK_INTERVAL_S)

    trainer = TorchTrainer(
        functools.partial(_run_worker, loop, verbose),
        train_loop_config=loop_config,
        scaling_config=scaling_config(cfg.ray, use_gpu),
        run_config=RunConfig(
            name=name,
            storage_path=absolute_storage(cfg.checkpoint.storage_path),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.keep),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            logging_config=LoggingConfig(log_level="INFO" if verbose else "WARNING"),
        ),
        datasets=datasets,
    )
    try:
        return trainer.fit()
    except TrainingFailedError as err:  # Ray wraps worker errors; surface the cause in one line
        raise UserError(f"{what} failed: {str(err).strip().splitlines()[-1]}") from err
