"""Projector training, the per-worker side: `train_loop_per_worker(config)` run by Ray Train.

The official recipe (contrast-landmark ``train_feature_projector.py``, README "Stage 2"): each rank
streams its shard of the train split through the MoCo augmentation (one view per image; the official
projector trains on ``CelebAPrunedAligned_MAFLVal(do_augmentations=True)``, although the paper's text
says no augmentation), takes the frozen backbone's stage outputs and steps a DDP-wrapped projected
`Representation` (a `Projector`, 1x1 conv + spatial softmax, on the hypercolumn at ``train.map_size``,
24 x 24, computed block by block) with the dense correlation loss of each image
with itself (`losses.dense_correlation_loss`), Adam(beta1 0.5) on the per-epoch cosine. After every
epoch rank 0 measures the different-identity matching error on the validation pairs
(`train.matching`, descriptors at the input size) and the checkpoint carries the best epoch's
projector: that one is kept, not the last.

``projector.loss=tps_pair`` trains on two TPS warps of each image with `losses.equivariance_loss`
instead (the correspondence grid of `pair_warp`, cropped to the eval window).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import MoCoViews
from ..augment.tps import (
    PAIR,
    TPSParams,
    normalized_grid,
    normalized_to_pixels,
    pair_warp,
    pixels_to_normalized,
    sample_pair_params,
)
from ..augment.views import border_crop, normalize, to_float_images, to_levels
from ..config import ProjectorConfig
from ..data.loader import device_batches, epoch_steps
from ..dist import all_reduce_mean
from ..losses import dense_correlation_loss, equivariance_loss
from ..matching import describer, match_pairs
from ..models import Projector, build_backbone
from ..models.representation import Representation
from ..precision import autocast
from ..progress import Progress, worker_print
from ..schedules import OFFICIAL_ETA_MIN_FACTOR, epoch_cosine_lr, set_lr
from ..tracking import RunLogger
from .checkpoint import checkpoint_due, report_epoch, resume


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


def frozen_stages(rep: Representation, x: torch.Tensor, precision: str = "fp32") -> list[torch.Tensor]:
    """Normalized images (B, 3, S, S) -> the frozen backbone's stage outputs [layer1..layer4], float32."""
    if x.device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), autocast(x.device, precision):
        stages = rep.backbone_stages(x)
    return [s.float() for s in stages]


def dense_corr_step(model: nn.Module, rep: Representation, optimizer, x: torch.Tensor, map_size: int,
                    temperature: float, power: float, precision: str = "fp32") -> float:
    """One official step: projected hypercolumns of the augmented images, the dense correlation loss.
    `model` is `rep` (projected) or its DDP wrapper: model(stages, size) -> (B, dim, h, w)."""
    with autocast(x.device, precision):
        feats = model(frozen_stages(rep, x, precision), (map_size, map_size))  # (B, dim, h, w)
    loss = dense_correlation_loss(feats.float(), temperature, power, stride=x.shape[-1] // map_size)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def tps_pair_step(model: nn.Module, rep: Representation, optimizer, img_a, img_b, grid, map_size: int,
                  temperature: float, power: float, precision: str = "fp32") -> float:
    """One `projector.loss=tps_pair` step: both warped images projected, the equivariance loss between them."""
    with autocast(img_a.device, precision):
        feats = model(frozen_stages(rep, torch.cat([img_a, img_b]), precision), (map_size, map_size))
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


