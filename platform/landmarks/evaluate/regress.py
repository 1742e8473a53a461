"""Landmark regression on a frozen representation (SPEC "Regressor"; Tables 1, 5, 7, 8).

    python jobs/regress.py --config jobs/configs/regress_mafl.yaml backbone.source=<pretrain run id>

A `LandmarkRegressor` (50 soft-argmax points per landmark, then a linear map) is trained on the
frozen hypercolumn / conv4 / projected map of the train split (or an `annotations`-sized
seeded subset of it) and scored on the test split: inter-ocular error (faces) or the official
PCK (CUB, whose epoch is chosen on the val split). With `track_test` (limited face budgets) the test
split is also scored after every epoch, as the official eval_face.py does to keep its best-on-test
checkpoint: `iod_best_on_test` / `best_test_epoch` are reported beside the last epoch's `iod`, which
stays the result. Without augmentation the backbone's stage
outputs come from the feature cache (`landmarks.features`); with TPS augmentation (limited face
budgets, `tps_augment=auto`) each batch is warped at the stored size and passed through the
backbone afresh.

The recipe is the official one (contrast-landmark eval_face.py / eval_animal.py and the README's
command lines): loss `losses.regression_loss` (smooth-L1 of 10x the normalized coordinates),
Adam (beta1 0.5), the per-epoch cosine of `schedules.epoch_cosine_lr` over `schedule_epochs`
with eta_min = lr x 8e-4, stopped after `epochs`; TPS augmentation as `augment.tps.tps_augment`.
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..augment.tps import AUGMENT, TPSStrength, tps_augment
from ..augment.views import border_crop, normalize, to_float_images
from ..cli import JobArgs
from ..config import RegressConfig, Resolved, absolute_paths
from ..coords import normalized_to_pixels, pixels_to_normalized, resize_with_keypoints
from ..data.budgets import annotated_rows
from ..data.manifest import Manifest, open_manifest
from ..data.preprocessing import dataset_preprocessing
from ..data.reader import load_split
from ..features import FeatureSet, features_for
from ..losses import regression_loss
from ..metrics import headline_metric, landmark_score, landmark_scores
from ..models import LandmarkRegressor
from ..models.artifact import LandmarkModel, model_meta, saved_model
from ..models.representation import Representation, dense_size
from ..precision import autocast, pick_device
from ..progress import Progress
from ..registry import METRIC_GOALS
from ..schedules import OFFICIAL_ETA_MIN_FACTOR, epoch_cosine_lr, set_lr
from ..sources import load_representation
from ..tracking import RunLogger
from .runner import head_params, run_evaluation


@dataclass
class Plan:
    """Everything checked and resolved before training starts."""

    manifest: Manifest
    rows: np.ndarray  # training rows (indices into the train split)
    metric: str  # "iod" or "pck"
    settings: Resolved  # lr, weight decay, TPS, samples an epoch, epochs, cosine T
    rep: Representation
    is_cub: bool
    tags: dict = field(default_factory=dict)

    @property
    def splits(self) -> tuple[str, ...]:
        """The splits it reads (its MLflow inputs): CUB's epoch is chosen on val."""
        return ("train", "val", "test") if self.is_cub else ("train", "test")


def check_regression(cfg: RegressConfig) -> Plan:
    """Validate the dataset, budget, backbone and projector; resolve the paper's 'auto' settings."""
    manifest = open_manifest(cfg.data.path, "train", "test", need_landmarks=True)
    is_cub = manifest.name == "cub"
    if is_cub:
        open_manifest(cfg.data.path, "val")
    rows = annotated_rows(cfg, manifest)
    settings = cfg.resolve(manifest.name, manifest.splits["train"].rows, len(rows))
    rep = load_representation(cfg, manifest, seed=cfg.train.seed)
    tags = {"dataset": manifest.name, "backbone": cfg.model.backbone, "representation": cfg.representation,
            "budget": cfg.annotations, "seed": cfg.train.seed, "repeat": cfg.repeat, "init": rep.info["init"],
            "backbone_source": cfg.backbone.source, "projector_dim": rep.info.get("projector_dim"),
            "image_size": cfg.data.image_size}
    return Plan(manifest, rows, headline_metric(manifest.eye_indices), settings, rep, is_cub, tags)


def run_name(cfg: RegressConfig, plan: Plan) -> str:
    return cfg.mlflow.run_name or (f"regress-{plan.manifest.name}-{cfg.model.backbone}-{cfg.representation}"
                                   f"-n{cfg.annotations}-s{cfg.train.seed}-r{cfg.repeat}")


def run_regress(cfg: RegressConfig, args: JobArgs) -> dict:
    """The job: check everything, then train and score as one Ray task (in-process inside a Tune trial)."""
    cfg = absolute_paths(cfg)
    plan = check_regression(cfg)
    return run_evaluation("regress", cfg, args, plan, run_name(cfg, plan), evaluate_regression, head_params(plan))


