"""End-to-end fine-tuning, the per-worker side: `train_loop_per_worker(config)` run by Ray Train.

Each rank streams its shard of the annotated train rows (already border-cropped by Ray Data on CPU
workers), steps a DDP-wrapped `LandmarkNet` (a `Representation` + landmark regressor) with smooth-L1 on
normalized coordinates over visible landmarks, Adam (beta1 0.5) with the head at `train.lr` and
the backbone at `train.backbone_lr`, both on one cosine schedule. After the last epoch rank 0
scores the test split (inter-ocular error, or PCK for datasets without eyes). Every rank calls
`ray.train.report`; only rank 0 attaches checkpoints and logs to MLflow.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..augment.views import input_tensor
from ..config import FinetuneConfig
from ..coords import normalized_to_pixels, pixels_to_normalized
from ..data.loader import device_batches, epoch_steps
from ..data.reader import load_split
from ..dist import all_reduce_mean
from ..losses import regression_loss
from ..metrics import headline_metric, landmark_score
from ..models import LandmarkRegressor, build_backbone
from ..models.representation import Representation, dense_size, num_stages
from ..precision import autocast
from ..progress import Progress, worker_print
from ..registry import BACKBONE_REPRESENTATIONS
from ..schedules import cosine_lr, set_lr
from ..tracking import RunLogger
from .checkpoint import checkpoint_due, report_epoch, resume


class LandmarkNet(Representation):
    """A conv4 or hypercolumn `Representation` with a `LandmarkRegressor`, trained end to end.

    forward: normalized images (B, 3, S, S) -> landmarks (B, K, 2), normalized [-1, 1], x first.
    Parameters that cannot reach the output (the MoCo head; layer4 for conv4) are frozen, so DDP
    sees no unused parameters. The backbone may run in bf16 autocast; the heatmap conv and the x100
    spatial softmax run in float32 (bf16 logits times 100 would move the soft-argmax by whole cells).
    Its state dict is the backbone's and the regressor's (``backbone.*``, ``regressor.*``).
    """

    def __init__(self, backbone: nn.Module, num_landmarks: int, kind: str = "conv4", layers: int = 4,
                 size: tuple[int, int] = (48, 48), init_std: float = 1.0, points_per_landmark: int = 50) -> None:
        if kind not in BACKBONE_REPRESENTATIONS:
            raise ValueError(f"LandmarkNet representation must be conv4 or hypercolumn, got {kind!r}")
        super().__init__(kind, backbone, {}, None, layers, mean=None, std=None)  # takes normalized images
        self.size = tuple(size)
        self.regressor = LandmarkRegressor(self.channels, num_landmarks, points_per_landmark, init_std=init_std)
        backbone.fc.requires_grad_(False)
        for layer in (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4)[num_stages(kind):]:
            layer.requires_grad_(False)

    def forward(self, x_b3hw: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        stages = self.backbone_stages(x_b3hw)
        with torch.autocast(device_type=x_b3hw.device.type, enabled=False):
            return self.landmarks(self.regressor, [s.float() for s in stages], self.size)  # (B, K, 2)


def build_model(cfg: FinetuneConfig, num_landmarks: int, low_dim: int) -> LandmarkNet:
    backbone = build_backbone(cfg.model.backbone, low_dim=low_dim)
    return LandmarkNet(backbone, num_landmarks, cfg.representation, cfg.layers,
                       dense_size(cfg.representation, cfg.data.image_size), cfg.regressor.init_std,
                       cfg.regressor.points_per_landmark)


def param_groups(model: LandmarkNet, lr: float, backbone_lr: float) -> list[dict]:
    """Head at `lr`, backbone at `backbone_lr`; `lr_scale` keeps the ratio under the cosine schedule."""
    return [{"params": list(model.regressor.parameters()), "lr_scale": 1.0},
            {"params": [p for p in model.backbone.parameters() if p.requires_grad], "lr_scale": backbone_lr / lr}]


def finetune_step(model, optimizer, images_u8, keypoints, visible, mean, std, image_size: int,
               precision: str = "fp32") -> float:
    """One step on border-cropped uint8 images (B, S, S, 3) with pixel keypoints (B, K, 2) -> loss."""
    x = input_tensor(images_u8, mean, std, images_u8.device)
    if x.device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    target = pixels_to_normalized(keypoints.float(), image_size)
    with autocast(x.device, precision):
        pred = model(x)
    loss = regression_loss(pred.float(), target, visible.bool())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


@torch.no_grad()
def evaluate(model: LandmarkNet, data_path: str, image_size: int, mean, std, eye_indices, device,
             batch_size: int = 64, precision: str = "fp32") -> tuple[str, float, dict[str, np.ndarray]]:
    """(metric name, value, predictions) on the test split: IOD % with eye indices, else the official PCK %."""
    model.eval()
    split = load_split(data_path, "test", image_size)
    preds = []
    for start in range(0, len(split["image"]), batch_size):
        images = torch.from_numpy(split["image"][start:start + batch_size])
        x = input_tensor(images, mean, std, device)
        with autocast(device, precision):
            preds.append(normalized_to_pixels(model(x).float(), image_size).cpu())
    pred = torch.cat(preds).numpy()
    model.train()
    name = headline_metric(eye_indices)
    value = landmark_score(name, pred, split["keypoints"], split["visible"], image_size, eye_indices)
    return name, value, {"pred": pred, **split}


def _log_predictions(logger: RunLogger, out: dict[str, np.ndarray], image_size: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "predictions.npz"
        np.savez_compressed(path, image_id=np.array(out["image_id"], dtype=str), pred=out["pred"].astype(np.float32),
                            gt=out["keypoints"], visible=out["visible"], image_size=image_size)
        logger.log_artifact(path, "predictions")


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray
    import ray.train
    import ray.train.torch

    cfg = FinetuneConfig.model_validate(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    seed = cfg.train.seed + cfg.repeat
    torch.manual_seed(seed)  # the same regressor initialisation on every rank
    logger = RunLogger(config["mlflow_run_id"], enabled=rank == 0, uri=config["tracking_uri"])
    mean, std, size = config["mean"], config["std"], cfg.data.image_size

    model = build_model(cfg, config["num_landmarks"], config["low_dim"])
    model.backbone.load_state_dict(ray.get(config["backbone_state"]))
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(param_groups(model, cfg.train.lr, cfg.train.backbone_lr), lr=cfg.train.lr,
                                 betas=(cfg.train.adam_beta1, 0.999), weight_decay=cfg.train.weight_decay)
    _, start_epoch, step = resume(device, model=model, optimizer=optimizer)
    logger.skip_logged_steps()  # an earlier attempt's points after its last checkpoint stay the only ones
    ddp_model = ray.train.torch.prepare_model(model, move_to_device=False)

    batch = config["batch_size"]
    local_batch = batch // world
    steps_per_epoch = epoch_steps(config["train_rows"], world, local_batch)  # the last batch partial
    shard = ray.train.get_dataset_shard("train")
    bar = Progress(steps_per_epoch * (cfg.train.epochs - start_epoch), "finetune", every=10.0, enabled=rank == 0)
    for epoch in range(start_epoch, cfg.train.epochs):
        model.train()
        losses, t0 = [], time.perf_counter()
        batches = device_batches(shard, local_batch, device=device, columns=("image", "keypoints", "visible"),
                                 drop_last=False)
        for i, b in enumerate(batches):
            lr = cosine_lr(cfg.train.lr, epoch + i / steps_per_epoch, cfg.train.epochs)
            set_lr(optimizer, lr)
            loss = finetune_step(ddp_model, optimizer, b["image"], b["keypoints"], b["visible"], mean, std, size,
                              cfg.train.precision)
            losses.append(loss)
            step += 1
            if step % cfg.train.log_every_steps == 0 or i == steps_per_epoch - 1:
                rate = (i + 1) * batch / max(time.perf_counter() - t0, 1e-9)
                logger.log_metrics({"loss": loss, "lr": lr, "images_per_sec": rate}, step=step)
            bar.update(1, epoch=epoch + 1, loss=loss)
        epoch_loss = float(all_reduce_mean(torch.tensor(sum(losses) / max(len(losses), 1), device=device)))
        metrics: dict[str, Any] = {"epoch": epoch, "train_loss": epoch_loss, "step": step}
        logger.log_metrics({"train_loss": epoch_loss, "epoch": epoch}, step=step)
        last = epoch == cfg.train.epochs - 1
        if last and rank == 0:
            name, value, out = evaluate(model, cfg.data.path, size, mean, std, config["eye_indices"], device,
                                        precision=cfg.train.precision)
            metrics[name] = value
            logger.log_metrics({name: value}, step=step)
            _log_predictions(logger, out, size)
        state = meta = None  # rank 0 attaches the checkpoint on the epochs that save one
        if rank == 0 and checkpoint_due(epoch, cfg.checkpoint.every_epochs, cfg.train.epochs):
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                     "step": step}
            meta = {**config["meta"], **metrics, "mlflow_run_id": config["mlflow_run_id"]}
        report_epoch(metrics, epoch, state, meta)
        if rank == 0:
            shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k in ("iod", "pck"))
            worker_print(f"[finetune] epoch {epoch + 1}/{cfg.train.epochs}  loss {epoch_loss:.4f}  step {step}  {shown}")
