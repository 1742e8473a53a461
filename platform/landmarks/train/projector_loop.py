"""Projector training, the per-worker side: `train_loop_per_worker(config)` run by Ray Train.

Each rank streams its shard of the train split, makes a TPS image pair of every image on its own
device (`augment.tps.pair_warp`, the PAIR preset of the official ``Warper``), passes both through
the frozen backbone (eval mode, no gradients, bf16 autocast + channels_last on CUDA) and steps a
DDP-wrapped 1x1 projector of the hypercolumn with the equivariance loss (paper Sec. 3.2). Every
rank calls `ray.train.report` each epoch; only rank 0 attaches the checkpoint and logs to MLflow.

Geometry: the pair is warped at the stored resolution, so the TPS pulls real image content in at
the borders, and then loses the eval border (20 px of 136 for faces) like every evaluation
input; the correspondence grid is computed for that crop window (`crop_window_grid`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..augment.tps import (
    PAIR,
    TPSParams,
    normalized_grid,
    normalized_to_pixels,
    pair_warp,
    pixels_to_normalized,
    sample_pair_params,
)
from ..augment.views import border_crop, normalize, to_float_images
from ..data.loader import device_batches
from ..dist import all_reduce_mean
from ..losses import equivariance_loss
from ..models import Projector, build_backbone
from ..progress import Progress, worker_print
from ..tracking import RunLogger
from .checkpoint import checkpoint_due, load_checkpoint_dir, report_epoch
from .configs import ProjectorConfig
from .eval_job import linear_over_blocks
from .moco_step import autocast


class BlockProjector(nn.Module):
    """A `Projector` applied to the hypercolumn's stage blocks (`linear_over_blocks`): the same
    result as projector(hypercolumn) without building the (B, 3840, 48, 48) map."""

    def __init__(self, projector: Projector) -> None:
        super().__init__()
        self.projector = projector

    def forward(self, blocks: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        conv = self.projector.proj
        return linear_over_blocks(blocks, conv.weight, conv.bias, size)  # (B, dim, h, w)


def crop_window_grid(second: TPSParams, stored: int, border: int, feature_size: tuple[int, int]) -> torch.Tensor:
    """Correspondence grid of `pair_warp` for the central crop (stored - 2 border px) of both images.

    For each cell u of the (h, w) map of image a's crop (align_corners=True over the crop, the
    equivariance loss's convention) the position of the same point in image b's crop:
    crop -> full-image pixels -> the second warp g -> crop. Returns (B, h, w, 2), normalized, x first.
    """
    side = stored - 2 * border
    h, w = feature_size
    dev = second.affine.device
    cells = normalized_to_pixels(normalized_grid(h, w, dev).reshape(-1, 2), (side, side)) + border
    in_b = second.map_points(pixels_to_normalized(cells, (stored, stored)))  # (B, h w, 2) full image
    grid = pixels_to_normalized(normalized_to_pixels(in_b, (stored, stored)) - border, (side, side))
    return grid.reshape(second.batch_size, h, w, 2)


def pair_views(images_u8: torch.Tensor, border: int, image_size: int, mean: Sequence[float], std: Sequence[float],
               feature_size: tuple[int, int], generator: torch.Generator | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 images (B, H, W, 3) at the stored size -> normalized (img_a, img_b) (B, 3, S, S) at
    S = image_size, and the grid (B, h, w, 2) from a to b (see `pair_warp`), all on the images' device."""
    x = to_float_images(images_u8).contiguous()
    stored = x.shape[-1]
    params = sample_pair_params(x.shape[0], PAIR, generator, device=x.device)
    img_a, img_b, _ = pair_warp(x, PAIR, feature_size, params=params)
    grid = crop_window_grid(params[1], stored, border, feature_size)
    out = []
    for img in (img_a, img_b):
        img = border_crop(img, border)
        if img.shape[-1] != image_size:  # a dataset ingested for another input size
            img = F.interpolate(img, size=(image_size, image_size), mode="bilinear", antialias=True,
                                align_corners=False)
        out.append(normalize(img, mean, std))
    return out[0], out[1], grid


