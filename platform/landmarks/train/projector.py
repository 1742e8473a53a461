"""Feature projector training, the driver side (paper Sec. 3.2; Tables 4, 5 and 8).

    python jobs/train_projector.py --config jobs/configs/train_projector_celeba_r50.yaml backbone.source=<run id>

The official feature projector (contrast-landmark ``train_feature_projector.py``, README "Stage 2";
`train.projector_loop` for the recipe): a 1x1 conv with a spatial softmax from the frozen backbone's
hypercolumn to `projector.dim` (64/128/256; up to 1280 for CUB), trained with the dense correlation
loss on MoCo-augmented images of the train split (10 epochs, Adam(beta1 0.5) lr 1e-3, wd 5e-4,
temperature 1/7 or 1/8, 24 x 24 maps) by a Ray Train TorchTrainer of `ray.num_workers` DDP workers.
After each epoch the different-identity matching error on `validation.*` pairs (official: 2000 MAFL
training images) picks the epoch that is kept. The result is logged to MLflow as the artifact
evaluation jobs load with `projector.source=<run id>` (`landmarks.sources.load_projector`):

    projector/projector.pt   Projector state dict (proj.weight (dim, C, 1, 1), proj.bias)
    projector/meta.json      {"backbone_fingerprint", "backbone", "backbone_source", "dim", "softargmax_mul",
                              "in_channels", "layers", "dataset", "image_size", "init", "kept_epoch", ...}

Rerunning with the same `mlflow.run_name` (the Ray Train run name; by default it names the
dataset, backbone weights, dim and seed) resumes from the latest checkpoint under
`checkpoint.storage_path` and continues the same MLflow run.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from .. import storage, tracking
from ..cli import JobArgs
from ..config import ProjectorConfig, absolute_paths, to_flat_dict
from ..data.budgets import budget_indices
from ..data.manifest import open_manifest
from ..data.normalization import input_stats
from ..data.preprocessing import dataset_preprocessing
from ..data.reader import load_split
from ..errors import UserError
from ..models import Projector
from ..models.artifact import LandmarkModel, model_meta, saved_model
from ..models.formats import cpu_state, load_checkpoint, save_projector
from ..models.representation import Representation
from ..models.representation import block_channels as blocks
from ..sources import load_backbone
from .driver import Outcome, Training, new_run, run_training

# What a checkpoint under this run name must share with the run: the backbone weights, dim and layers.
COMPATIBLE = ("backbone_fingerprint", "dim", "layers", "in_channels")


def run_name(cfg: ProjectorConfig, dataset: str, fingerprint: str) -> str:
    return cfg.mlflow.run_name or (f"projector-{dataset}-{cfg.model.backbone}-{fingerprint[:8]}"
                                   f"-d{cfg.projector.dim}-s{cfg.train.seed}")


def run_projector(cfg: ProjectorConfig, args: JobArgs) -> dict:
    cfg = absolute_paths(cfg)
    manifest = open_manifest(cfg.data.path, "train", need_landmarks=False)
    train_rows = max(1, round(manifest.splits["train"].rows * cfg.data.fraction))
    if train_rows < cfg.train.batch_size:
        raise UserError(f"{cfg.data.path}: the train split has {train_rows} rows (x data.fraction), fewer than "
                        f"one batch of train.batch_size={cfg.train.batch_size}")
    backbone, info = load_backbone(cfg.backbone.source, cfg.model.backbone, seed=cfg.train.seed)
    in_channels = sum(blocks(backbone.stage_channels, "hypercolumn", cfg.layers))
    mean, std, _ = input_stats(manifest)
    validation = _validation_pairs(cfg)
    meta = {"backbone_fingerprint": info["fingerprint"], "backbone": cfg.model.backbone,
            "backbone_source": cfg.backbone.source, "init": info["init"], "dim": cfg.projector.dim,
            "in_channels": in_channels, "layers": cfg.layers, "dataset": manifest.name,
            "image_size": cfg.data.image_size, "epochs": cfg.train.epochs,
            "softargmax_mul": cfg.projector.resolved_softargmax_mul(), "objective": cfg.projector.loss,
            "temperature": cfg.train.resolved_temperature(cfg.projector.dim), "map_size": cfg.train.map_size}
    plan = Training(
        job="train_projector", what="projector training", cfg=cfg,
        name=run_name(cfg, manifest.name, info["fingerprint"]), meta=meta, compatible=COMPATIBLE,
        remedy=new_run("train a new projector"),
        tags={"job": "train_projector", "dataset": manifest.name, "backbone": cfg.model.backbone,
              "init": info["init"], "projector_dim": cfg.projector.dim, "backbone_source": cfg.backbone.source,
              "seed": cfg.train.seed, "image_size": cfg.data.image_size},
        params={**to_flat_dict(cfg), "backbone.fingerprint": info["fingerprint"],
                "resolved.in_channels": in_channels, "resolved.train_rows": train_rows,
                "resolved.softargmax_mul": meta["softargmax_mul"], "resolved.temperature": meta["temperature"],
                "resolved.validation_pairs": 0 if validation is None else len(validation["image"]) // 2},
        datasets=[(manifest, cfg.data.path, "train", "training")],
        finished=lambda old: old.get("epoch", -1) + 1 >= cfg.train.epochs)

    def finish(outcome: Outcome, logger: tracking.RunLogger) -> dict:
        metrics, kept = _finish(outcome, meta, float(outcome.metrics.get("loss", float("nan"))), logger)
        _log_model(cfg, backbone, info, meta, manifest, kept, metrics, logger)
        logger.finish()
        return metrics

    from .projector_loop import train_loop_per_worker  # Ray Train's, on the workers

    return run_training(plan, train_loop_per_worker,
                        lambda: _loop_config(backbone, meta, mean, std, manifest, validation, train_rows),
                        lambda: {"train": _dataset(cfg)}, finish, args.verbose)


def _validation_pairs(cfg: ProjectorConfig) -> dict | None:
    """The stored images + keypoints the epochs are chosen on (`validation.*`), or None: keep the last."""
    if not cfg.validation.path:
        return None
    path = cfg.validation.path
    if not storage.is_s3(path):
        path = str(Path(path).expanduser().resolve())
    val = open_manifest(path, cfg.validation.split, need_landmarks=True)
    rows = val.splits[cfg.validation.split].rows
    if rows < 2:
        raise UserError(f"validation.path {path}: split {cfg.validation.split!r} has {rows} image(s); matching "
                        "needs at least one pair")
    subset = np.sort(budget_indices(rows, min(cfg.validation.images, rows) // 2 * 2, cfg.train.seed))
    data = load_split(path, cfg.validation.split, cfg.data.image_size, rows=subset, stored=True)
    return {"image": data["image"], "keypoints": data["keypoints"], "border": val.border}


def _dataset(cfg: ProjectorConfig):
    from ..data import read_dataset

    return read_dataset(cfg.data.path, "train", fraction=cfg.data.fraction, seed=cfg.train.seed, verify=False,
                        images_only=True, shuffle_seed=cfg.train.seed)  # a fresh permutation every epoch


def _loop_config(backbone, meta: dict, mean, std, manifest, validation: dict | None, train_rows: int) -> dict:
    import ray

    return {
        "backbone": meta["backbone"], "low_dim": backbone.fc.out_features,
        "backbone_state": ray.put(cpu_state(backbone.state_dict())), "in_channels": meta["in_channels"],
        "meta": meta, "mean": list(mean), "std": list(std), "train_rows": train_rows,
        # The eval border at the stored size (20 px of 136 for 96 px faces; 0 for CUB).
        "border": manifest.border,
        "validation": None if validation is None else {
            "data": ray.put({"image": validation["image"], "keypoints": validation["keypoints"]}),
            "border": validation["border"]},
    }


def _finish(outcome: Outcome, meta: dict, loss: float, logger: tracking.RunLogger) -> tuple[dict, dict]:
    """Log the kept projector (the best validation epoch, else the last; tied to its backbone by the
    fingerprint) -> (the job's metrics, the kept projector's state dict)."""
    checkpoint = outcome.checkpoint
    with checkpoint.as_directory() as d:
        state, ckpt_meta = load_checkpoint(d)
    best = state.get("best")
    kept = {"projector": state["projector"], "epoch": int(state["epoch"])} if best is None else best
    summary = {"kept_epoch": kept["epoch"]}
    if best is not None:
        summary.update(val_match_same_px=float(best["val_match_same_px"]),
                       val_match_diff_px=float(best["val_match_diff_px"]))
    with tempfile.TemporaryDirectory() as tmp:
        save_projector(kept["projector"], {**meta, **summary, "loss": loss, "mlflow_run_id": logger.run_id},
                       Path(tmp))
        logger.log_artifact(Path(tmp), "projector")
    step = int(ckpt_meta.get("step", 0))
    logger.log_metrics({"final_loss": loss, "kept_epoch": kept["epoch"]}, step=step)
    logger.set_tags({"checkpoint_uri": checkpoint.path})
    return {"loss": loss, "epochs": int(ckpt_meta.get("epoch", -1)) + 1, "dim": meta["dim"],
            "mlflow_run_id": logger.run_id, "checkpoint": checkpoint.path, **summary}, kept["projector"]


def _log_model(cfg: ProjectorConfig, backbone, info: dict, meta: dict, manifest, state: dict, metrics: dict,
               logger: tracking.RunLogger) -> None:
    """The kept projector on its backbone as the run's "descriptors" model (dense descriptors of any
    photo, `jobs/predict.py`)."""
    projector = Projector(meta["in_channels"], meta["dim"], meta["softargmax_mul"])
    projector.load_state_dict(state)
    mean, std, _ = input_stats(manifest)
    rep = Representation("projected", backbone, info, projector, cfg.layers, mean, std)
    extra = {"job": "train_projector", "mlflow_run_id": logger.run_id,
             **{k: metrics[k] for k in ("kept_epoch", "val_match_same_px") if k in metrics}}
    meta = model_meta(rep, None, "descriptors", manifest, dataset_preprocessing(manifest, cfg.data.image_size), extra)
    with saved_model(LandmarkModel(rep, None, "descriptors", meta)) as directory:
        logger.log_landmark_model(directory)
