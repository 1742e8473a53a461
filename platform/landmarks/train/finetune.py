"""End-to-end fine-tuning of backbone + landmark regressor (paper Table 1: conv4 of ResNet50, fine-tuned).

    python jobs/finetune.py --config jobs/configs/finetune_mafl.yaml backbone.source=<pretrain run id>

The backbone named by `backbone.source` and a `LandmarkRegressor` over its conv4 (or hypercolumn)
map are trained together on the annotated train rows by a Ray Train TorchTrainer of
`ray.num_workers` DDP workers (each reads its shard of a Ray Dataset via `get_dataset_shard`):
smooth-L1 on normalized coordinates over visible landmarks, Adam (beta1 0.5), head at `train.lr`
and backbone at `train.backbone_lr`, cosine schedule. The test split is scored after the last
epoch: `iod` (eye indices from dataset.json), or `pck` for CUB. The linear rows of Table 1 are
`jobs/regress.py representation=conv4`.

Rerunning with the same `mlflow.run_name` (the Ray Train run name) resumes from the latest
checkpoint under `checkpoint.storage_path` and continues the same MLflow run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import tracking
from ..cli import JobArgs
from ..config import FinetuneConfig, absolute_paths, to_flat_dict
from ..data.budgets import annotated_rows
from ..data.manifest import Manifest, open_manifest
from ..data.normalization import input_stats
from ..data.preprocessing import dataset_preprocessing
from ..data.reader import eval_geometry, split_image_ids
from ..errors import UserError
from ..metrics import headline_metric
from ..models.artifact import LandmarkModel, model_meta, saved_model
from ..models.formats import cpu_state, load_checkpoint
from ..models.representation import Representation
from ..sources import load_backbone
from .driver import Outcome, Training, new_run, run_training

COMPATIBLE = ("backbone_fingerprint", "representation", "layers", "num_landmarks", "train_rows")


@dataclass
class FinetunePlan:
    """Everything checked and resolved before any worker starts."""

    manifest: Manifest
    rows: np.ndarray
    batch_size: int
    lr: float
    weight_decay: float
    backbone: Any
    info: dict
    mean: list[float]
    std: list[float]
    meta: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)


def check_finetune(cfg: FinetuneConfig) -> FinetunePlan:
    """Validate dataset, budget, batch and backbone; resolve 'auto' settings. Raises UserError."""
    manifest = open_manifest(cfg.data.path, "train", "test", need_landmarks=True)
    if cfg.representation == "projected":
        raise UserError("finetune trains the backbone end to end on representation=conv4 (Table 1) or hypercolumn; "
                        "the projected descriptor is evaluated by jobs/regress.py")
    rows = annotated_rows(cfg, manifest)
    world = cfg.ray.num_workers
    batch = min(cfg.train.batch_size, len(rows) - len(rows) % world)
    if batch < 2 * world:
        raise UserError(f"{len(rows)} annotated images cannot make batches of at least 2 per worker for "
                        f"ray.num_workers={world} (batch norm in training mode); lower ray.num_workers or "
                        "raise annotations")
    backbone, info = load_backbone(cfg.backbone.source, cfg.model.backbone, seed=cfg.train.seed)
    mean, std, _ = input_stats(manifest)
    settings = cfg.resolve(len(rows))
    meta = {"backbone_fingerprint": info["fingerprint"], "backbone": cfg.model.backbone,
            "backbone_source": cfg.backbone.source, "representation": cfg.representation, "layers": cfg.layers,
            "num_landmarks": manifest.K, "train_rows": len(rows), "dataset": manifest.name,
            "image_size": cfg.data.image_size}
    tags = {"job": "finetune", "dataset": manifest.name, "backbone": cfg.model.backbone,
            "representation": cfg.representation, "init": info["init"], "finetuned": 1,
            "budget": cfg.annotations, "seed": cfg.train.seed, "repeat": cfg.repeat,
            "backbone_source": cfg.backbone.source, "image_size": cfg.data.image_size}
    return FinetunePlan(manifest, rows, int(batch), settings.lr, settings.weight_decay, backbone, info, list(mean), list(std),
                        meta, tags)


def run_name(cfg: FinetuneConfig, plan: FinetunePlan) -> str:
    return cfg.mlflow.run_name or (f"finetune-{plan.manifest.name}-{cfg.model.backbone}-{plan.info['fingerprint'][:8]}"
                                   f"-{cfg.representation}-n{cfg.annotations}-s{cfg.train.seed}-r{cfg.repeat}")


def run_finetune(cfg: FinetuneConfig, args: JobArgs) -> dict:
    cfg = absolute_paths(cfg)
    plan = check_finetune(cfg)
    metric = headline_metric(plan.manifest.eye_indices)
    training = Training(
        job="finetune", what="fine-tuning", cfg=cfg, name=run_name(cfg, plan), meta=plan.meta, compatible=COMPATIBLE,
        remedy=new_run("start a new fine-tuning"),
        tags=plan.tags,
        params={**to_flat_dict(cfg), "backbone.fingerprint": plan.info["fingerprint"],
                "resolved.lr": plan.lr, "resolved.weight_decay": plan.weight_decay,
                "resolved.batch_size": plan.batch_size, "resolved.train_rows": len(plan.rows)},
        datasets=[(plan.manifest, cfg.data.path, "train", "training"), (plan.manifest, cfg.data.path, "test", "evaluation")],
        finished=lambda old: metric in old)  # the final checkpoint holds the test score
    # The workers read every setting from their config: 'auto' resolved (the logged params keep 'auto').
    resolved = cfg.model_copy(deep=True)
    resolved.train.lr, resolved.train.weight_decay = plan.lr, plan.weight_decay
    training.cfg = resolved

    def finish(outcome: Outcome, logger: tracking.RunLogger) -> dict:
        final = outcome.metrics
        if metric not in final:
            raise UserError("fine-tuning ended without a final checkpoint and test score")
        _log_model(cfg, plan, outcome.checkpoint_uri, metric, float(final[metric]), logger)
        metrics = {metric: float(final[metric]), "train_loss": float(final["train_loss"]),
                   "epochs": int(final["epoch"]) + 1, "mlflow_run_id": logger.run_id,
                   "checkpoint": outcome.checkpoint_uri}
        logger.set_tags({"checkpoint_uri": outcome.checkpoint_uri})
        logger.finish()
        return metrics

    from .finetune_loop import train_loop_per_worker  # Ray Train's, on the workers

    return run_training(training, train_loop_per_worker, lambda: _loop_config(plan),
                        lambda: {"train": _dataset(cfg, plan)}, finish, args.verbose)


def _log_model(cfg: FinetuneConfig, plan: FinetunePlan, checkpoint_path: str, metric: str, value: float,
               logger: tracking.RunLogger) -> None:
    """The fine-tuned backbone and regressor of the final checkpoint as the run's "landmarks" model."""
    from ray.train import Checkpoint

    from .finetune_loop import build_model

    with Checkpoint(checkpoint_path).as_directory() as directory:
        state, _ = load_checkpoint(directory)
    net = build_model(cfg, plan.manifest.K, plan.backbone.fc.out_features)
    net.load_state_dict(state["model"])
    rep = Representation(cfg.representation, net.backbone, plan.info, None, cfg.layers, plan.mean, plan.std)
    meta = model_meta(rep, net.regressor, "landmarks", plan.manifest,
                      dataset_preprocessing(plan.manifest, cfg.data.image_size),
                      {"job": "finetune", "mlflow_run_id": logger.run_id, metric: value})
    with saved_model(LandmarkModel(rep, net.regressor.eval(), "landmarks", meta)) as directory:
        logger.log_landmark_model(directory)