# ----------------------------------------------------------------------------- data sources


class Rows:
    """Training or evaluation rows and how to get their stage outputs: from the cache, or from the
    images through the backbone; with `augment`, images and keypoints are kept at the stored size
    and every batch is TPS-warped there, then border-cropped (the official order)."""

    def __init__(self, rep: Representation, image_size: int, features: FeatureSet | None = None,
                 split: dict[str, np.ndarray] | None = None, rows: np.ndarray | None = None, augment: bool = False,
                 border: int = 0):
        self.rep, self.image_size, self.features, self.augment, self.border = rep, image_size, features, augment, border
        if features is not None:
            self.index = np.arange(len(features)) if rows is None else np.asarray(rows)
            self.keypoints, self.visible = features.keypoints[self.index], features.visible[self.index]
            self.image_ids = features.image_ids[self.index]
        else:
            self.images = split["image"]
            self.keypoints, self.visible, self.image_ids = split["keypoints"], split["visible"], split["image_id"]

    def __len__(self) -> int:
        return len(self.keypoints)

    def batch(self, pos: np.ndarray, generator: torch.Generator | None = None):
        """(stages [layer1..layer4], keypoints (B, K, 2) input px, visible (B, K)) on the device."""
        device = self.rep.device
        kps = torch.from_numpy(self.keypoints[pos]).to(device)
        vis = torch.from_numpy(self.visible[pos]).to(device)
        if self.features is not None:
            return self.features.stage_batch(self.index[pos], device), kps, vis
        images = torch.from_numpy(self.images[pos]).to(device)
        if not self.augment:
            return self.rep.stages(images), kps, vis
        x, kps = warped_inputs(images, kps, self.border, self.image_size, generator)
        return self.rep.stages(normalize(x, self.rep.mean, self.rep.std)), kps, vis


