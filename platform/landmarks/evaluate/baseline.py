"""Baselines at an annotation budget: what a learned representation has to beat (jobs/baseline.py).

    python jobs/baseline.py --config jobs/configs/baseline_synthetic_cpu.yaml method=supervised annotations=100

Both use the rows `regress` trains on at the same budget, `train.seed` and `repeat`
(`data.budgets.annotated_rows`), and score the test split with the dataset's metric (inter-ocular
error % for faces, the official PCK % for CUB):

- `mean_shape`: every test image gets the mean position of each landmark over the annotated rows (no
  image is looked at). A representation whose regressor does not beat it carries no landmark information.
- `supervised`: `model.backbone` from random initialisation with a linear read-out of its last stage's map
  (`models.MapRegressor`), trained end to end on the annotated rows alone: Adam on the regression loss
  (smooth-L1 of 10x the normalized coordinates), a cosine over the steps, TPS augmentation for limited
  face budgets as the regressor's (`evaluate.regress.warped_inputs`). What pretraining has to save
  annotations against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..augment.views import input_tensor, normalize
from ..cli import JobArgs
from ..config import BaselineConfig, Resolved, absolute_paths
from ..coords import normalized_to_pixels, pixels_to_normalized
from ..data.budgets import annotated_rows
from ..data.manifest import Manifest, open_manifest
from ..data.normalization import input_stats
from ..data.reader import load_split
from ..losses import regression_loss
from ..metrics import headline_metric, landmark_score
from ..models import MapRegressor, build_backbone
from ..precision import autocast, pick_device
from ..probe import mean_shape
from ..progress import Progress
from ..schedules import cosine_lr, set_lr
from ..tracking import RunLogger
from .regress import epoch_order, warped_inputs
from .runner import run_evaluation


@dataclass
class BaselinePlan:
    manifest: Manifest
    rows: np.ndarray  # the annotated rows of the train split
    metric: str
    settings: Resolved
    tags: dict = field(default_factory=dict)
    splits: tuple[str, ...] = ("train", "test")


def check_baseline(cfg: BaselineConfig) -> BaselinePlan:
    manifest = open_manifest(cfg.data.path, "train", "test", need_landmarks=True)
    rows = annotated_rows(cfg, manifest)
    settings = cfg.resolve(manifest.name, manifest.splits["train"].rows, len(rows))
    tags = {"dataset": manifest.name, "method": cfg.method, "budget": cfg.annotations, "seed": cfg.train.seed,
            "repeat": cfg.repeat, "image_size": cfg.data.image_size,
            "backbone": cfg.model.backbone if cfg.method == "supervised" else "none",
            "init": "supervised" if cfg.method == "supervised" else "mean_shape"}
    return BaselinePlan(manifest, rows, headline_metric(manifest.eye_indices), settings, tags)


def run_name(cfg: BaselineConfig, plan: BaselinePlan) -> str:
    model = f"-{cfg.model.backbone}" if cfg.method == "supervised" else ""
    return cfg.mlflow.run_name or (f"baseline-{cfg.method}-{plan.manifest.name}{model}-n{cfg.annotations}"
                                   f"-s{cfg.train.seed}-r{cfg.repeat}")


def run_baseline(cfg: BaselineConfig, args: JobArgs) -> dict:
    cfg = absolute_paths(cfg)
    plan = check_baseline(cfg)
    params = {**plan.settings.params(), "resolved.train_rows": len(plan.rows)}
    return run_evaluation("baseline", cfg, args, plan, run_name(cfg, plan), evaluate_baseline, params)


def evaluate_baseline(cfg: BaselineConfig, run_logger: RunLogger, plan: BaselinePlan | None = None) -> dict:
    """Score the baseline of `cfg.method` on the test split; logs to `run_logger`. Returns the metrics."""
    cfg = absolute_paths(cfg)
    plan = plan or check_baseline(cfg)
    size, eyes = cfg.data.image_size, plan.manifest.eye_indices
    test = load_split(cfg.data.path, "test", size)
    if cfg.method == "mean_shape":
        train = load_split(cfg.data.path, "train", size, rows=plan.rows)
        pred = np.repeat(mean_shape(train["keypoints"], train["visible"])[None], len(test["keypoints"]), axis=0)
        metrics: dict[str, Any] = {}
    else:
        pred, metrics = _supervised(cfg, plan, test, run_logger)
    metrics[plan.metric] = landmark_score(plan.metric, pred, test["keypoints"], test["visible"], size, eyes)
    run_logger.log_metrics({plan.metric: metrics[plan.metric]}, step=metrics.get("steps", 0))
    return metrics


def _supervised(cfg: BaselineConfig, plan: BaselinePlan, test: dict, run_logger: RunLogger):
    """Train `models.MapRegressor` from scratch on the annotated rows -> (test predictions in pixels, metrics)."""
    settings, size = plan.settings, cfg.data.image_size
    device = pick_device()
    seed = cfg.train.seed + cfg.repeat
    torch.manual_seed(seed)
    mean, std, _ = input_stats(plan.manifest)
    train = load_split(cfg.data.path, "train", size, rows=plan.rows, stored=settings.tps_augment)
    model = MapRegressor(build_backbone(cfg.model.backbone), plan.manifest.K, size).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr, betas=(cfg.train.adam_beta1, 0.999),
                                 weight_decay=settings.weight_decay)
    rng, generator = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    batch = cfg.train.batch_size
    steps_per_epoch = math.ceil(settings.samples_per_epoch / batch)
    total, step, loss = settings.epochs * steps_per_epoch, 0, float("nan")
    bar = Progress(settings.epochs, "baseline", every=5.0)
    for epoch in range(settings.epochs):
        order = epoch_order(len(plan.rows), settings.samples_per_epoch, rng)
        for start in range(0, len(order), batch):
            pos = order[start:start + batch]
            images = torch.from_numpy(train["image"][pos]).to(device)
            kps = torch.from_numpy(train["keypoints"][pos]).to(device)
            if settings.tps_augment:
                x, kps = warped_inputs(images, kps, plan.manifest.border, size, generator)
                x = normalize(x, mean, std)
            else:
                x = input_tensor(images, mean, std, device)
            set_lr(optimizer, cosine_lr(settings.lr, step / steps_per_epoch, total / steps_per_epoch))
            with autocast(device, cfg.train.precision):
                pred = model(x).float()
            loss_t = regression_loss(pred, pixels_to_normalized(kps, size),
                                     torch.from_numpy(train["visible"][pos]).to(device))
            optimizer.zero_grad(set_to_none=True)
            loss_t.backward()
            optimizer.step()
            step, loss = step + 1, loss_t.item()
        run_logger.log_metrics({"train_loss": loss}, step=epoch)
        bar.update(1, loss=loss)
    model.eval()
    out = []
    with torch.no_grad(), autocast(device, cfg.train.precision):
        for start in range(0, len(test["image"]), 128):
            x = input_tensor(test["image"][start:start + 128], mean, std, device)
            out.append(normalized_to_pixels(model(x).float(), size).cpu())
    return torch.cat(out).numpy(), {"train_loss": loss, "steps": step, "epochs": settings.epochs}
