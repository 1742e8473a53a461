"""MoCo pretraining, the driver side: validate, then `driver.run_training` (TorchTrainer), log the result.

    python jobs/pretrain.py --config jobs/configs/pretrain_synthetic_cpu.yaml data.path=...

Rerunning with the same `mlflow.run_name` (the Ray Train run name) resumes from the latest
checkpoint under `checkpoint.storage_path` and continues the same MLflow run.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from .. import tracking
from ..cli import JobArgs
from ..config import PretrainConfig, to_flat_dict
from ..data.manifest import open_manifest
from ..errors import UserError
from ..models.formats import load_checkpoint, save_backbone
from .driver import Outcome, Training, run_training


def run_name(cfg: PretrainConfig, dataset: str) -> str:
    return cfg.mlflow.run_name or f"pretrain-{dataset}-{cfg.model.backbone}-s{cfg.train.seed}"


def run_pretrain(cfg: PretrainConfig, args: JobArgs) -> dict:
    manifest = open_manifest(cfg.data.path, "train", need_landmarks=False)
    if cfg.moco.queue_size < cfg.train.batch_size:
        raise UserError(f"moco.queue_size={cfg.moco.queue_size} is smaller than train.batch_size="
                        f"{cfg.train.batch_size}: MoCo enqueues each global batch whole")
    train_rows = int(manifest.splits["train"].rows * cfg.data.fraction)
    if train_rows < cfg.train.batch_size:
        raise UserError(f"{cfg.data.path}: the train split has {train_rows} rows (x data.fraction), fewer than "
                        f"one batch of train.batch_size={cfg.train.batch_size}")
    probe_plan = plan_probe(cfg, manifest)
    from .pretrain_loop import train_loop_per_worker  # Ray Train's, on the workers

    plan = Training(
        job="pretrain", what="pretraining", cfg=cfg, name=run_name(cfg, manifest.name),
        meta={"backbone": cfg.model.backbone}, compatible=("backbone",),
        remedy=lambda where, key, old, new: (f"checkpoint {where} is from backbone {old!r} but model.backbone="
                                             f"{new!r}; set model.backbone={old} or use another mlflow.run_name / "
                                             "checkpoint"),
        tags={"job": "pretrain", "dataset": manifest.name, "backbone": cfg.model.backbone, "seed": cfg.train.seed,
              "data_fraction": cfg.data.fraction, "image_size": cfg.data.image_size},
        params=to_flat_dict(cfg), datasets=[(manifest, cfg.data.path, "train", "training")])
    return run_training(plan, train_loop_per_worker, lambda: _loop_config(cfg, manifest, train_rows, probe_plan),
                        lambda: {"train": _dataset(cfg)},
                        lambda outcome, logger: _finish(cfg, outcome, logger, manifest.name), args.verbose)


def plan_probe(cfg: PretrainConfig, manifest) -> tuple[str, str, str] | None:
    """(dataset path, reference split, query split) of the per-epoch landmark probe, or None when it is off;
    checked before any work (`probe.enabled: true` on a dataset without landmarks is refused)."""
    probe = cfg.probe
    path = probe.path or cfg.data.path
    if probe.enabled is False:
        return None
    target = manifest if not probe.path else open_manifest(path, need_landmarks=False)
    if target.K == 0:
        if probe.enabled is True:
            raise UserError(f"probe.enabled=true but {path} ({target.name}) has no landmarks; set probe.path to "
                            "an annotated dataset (e.g. CUB for birds) or probe.enabled=false")
        return None
    query = probe.query_split
    if query == "auto":
        query = "val" if "val" in target.splits else "test"
    for split in (probe.ref_split, query):
        if split not in target.splits:
            raise UserError(f"probe: {path} has no split {split!r}; its splits: {', '.join(target.splits)}")
    return path, probe.ref_split, query


def _dataset(cfg: PretrainConfig):
    from ..data import read_dataset

    return read_dataset(cfg.data.path, "train", fraction=cfg.data.fraction, seed=cfg.train.seed, verify=False,
                        images_only=True, shuffle_seed=cfg.train.seed)  # a fresh permutation every epoch


def _loop_config(cfg: PretrainConfig, manifest, train_rows: int, probe_plan: tuple[str, str, str] | None) -> dict:
    import ray

    from ..data.normalization import input_stats
    from ..probe import load_probe_data

    mean, std, _ = input_stats(manifest)
    return {
        "mean": list(mean), "std": list(std), "train_rows": train_rows, "dataset": manifest.name,
        "probe": None if probe_plan is None else ray.put(load_probe_data(
            probe_plan[0], probe_plan[1], probe_plan[2], cfg.probe.images, cfg.data.image_size, cfg.train.seed)),
        # Views keep the manifest's eval border in proportion (20 px of 136 for 96 px faces).
        "border": round(manifest.border * cfg.data.image_size / manifest.input_size),
    }


def _finish(cfg: PretrainConfig, result: Outcome, logger: tracking.RunLogger, dataset: str) -> dict:
    """Log the final backbone (weights + an mlflow.pytorch model) and the last checkpoint."""
    from .moco_step import build_moco

    with result.checkpoint.as_directory() as d:
        state, meta = load_checkpoint(d)
        logger.log_artifact(d, "checkpoint")
    moco = build_moco(cfg)
    moco.load_state_dict(state["model"])
    backbone = moco.encoder_q.eval()
    with tempfile.TemporaryDirectory() as tmp:
        save_backbone(backbone, {**meta, "dataset": dataset}, Path(tmp))
        logger.log_artifact(Path(tmp), "backbone")
    logger.log_torch_model(backbone, name="backbone_model")
    logger.set_tags({"checkpoint_uri": result.checkpoint_uri})
    loss = float(result.metrics.get("loss", meta.get("loss", float("nan"))))
    similarity = float(moco.key_similarity())  # near 1: collapsed embeddings (pretrain_loop warns)
    logger.log_metrics({"final_loss": loss, "final_key_similarity": similarity}, step=int(meta.get("step", 0)))
    logger.finish()
    metrics = {"loss": loss, "key_similarity": similarity, "epochs": int(meta["epoch"]) + 1,
               "mlflow_run_id": logger.run_id, "checkpoint": result.checkpoint_uri}
    return metrics