def warped_inputs(images_bhw3: torch.Tensor, keypoints: torch.Tensor, border: int, image_size: int,
                  generator: torch.Generator | None, strength: TPSStrength = AUGMENT,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Limited budgets' TPS augmentation, the official order: stored uint8 images (B, H, W, 3) and their
    keypoints (B, K, 2) warped at the stored size, then border-cropped (and resized as `eval_geometry`
    resizes, for a dataset ingested for another input size) -> [0, 1] inputs (B, 3, S, S) and keypoints
    in input pixels."""
    x, kps = tps_augment(images_bhw3.permute(0, 3, 1, 2), keypoints, strength, generator)  # at the stored size
    return resize_with_keypoints(to_float_images(border_crop(x, border)).contiguous(), image_size, kps - border)


def _source(cfg: RegressConfig, plan: Plan, split: str, rows: np.ndarray | None, augment: bool) -> Rows:
    size = cfg.data.image_size
    if cfg.features.enabled and not augment:
        return Rows(plan.rep, size, features=features_for(plan.rep, cfg.data.path, split, size, cfg.features.dir),
                    rows=rows)
    data = load_split(cfg.data.path, split, size, rows=rows, stored=augment)
    return Rows(plan.rep, size, split=data, augment=augment, border=plan.manifest.border)


# ----------------------------------------------------------------------------- model


@torch.no_grad()
def predict_rows(regressor, source: Rows, size, batch_size: int = 64, precision: str = "fp32") -> np.ndarray:
    """Pixel predictions (N, K, 2) for every row of `source` (no augmentation)."""
    regressor.eval()
    out = []
    for start in range(0, len(source), batch_size):
        with autocast(source.rep.device, precision):
            stages, _, _ = source.batch(np.arange(start, min(start + batch_size, len(source))))
            pred = source.rep.landmarks(regressor, stages, size).float()
        out.append(normalized_to_pixels(pred, source.image_size).cpu())
    regressor.train()
    return torch.cat(out).numpy()


def score(metric: str, pred: np.ndarray, source: Rows, manifest: Manifest) -> float:
    """`metrics.landmark_score` of predictions (N, K, 2) in input pixels against `source`'s keypoints."""
    return landmark_score(metric, pred, source.keypoints, source.visible, source.image_size, manifest.eye_indices)


# ----------------------------------------------------------------------------- training


def epoch_order(n: int, samples: int, rng: np.random.Generator) -> np.ndarray:
    """`samples` positions: a shuffle of the n rows tiled ceil(samples / n) times (the official
    DataLoader(shuffle=True) over the repeated image list), cut to `samples`."""
    return rng.permutation(np.tile(np.arange(n), math.ceil(samples / n)))[:samples]


def train_epoch(regressor, optimizer, source: Rows, order: np.ndarray, batch_size: int, size,
                generator: torch.Generator, precision: str = "fp32") -> float:
    """One pass over `order` (the last batch may be smaller, as DataLoader's drop_last=False)."""
    total, count = 0.0, 0
    for start in range(0, len(order), batch_size):
        with autocast(source.rep.device, precision):
            stages, kps, vis = source.batch(order[start:start + batch_size], generator)
            pred = source.rep.landmarks(regressor, stages, size).float()
        target = pixels_to_normalized(kps, source.image_size)
        loss = regression_loss(pred, target, vis)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total, count = total + loss.item() * len(kps), count + len(kps)
    return total / max(count, 1)


def evaluate_regression(cfg: RegressConfig, run_logger: RunLogger, plan: Plan | None = None) -> dict:
    """Train the regressor and score it on the test split; logs to `run_logger`. Returns the metrics."""
    cfg = absolute_paths(cfg)
    plan = plan or check_regression(cfg)
    settings = plan.settings
    device = pick_device()
    rep = plan.rep.to(device)
    seed = cfg.train.seed + cfg.repeat
    torch.manual_seed(seed)
    size = dense_size(cfg.representation, cfg.data.image_size)
    train = _source(cfg, plan, "train", plan.rows, augment=settings.tps_augment)
    test = _source(cfg, plan, "test", None, augment=False)
    val = _source(cfg, plan, "val", None, augment=False) if plan.is_cub else None
    run_logger.set_tags({f"features.{name}": ("hit" if s.features.hit else "miss") if s.features else "off"
                         for name, s in (("train", train), ("test", test), ("val", val)) if s is not None})

    regressor = LandmarkRegressor(rep.channels, plan.manifest.K, cfg.regressor.points_per_landmark,
                                  init_std=cfg.regressor.init_std).to(device)
    optimizer = torch.optim.Adam(regressor.parameters(), lr=settings.lr, betas=(cfg.train.adam_beta1, 0.999),
                                 weight_decay=settings.weight_decay)
    rng, generator = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    eta_min = settings.lr * OFFICIAL_ETA_MIN_FACTOR
    bar = Progress(settings.epochs, "regress", every=5.0)
    best = (-math.inf, -1, None)  # (val pck, epoch, state) for CUB
    best_test = (math.inf, -1)  # (test error, epoch): the official best-on-test checkpoint (track_test)
    for epoch in range(settings.epochs):
        t0 = time.perf_counter()
        lr = epoch_cosine_lr(settings.lr, epoch + 1, settings.schedule_epochs, eta_min)
        set_lr(optimizer, lr)
        order = epoch_order(len(train), settings.samples_per_epoch, rng)
        loss = train_epoch(regressor, optimizer, train, order, cfg.train.batch_size, size, generator,
                           cfg.train.precision)
        logged = {"train_loss": loss, "lr": lr, "images_per_sec": len(order) / (time.perf_counter() - t0)}
        if val is not None:
            logged["val_pck"] = score("pck", predict_rows(regressor, val, size, precision=cfg.train.precision), val,
                                      plan.manifest)
            if logged["val_pck"] > best[0]:
                best = (logged["val_pck"], epoch, copy.deepcopy(regressor.state_dict()))
        if settings.track_test:
            logged[f"test_{plan.metric}"] = score(plan.metric, predict_rows(regressor, test, size,
                                                                           precision=cfg.train.precision),
                                                  test, plan.manifest)
            error = logged[f"test_{plan.metric}"] * (1 if METRIC_GOALS[plan.metric] == "min" else -1)
            if error < best_test[0]:
                best_test = (error, epoch)
        run_logger.log_metrics(logged, step=epoch)
        bar.update(1, loss=loss, **({"val_pck": logged["val_pck"]} if val is not None else {}))

    metrics: dict[str, Any] = {"train_loss": loss, "epochs": settings.epochs}
    if best[2] is not None:
        regressor.load_state_dict(best[2])
        metrics["best_epoch"], metrics["val_pck"] = best[1], best[0]
    pred = predict_rows(regressor, test, size, precision=cfg.train.precision)
    metrics.update(landmark_scores(pred, test.keypoints, test.visible, test.image_size, plan.manifest.eye_indices))
    if settings.track_test:  # beside the last epoch's, never instead of it (the test split chose it)
        metrics[f"{plan.metric}_best_on_test"] = abs(best_test[0])
        metrics["best_test_epoch"] = best_test[1]
    run_logger.log_metrics({k: v for k, v in metrics.items() if k not in ("epochs", "train_loss")},
                           step=settings.epochs)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "predictions.npz"
        np.savez_compressed(path, image_id=np.array(test.image_ids, dtype=str), pred=pred.astype(np.float32),
                            gt=test.keypoints, visible=test.visible, image_size=cfg.data.image_size)
        run_logger.log_artifact(path, "predictions")
    meta = model_meta(rep, regressor, "landmarks", plan.manifest, dataset_preprocessing(plan.manifest, cfg.data.image_size),
                      {"job": "regress", "mlflow_run_id": run_logger.run_id, plan.metric: metrics[plan.metric]})
    with saved_model(LandmarkModel(rep, regressor.eval(), "landmarks", meta)) as directory:
        run_logger.log_landmark_model(directory)
    return metrics
