"""Figure-ground segmentation (paper Table 6): a 1x1 conv to a foreground logit, fixed or fine-tuned.

    python jobs/segment.py --config jobs/configs/segment_cub.yaml backbone.source=<pretrain run id> annotations=10

A `SegmentationHead` (1x1 conv over the hypercolumn, conv4 or projected map, bilinearly upsampled
to the image) is trained with BCE-with-logits on the foreground mask of `annotations` training
images (CUB: the official fixed subsets of 10/50/100/250/500/1241; elsewhere a seeded subset) and
scored by the mean IoU of `logits > 0` on the test split (`landmarks.metrics.mask_iou`), after the
eval border crop. ``finetune=false``: the backbone is frozen and its stage outputs come from the
feature cache (`landmarks.features`). ``finetune=true``: backbone and head are trained end to end,
the backbone with `backbone_lr`. Adam (beta1 `train.adam_beta1`), cosine schedule. A PNG of a few
test images (input, ground truth, prediction) is logged for the report. The job runs as one Ray
task with the resources of `ray.*` (in-process inside a Tune trial), like `jobs/regress.py`.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..augment.views import input_tensor
from ..cli import JobArgs
from ..config import Resolved, SegmentConfig, absolute_paths
from ..data.budgets import annotated_rows
from ..data.manifest import Manifest, open_manifest
from ..data.preprocessing import dataset_preprocessing
from ..data.reader import load_split
from ..errors import UserError
from ..features import FeatureSet, features_for
from ..metrics import mask_iou
from ..models import SegmentationHead
from ..models.artifact import LandmarkModel, model_meta, saved_model
from ..models.representation import Representation, dense_size
from ..precision import autocast, pick_device
from ..progress import Progress
from ..schedules import cosine_lr, set_lr
from ..sources import load_representation
from ..tracking import RunLogger
from .runner import head_params, run_evaluation

FIGURE_IMAGES = 6


@dataclass
class SegmentPlan:
    """Everything checked and resolved before training starts."""

    manifest: Manifest
    rows: np.ndarray  # training rows (indices into the train split)
    settings: Resolved  # lr, weight decay, samples an epoch
    rep: Representation
    tags: dict = field(default_factory=dict)


def check_segmentation(cfg: SegmentConfig) -> SegmentPlan:
    """Validate the dataset (with masks), budget, backbone and projector; resolve 'auto' settings."""
    manifest = open_manifest(cfg.data.path, "train", "test", need_landmarks=False, need_masks=True)
    if cfg.finetune and cfg.representation == "projected":
        raise UserError("finetune=true trains the backbone end to end on representation=hypercolumn or conv4; "
                        "use finetune=false for the projected descriptor")
    rows = annotated_rows(cfg, manifest)
    if cfg.finetune and len(rows) < 2:
        raise UserError("finetune=true needs at least 2 annotated images (batch norm in training mode)")
    settings = cfg.resolve(manifest.splits["train"].rows, len(rows))
    rep = load_representation(cfg, manifest, seed=cfg.train.seed)
    tags = {"dataset": manifest.name, "backbone": cfg.model.backbone, "representation": cfg.representation,
            "budget": cfg.annotations, "init": rep.info["init"], "finetuned": int(cfg.finetune),
            "seed": cfg.train.seed, "repeat": cfg.repeat, "backbone_source": cfg.backbone.source,
            "projector_dim": rep.info.get("projector_dim"), "image_size": cfg.data.image_size}
    return SegmentPlan(manifest, rows, settings, rep, tags)


def run_name(cfg: SegmentConfig, plan: SegmentPlan) -> str:
    mode = "finetuned" if cfg.finetune else "linear"
    return cfg.mlflow.run_name or (f"segment-{plan.manifest.name}-{cfg.model.backbone}-{cfg.representation}-{mode}"
                                   f"-n{cfg.annotations}-s{cfg.train.seed}-r{cfg.repeat}")


def run_segment(cfg: SegmentConfig, args: JobArgs) -> dict:
    """The job: check everything, then train and score as one Ray task (in-process inside a Tune trial)."""
    cfg = absolute_paths(cfg)
    plan = check_segmentation(cfg)
    return run_evaluation("segment", cfg, args, plan, run_name(cfg, plan), evaluate_segmentation, head_params(plan))


# ----------------------------------------------------------------------------- data and model


class MaskRows:
    """Rows of a split with their masks, and the stage outputs of a batch of them: from the feature
    cache, or from the images through the backbone (with gradients when fine-tuning)."""

    def __init__(self, rep: Representation, features: FeatureSet | None = None,
                 split: dict[str, np.ndarray] | None = None, rows: np.ndarray | None = None, grad: bool = False):
        self.rep, self.features, self.grad = rep, features, grad
        if features is not None:
            if features.masks is None:
                raise UserError(f"feature cache {features.directory} holds no masks; delete it to rebuild")
            self.index = np.arange(len(features)) if rows is None else np.asarray(rows)
            self.masks = features.masks
        else:
            self.index = np.arange(len(split["image"]))
            self.images, self.masks = split["image"], split["mask"]

    def __len__(self) -> int:
        return len(self.index)

    def target(self, pos: np.ndarray) -> torch.Tensor:
        """(B, H, W) float foreground (ingest writes 0/255 masks) on the device."""
        return torch.from_numpy(np.asarray(self.masks[self.index[pos]]) > 127).to(self.rep.device).float()

    def stages(self, pos: np.ndarray) -> list[torch.Tensor]:
        if self.features is not None:
            return self.features.stage_batch(self.index[pos], self.rep.device)
        images = self.images[self.index[pos]]
        if not self.grad:
            return self.rep.stages(images)
        x = input_tensor(images, self.rep.mean, self.rep.std, self.rep.device)
        if x.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return self.rep.backbone_stages(x)


def _source(cfg: SegmentConfig, plan: SegmentPlan, split: str, rows: np.ndarray | None) -> MaskRows:
    size = cfg.data.image_size
    if cfg.features.enabled and not cfg.finetune:
        return MaskRows(plan.rep, features=features_for(plan.rep, cfg.data.path, split, size, cfg.features.dir),
                        rows=rows)
    return MaskRows(plan.rep, split=load_split(cfg.data.path, split, size, rows=rows), grad=cfg.finetune)


@torch.no_grad()
def predict_masks(head, source: MaskRows, size, image_size: int, batch_size: int = 64,
                  precision: str = "fp32") -> np.ndarray:
    """Boolean foreground predictions (N, H, W), logits > 0, for every row of `source`."""
    grad, source.grad = source.grad, False
    out = []
    for start in range(0, len(source), batch_size):
        pos = np.arange(start, min(start + batch_size, len(source)))
        with autocast(source.rep.device, precision):
            logits = source.rep.mask_logits(head, source.stages(pos), size, image_size)
        out.append((logits > 0).cpu())
    source.grad = grad
    return torch.cat(out).numpy()


# ----------------------------------------------------------------------------- training


def _batches(n: int, samples: int, batch_size: int, rng: np.random.Generator, drop_last: bool) -> list[np.ndarray]:
    """One epoch: `samples` positions from shuffled passes over n rows, cut into batches."""
    order = np.concatenate([rng.permutation(n) for _ in range(math.ceil(samples / n))])[:samples]
    cuts = [order[i:i + batch_size] for i in range(0, samples, batch_size)]
    return [c for c in cuts if len(c) == batch_size] if drop_last and len(cuts) > 1 else cuts


def train_mask_epoch(head, optimizer, source: MaskRows, batches: list[np.ndarray], epoch: int, epochs: int,
                base_lr: float, size, image_size: int, precision: str = "fp32") -> float:
    total, count = 0.0, 0
    for i, pos in enumerate(batches):
        set_lr(optimizer, cosine_lr(base_lr, epoch + i / len(batches), epochs))
        with autocast(source.rep.device, precision):
            logits = source.rep.mask_logits(head, source.stages(pos), size, image_size)
        loss = F.binary_cross_entropy_with_logits(logits.float(), source.target(pos))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total, count = total + loss.item() * len(pos), count + len(pos)
    return total / max(count, 1)


def evaluate_segmentation(cfg: SegmentConfig, run_logger: RunLogger, plan: SegmentPlan | None = None) -> dict:
    """Train the head (and the backbone when fine-tuning), score IoU on the test split; logs to `run_logger`."""
    plan = plan or check_segmentation(absolute_paths(cfg))
    device = pick_device()
    rep = plan.rep.to(device)
    if rep.projector is not None:
        rep.projector.requires_grad_(False)
    seed = cfg.train.seed + cfg.repeat
    torch.manual_seed(seed)
    size, image_size = dense_size(cfg.representation, cfg.data.image_size), cfg.data.image_size
    train = _source(cfg, plan, "train", plan.rows)
    test = _source(cfg, plan, "test", None)
    if train.features is not None:
        run_logger.set_tags({"features.train": "hit" if train.features.hit else "miss",
                             "features.test": "hit" if test.features.hit else "miss"})

    head = SegmentationHead(rep.channels).to(device)
    groups = [{"params": list(head.parameters()), "lr_scale": 1.0}]
    if cfg.finetune:
        rep.backbone.requires_grad_(True).train()
        if device.type == "cuda":
            rep.backbone.to(memory_format=torch.channels_last)
        groups.append({"params": list(rep.backbone.parameters()), "lr_scale": cfg.backbone_lr / plan.settings.lr})
    optimizer = torch.optim.Adam(groups, lr=plan.settings.lr, betas=(cfg.train.adam_beta1, 0.999),
                                 weight_decay=plan.settings.weight_decay)
    rng = np.random.default_rng(seed)
    batch_size = min(cfg.train.batch_size, plan.settings.samples_per_epoch)
    bar = Progress(cfg.train.epochs, "segment", every=5.0)
    for epoch in range(cfg.train.epochs):
        t0 = time.perf_counter()
        batches = _batches(len(train), plan.settings.samples_per_epoch, batch_size, rng, drop_last=cfg.finetune)
        loss = train_mask_epoch(head, optimizer, train, batches, epoch, cfg.train.epochs, plan.settings.lr, size, image_size,
                           cfg.train.precision)
        seen = sum(len(b) for b in batches)
        run_logger.log_metrics({"train_loss": loss, "images_per_sec": seen / (time.perf_counter() - t0)}, step=epoch)
        bar.update(1, loss=loss)

    rep.backbone.eval()
    pred = predict_masks(head, test, size, image_size, precision=cfg.train.precision)
    gt = np.asarray(test.masks[test.index]) > 127
    metrics: dict[str, Any] = {
        "iou": mask_iou(pred, gt), "train_loss": loss, "epochs": cfg.train.epochs,
        # Chance levels for the report: all background / all foreground.
        "iou_all_background": mask_iou(np.zeros_like(gt), gt), "iou_all_foreground": mask_iou(np.ones_like(gt), gt),
    }
    run_logger.log_metrics({k: v for k, v in metrics.items() if k != "epochs"}, step=cfg.train.epochs)
    _log_figure(cfg, pred, gt, run_logger)
    meta = model_meta(rep, head.eval(), "mask", plan.manifest, dataset_preprocessing(plan.manifest, image_size),
                      {"job": "segment", "mlflow_run_id": run_logger.run_id, "iou": metrics["iou"]})
    with saved_model(LandmarkModel(rep, head, "mask", meta)) as directory:
        run_logger.log_landmark_model(directory)
    return metrics


def mask_figure(images: np.ndarray, gt: np.ndarray, pred: np.ndarray, min_side: int = 96):
    """A PIL image with one row per image: input | ground truth | prediction (white = foreground)."""
    from PIL import Image

    n, h, w = gt.shape
    scale = max(1, math.ceil(min_side / h))
    canvas = Image.new("RGB", (3 * w * scale + 4, n * h * scale + 2 * (n - 1)), (128, 128, 128))
    for i in range(n):
        tiles = [images[i], np.repeat(gt[i, ..., None] * 255, 3, -1), np.repeat(pred[i, ..., None] * 255, 3, -1)]
        for j, tile in enumerate(tiles):
            img = Image.fromarray(np.ascontiguousarray(tile).astype(np.uint8)).resize((w * scale, h * scale),
                                                                                       Image.NEAREST)
            canvas.paste(img, (j * (w * scale + 2), i * (h * scale + 2)))
    return canvas


def _log_figure(cfg: SegmentConfig, pred: np.ndarray, gt: np.ndarray, run_logger: RunLogger) -> None:
    n = min(FIGURE_IMAGES, len(gt))
    images = load_split(cfg.data.path, "test", cfg.data.image_size, rows=np.arange(n))["image"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "masks.png"
        mask_figure(images, gt[:n], pred[:n]).save(path)
        run_logger.log_artifact(path, "segmentation")