def train_view(batch: dict[str, np.ndarray], keep_ids: frozenset | None, border: int,
               image_size: int) -> dict[str, np.ndarray]:
    """Ray Data batch -> the annotated rows after the eval border crop (and resize): image, keypoints, visible."""
    if keep_ids is not None:
        keep = np.array([str(i) in keep_ids for i in batch["image_id"]], dtype=bool)
        batch = {k: v[keep] for k, v in batch.items()}
    if len(batch["image"]) == 0:
        return {"image": np.zeros((0, image_size, image_size, 3), np.uint8),
                "keypoints": np.zeros((0, *batch["keypoints"].shape[1:]), np.float32),
                "visible": np.zeros((0, *batch["visible"].shape[1:]), bool)}
    out = eval_geometry({k: batch[k] for k in ("image", "keypoints", "visible")}, border, image_size)
    return {"image": out["image"], "keypoints": out["keypoints"].astype(np.float32), "visible": out["visible"]}


def _dataset(cfg: FinetuneConfig, plan: FinetunePlan):
    """The annotated train rows (`train_view`), a fresh permutation every epoch."""
    from ..data import read_dataset

    n = plan.manifest.splits["train"].rows
    keep = None if len(plan.rows) == n else frozenset(np.array(split_image_ids(cfg.data.path, "train"))[plan.rows])
    dataset = read_dataset(cfg.data.path, "train", seed=cfg.train.seed, verify=False,
                           shuffle_seed=cfg.train.seed + cfg.repeat)
    return dataset.map_batches(train_view, batch_format="numpy",
                               fn_kwargs={"keep_ids": keep, "border": plan.manifest.border,
                                          "image_size": cfg.data.image_size})


def _loop_config(plan: FinetunePlan) -> dict:
    import ray

    return {
        "backbone_state": ray.put(cpu_state(plan.backbone.state_dict())), "low_dim": plan.backbone.fc.out_features,
        "num_landmarks": plan.manifest.K, "eye_indices": plan.manifest.eye_indices,
        "mean": plan.mean, "std": plan.std, "batch_size": plan.batch_size, "train_rows": len(plan.rows),
        "meta": plan.meta,
    }
