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

import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from .. import storage, tracking
from ..cli import JobArgs, print_summary
from ..cluster import fit_torch_trainer, join_cluster
from ..config import ProjectorConfig, to_flat_dict
from ..data.budgets import budget_indices
from ..data.manifest import open_manifest
from ..data.normalization import input_stats
from ..data.reader import load_split
from ..errors import UserError
from ..models import Projector
from ..models.representation import Representation
from ..models.representation import block_channels as blocks
from ..predict.model import LandmarkModel, model_meta
from ..sources import load_backbone
from .checkpoint import latest_checkpoint, load_checkpoint_dir, resume_hint

PROJECTOR_FILE = "projector.pt"
META_FILE = "meta.json"


def run_name(cfg: ProjectorConfig, dataset: str, fingerprint: str) -> str:
    return cfg.mlflow.run_name or (f"projector-{dataset}-{cfg.model.backbone}-{fingerprint[:8]}"
                                   f"-d{cfg.projector.dim}-s{cfg.train.seed}")


def _absolute_data_path(cfg: ProjectorConfig) -> ProjectorConfig:
    """A copy with a local data.path made absolute, so that Ray workers (another cwd) agree."""
    cfg = cfg.model_copy(deep=True)
    if cfg.data.path and not storage.is_s3(cfg.data.path):
        cfg.data.path = str(Path(cfg.data.path).expanduser().resolve())
    return cfg


def _check_previous(previous: tuple[str, dict] | None, meta: dict) -> None:
    """A checkpoint under this run name must come from the same backbone weights, dim and layers."""
    if not previous:
        return
    where, old = previous
    for key in ("backbone_fingerprint", "dim", "layers", "in_channels"):
        if key in old and old[key] != meta[key]:
            raise UserError(f"checkpoint {where} was trained with {key}={old[key]!r}, this run has {meta[key]!r}; "
                            "set another mlflow.run_name (or checkpoint.storage_path) to train a new projector")


def run_projector(cfg: ProjectorConfig, args: JobArgs) -> dict:
    # 1. Everything that can be checked before work starts.
    cfg = _absolute_data_path(cfg)
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
    name = run_name(cfg, manifest.name, info["fingerprint"])
    previous = latest_checkpoint(cfg.checkpoint.storage_path, name)
    _check_previous(previous, meta)

    done = previous is not None and previous[1].get("epoch", -1) + 1 >= cfg.train.epochs
    # A finished run is only logged again: no cluster needed.
    use_gpu = False if done else join_cluster(cfg.ray, "projector training", args.verbose)

    # 2. The MLflow run: new, or the one the checkpoint belongs to.
    tags = {"job": "train_projector", "dataset": manifest.name, "backbone": cfg.model.backbone,
            "init": info["init"], "projector_dim": cfg.projector.dim, "backbone_source": cfg.backbone.source,
            "seed": cfg.train.seed, "image_size": cfg.data.image_size}
    logger = tracking.start_run(cfg.mlflow.experiment, name, tags=tags,
                                run_id=previous[1].get("mlflow_run_id") if previous else None)
    if not previous:
        logger.log_dataset(manifest, cfg.data.path, "train", "training")
    logger.log_params({**to_flat_dict(cfg), "backbone.fingerprint": info["fingerprint"],
                       "resolved.in_channels": in_channels, "resolved.train_rows": train_rows,
                       "resolved.softargmax_mul": meta["softargmax_mul"], "resolved.temperature": meta["temperature"],
                       "resolved.validation_pairs": 0 if validation is None else len(validation["image"]) // 2})
    if previous:
        state = "already finished, nothing to train" if done else f"resuming after epoch {previous[1]['epoch'] + 1}"
        print(f"[train_projector] {name}: {state} ({previous[0]})", flush=True)
    with logger.ending("projector training", rerun=resume_hint(name)):
        if done:
            from ray.train import Checkpoint

            checkpoint, loss = Checkpoint(previous[0]), float(previous[1].get("loss", float("nan")))
        else:
            result = _fit(cfg, name, backbone, meta, mean, std, manifest, validation, use_gpu, logger.run_id,
                          train_rows, args.verbose)
            if result.checkpoint is None:
                raise UserError("projector training ended without a checkpoint")
            checkpoint, loss = result.checkpoint, float(result.metrics["loss"])
        metrics, kept = _finish(checkpoint, meta, loss, logger)
        _log_model(cfg, backbone, info, meta, manifest, kept, metrics, logger)
        logger.finish()
    print_summary("train_projector", metrics)
    return metrics


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


def _fit(cfg: ProjectorConfig, name: str, backbone, meta: dict, mean, std, manifest, validation: dict | None,
         use_gpu: bool, run_id: str, train_rows: int, verbose: bool):
    import ray

    from ..data import read_dataset
    from .projector_loop import train_loop_per_worker

    dataset = read_dataset(cfg.data.path, "train", fraction=cfg.data.fraction, seed=cfg.train.seed, verify=False,
                           images_only=True, shuffle_seed=cfg.train.seed)  # a fresh permutation every epoch
    state = {k: v.detach().cpu() for k, v in backbone.state_dict().items()}
    return fit_torch_trainer(
        train_loop_per_worker,
        {
            "cfg": cfg.model_dump(mode="json"), "mlflow_run_id": run_id, "tracking_uri": tracking.tracking_uri(),
            "backbone": cfg.model.backbone, "low_dim": backbone.fc.out_features,
            "backbone_state": ray.put(state), "in_channels": meta["in_channels"], "meta": meta,
            "mean": list(mean), "std": list(std), "train_rows": train_rows,
            # The eval border at the stored size (20 px of 136 for 96 px faces; 0 for CUB).
            "border": manifest.border,
            "validation": None if validation is None else {
                "data": ray.put({"image": validation["image"], "keypoints": validation["keypoints"]}),
                "border": validation["border"]},
        },
        cfg, name, use_gpu, {"train": dataset}, "projector training", verbose=verbose,
    )


def save_projector(state: dict[str, torch.Tensor], meta: dict, directory: Path) -> Path:
    """projector.pt (state dict, weights-only loadable) + meta.json: what `load_projector` reads."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in state.items()}, directory / PROJECTOR_FILE)
    (directory / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return directory / PROJECTOR_FILE


def _finish(checkpoint, meta: dict, loss: float, logger: tracking.RunLogger) -> tuple[dict, dict]:
    """Log the kept projector (the best validation epoch, else the last; tied to its backbone by the
    fingerprint) -> (the job's metrics, the kept projector's state dict)."""
    with checkpoint.as_directory() as d:
        state, ckpt_meta = load_checkpoint_dir(d)
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
    logger.log_landmark_model(LandmarkModel(rep, None, "descriptors",
                                            model_meta(rep, None, "descriptors", manifest, cfg.data.image_size, extra)))
