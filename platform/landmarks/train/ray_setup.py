"""Ray Train / Ray task resources from a config's `ray.*` section, checked before any work starts."""

from __future__ import annotations

from typing import Any

from ..errors import UserError


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