def train_step(model: nn.Module, backbone: nn.Module, optimizer, img_a, img_b, grid, layers: int,
               feature_size: tuple[int, int], temperature: float, power: float) -> float:
    """One step: frozen hypercolumns of both images, projected by `model` (DDP), equivariance loss."""
    device = img_a.device
    if device.type == "cuda":
        img_a = img_a.contiguous(memory_format=torch.channels_last)
        img_b = img_b.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), autocast(device):
        both = backbone.stages(torch.cat([img_a, img_b]), num_stages=4)  # [layer1..layer4], (2B, C_s, h_s, w_s)
    blocks = [s.float() for s in both[::-1][:layers]]  # layer4, layer3, ... (hypercolumn order)
    with autocast(device):
        feats = model(blocks, feature_size)  # (2B, dim, h, w)
    feat_a, feat_b = feats.float().chunk(2)
    loss = equivariance_loss(feat_a, feat_b, grid, temperature=temperature, power=power)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def _frozen_backbone(config: dict[str, Any], device: torch.device) -> nn.Module:
    import ray

    backbone = build_backbone(config["backbone"], low_dim=config["low_dim"])
    backbone.load_state_dict(ray.get(config["backbone_state"]))
    backbone = backbone.to(device).eval().requires_grad_(False)
    return backbone.to(memory_format=torch.channels_last) if device.type == "cuda" else backbone


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    cfg = ProjectorConfig.model_validate(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.train.seed)  # the same initial projector on every rank (DDP also broadcasts it)
    generator = torch.Generator().manual_seed(cfg.train.seed * 1000 + rank)  # TPS draws, per rank
    logger = RunLogger(config["mlflow_run_id"], enabled=rank == 0, uri=config["tracking_uri"])

    backbone = _frozen_backbone(config, device)
    projector = Projector(config["in_channels"], cfg.projector.dim).to(device)
    optimizer = torch.optim.Adam(projector.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    start_epoch, step = 0, 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state, _ = load_checkpoint_dir(d, map_location=device)
        projector.load_state_dict(state["projector"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, step = state["epoch"] + 1, state["step"]
    model = ray.train.torch.prepare_model(BlockProjector(projector), move_to_device=False)

    size = tuple(config["feature_size"])
    local_batch = cfg.train.batch_size // world
    steps_per_epoch = max(config["train_rows"] // cfg.train.batch_size, 1)
    shard = ray.train.get_dataset_shard("train")
    bar = Progress(steps_per_epoch * (cfg.train.epochs - start_epoch), "train_projector", every=10.0,
                   enabled=rank == 0)
    for epoch in range(start_epoch, cfg.train.epochs):
        losses, t0 = [], time.perf_counter()
        batches = device_batches(shard, local_batch, device=device, columns=("image",),
                                 local_shuffle_buffer_size=cfg.data.shuffle_buffer_rows,
                                 local_shuffle_seed=cfg.train.seed * 1000 + epoch)
        for i, batch in enumerate(batches):
            if i >= steps_per_epoch:
                break  # shards may differ by a batch; keep ranks in lock-step for DDP
            img_a, img_b, grid = pair_views(batch["image"], config["border"], cfg.data.image_size, config["mean"],
                                            config["std"], size, generator)
            loss = train_step(model, backbone, optimizer, img_a, img_b, grid, cfg.layers, size,
                              cfg.train.temperature, cfg.train.power)
            losses.append(loss)
            step += 1
            if step % cfg.train.log_every_steps == 0 or i == steps_per_epoch - 1:
                rate = (i + 1) * cfg.train.batch_size / max(time.perf_counter() - t0, 1e-9)
                logger.log_metrics({"loss": loss, "images_per_sec": rate}, step=step)
            bar.update(1, epoch=epoch + 1, loss=loss)
        # Mean over ranks: every rank reports the same epoch loss.
        epoch_loss = float(all_reduce_mean(torch.tensor(sum(losses) / max(len(losses), 1), device=device)))
        metrics = {"epoch": epoch, "loss": epoch_loss, "step": step}
        logger.log_metrics({"epoch_loss": epoch_loss, "epoch": epoch}, step=step)
        state = meta = None  # rank 0 attaches the checkpoint on the epochs that save one
        if rank == 0 and checkpoint_due(epoch, cfg.checkpoint.every_epochs, cfg.train.epochs):
            state = {"projector": {k: v.detach().cpu() for k, v in projector.state_dict().items()},
                     "optimizer": optimizer.state_dict(), "epoch": epoch, "step": step}
            meta = {**config["meta"], "epoch": epoch, "step": step, "loss": epoch_loss,
                    "mlflow_run_id": config["mlflow_run_id"]}
        report_epoch(metrics, epoch, state, meta)
        if rank == 0:
            worker_print(f"[train_projector] epoch {epoch + 1}/{cfg.train.epochs}  loss {epoch_loss:.4f}  step {step}")