def _validator(config: dict[str, Any], cfg: ProjectorConfig, rep: Representation, device: torch.device):
    """Rank 0's per-epoch matching on the validation pairs -> {val_match_same_px, val_match_diff_px}."""
    import ray

    val = config.get("validation")
    if val is None:
        return None
    data = ray.get(val["data"])
    projector = rep.projector
    size = (cfg.data.image_size, cfg.data.image_size)  # official val_out_size: the input size

    def validate() -> dict[str, float]:
        projector.eval()
        same, diff = match_pairs(describer(rep, size), data["image"], data["keypoints"], val["border"],
                                 cfg.data.image_size, config["mean"], config["std"],
                                 torch.Generator().manual_seed(cfg.train.seed), device,
                                 max(1, cfg.validation.batch_size // 2))
        projector.train()
        return {"val_match_same_px": float(same.mean()), "val_match_diff_px": float(diff.mean())}

    return validate


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    cfg = ProjectorConfig.model_validate(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.train.seed)  # the same initial projector on every rank (DDP also broadcasts it)
    generator = torch.Generator().manual_seed(cfg.train.seed * 1000 + rank)  # augmentation draws, per rank
    logger = RunLogger(config["mlflow_run_id"], enabled=rank == 0, uri=config["tracking_uri"])

    backbone = _frozen_backbone(config, device)
    dim = cfg.projector.dim
    projector = Projector(config["in_channels"], dim, cfg.projector.resolved_softargmax_mul()).to(device)
    optimizer = torch.optim.Adam(projector.parameters(), lr=cfg.train.lr, betas=(cfg.train.adam_beta1, 0.999),
                                 weight_decay=cfg.train.weight_decay)
    state, start_epoch, step = resume(device, projector=projector, optimizer=optimizer)
    logger.skip_logged_steps()  # an earlier attempt's points after its last checkpoint stay the only ones
    best = None if state is None else state.get("best")  # {"projector", "epoch", "val_match_diff_px", ...}
    rep = Representation("projected", backbone, {}, projector, cfg.layers, config["mean"], config["std"], device)
    # DDP syncs the projector's gradients; the frozen backbone's BN buffers are the same on every rank (eval
    # mode, loaded from one file) and the projector has none: no buffer broadcast before each forward.
    model = ray.train.torch.prepare_model(rep, move_to_device=False,
                                          parallel_strategy_kwargs={"broadcast_buffers": False})
    validate = _validator(config, cfg, rep, device) if rank == 0 else None

    temperature, power, size = cfg.train.resolved_temperature(dim), cfg.train.power, cfg.train.map_size
    views = MoCoViews(cfg.data.image_size, mean=config["mean"], std=config["std"], border=config["border"]).to(device)
    local_batch = cfg.train.batch_size // world
    steps_per_epoch = epoch_steps(config["train_rows"], world, local_batch)  # the last batch partial, as the official
    shard = ray.train.get_dataset_shard("train")
    bar = Progress(steps_per_epoch * (cfg.train.epochs - start_epoch), "train_projector", every=10.0,
                   enabled=rank == 0)
    for epoch in range(start_epoch, cfg.train.epochs):
        lr = epoch_cosine_lr(cfg.train.lr, epoch + 1, cfg.train.epochs, cfg.train.lr * OFFICIAL_ETA_MIN_FACTOR)
        set_lr(optimizer, lr)
        losses, t0 = [], time.perf_counter()
        batches = device_batches(shard, local_batch, device=device, columns=("image",), drop_last=False)
        for i, batch in enumerate(batches):
            if cfg.projector.loss == "dense_corr":
                x = views.view(to_levels(batch["image"]), generator)  # one MoCo view
                loss = dense_corr_step(model, rep, optimizer, x, size, temperature, power, cfg.train.precision)
            else:
                img_a, img_b, grid = pair_views(batch["image"], config["border"], cfg.data.image_size,
                                                config["mean"], config["std"], (size, size), generator)
                loss = tps_pair_step(model, rep, optimizer, img_a, img_b, grid, size, temperature, power,
                                     cfg.train.precision)
            losses.append(loss)
            step += 1
            if step % cfg.train.log_every_steps == 0 or i == steps_per_epoch - 1:
                rate = (i + 1) * cfg.train.batch_size / max(time.perf_counter() - t0, 1e-9)
                logger.log_metrics({"loss": loss, "images_per_sec": rate, "lr": lr}, step=step)
            bar.update(1, epoch=epoch + 1, loss=loss)
        # Mean over ranks: every rank reports the same epoch loss.
        epoch_loss = float(all_reduce_mean(torch.tensor(sum(losses) / max(len(losses), 1), device=device)))
        metrics = {"epoch": epoch, "loss": epoch_loss, "step": step}
        if validate is not None:
            metrics.update(validate())
            if best is None or metrics["val_match_diff_px"] < best["val_match_diff_px"]:
                best = {"projector": {k: v.detach().cpu().clone() for k, v in projector.state_dict().items()},
                        "epoch": epoch, "val_match_diff_px": metrics["val_match_diff_px"],
                        "val_match_same_px": metrics["val_match_same_px"]}
        logger.log_metrics({"epoch_loss": epoch_loss, "epoch": epoch,
                            **{k: v for k, v in metrics.items() if k.startswith("val_")}}, step=step)
        state = meta = None  # rank 0 attaches the checkpoint on the epochs that save one
        if rank == 0 and checkpoint_due(epoch, cfg.checkpoint.every_epochs, cfg.train.epochs):
            state = {"projector": {k: v.detach().cpu() for k, v in projector.state_dict().items()},
                     "optimizer": optimizer.state_dict(), "epoch": epoch, "step": step,
                     **({"best": copy.deepcopy(best)} if best is not None else {})}
            meta = {**config["meta"], "epoch": epoch, "step": step, "loss": epoch_loss,
                    "mlflow_run_id": config["mlflow_run_id"],
                    **({"best_epoch": best["epoch"], "val_match_diff_px": best["val_match_diff_px"]} if best else {})}
        report_epoch(metrics, epoch, state, meta)
        if rank == 0:
            shown = f"  val diff {metrics['val_match_diff_px']:.2f} px" if "val_match_diff_px" in metrics else ""
            worker_print(f"[train_projector] epoch {epoch + 1}/{cfg.train.epochs}  loss {epoch_loss:.4f}{shown}  "
                         f"step {step}")
