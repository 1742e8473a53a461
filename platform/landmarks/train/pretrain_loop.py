"""MoCo pretraining, the per-worker side: `train_loop_per_worker(config)` run by Ray Train.

Every rank streams its shard of the Ray Dataset, makes two views per image on its own
device (kornia), and steps a DDP-wrapped MoCo (keys gathered over ranks, shuffle BN).
Every rank calls `ray.train.report` each epoch; only rank 0 attaches the checkpoint and
logs to MLflow.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import torch
import torch.nn.functional as F

from ..augment import MoCoViews
from ..data.loader import device_batches
from ..models import MoCo, build_backbone, positive_probability
from ..tracking import RunLogger
from .checkpoint import load_checkpoint_dir, save_checkpoint_dir
from .configs import PretrainConfig
from .schedules import cosine_lr, set_lr


def build_moco(cfg: PretrainConfig) -> MoCo:
    encoder = build_backbone(cfg.model.backbone, low_dim=cfg.model.low_dim)
    return MoCo(encoder, dim=cfg.model.low_dim, K=cfg.moco.queue_size, m=cfg.moco.momentum, T=cfg.moco.temperature)


def autocast(device: torch.device):
    """bf16 autocast on CUDA; a no-op context on CPU (fp32)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def train_step(model, views: MoCoViews, optimizer, images_u8, device) -> tuple[float, float]:
    """One MoCo step on a batch of uint8 images (B, H, W, 3) on `device` -> (loss, positive prob)."""
    im_q, im_k = views(images_u8)
    if device.type == "cuda":
        im_q = im_q.contiguous(memory_format=torch.channels_last)
        im_k = im_k.contiguous(memory_format=torch.channels_last)
    with autocast(device):
        logits, labels = model(im_q, im_k)  # (B, 1+K), (B,)
        loss = F.cross_entropy(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item(), positive_probability(logits).item()


def queue_sha256(model: MoCo) -> str:
    """Fingerprint of the MoCo queue + pointer, to show a resume restored them bit-exactly."""
    h = hashlib.sha256()
    h.update(model.queue.detach().cpu().numpy().tobytes())
    h.update(model.queue_ptr.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    cfg = PretrainConfig.model_validate(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.train.seed * 1000 + rank)
    logger = RunLogger(config["mlflow_run_id"], enabled=rank == 0, uri=config["tracking_uri"])

    model = build_moco(cfg).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad],
        lr=cfg.train.lr, momentum=cfg.train.sgd_momentum, weight_decay=cfg.train.weight_decay,
    )
    start_epoch, step = 0, 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state, meta = load_checkpoint_dir(d, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, step = state["epoch"] + 1, state["step"]
        logger.set_tags({"resumed_from_epoch": state["epoch"], "resume_queue_sha256": queue_sha256(model)})
    # DDP after loading (prepare_model moves to the device; no-op wrapper for one worker).
    ddp_model = ray.train.torch.prepare_model(model, move_to_device=False,
                                              parallel_strategy_kwargs={"find_unused_parameters": False})

    views = MoCoViews(
        cfg.data.image_size, mean=config["mean"], std=config["std"], border=config["border"],
        crop_min_scale=cfg.moco.crop_min_scale, color_jitter=cfg.moco.color_jitter,
        jpeg=cfg.moco.jpeg, lighting_std=cfg.moco.lighting_std,
    ).to(device)
    local_batch = cfg.train.batch_size // world
    steps_per_epoch = max(config["train_rows"] // cfg.train.batch_size, 1)
    shard = ray.train.get_dataset_shard("train")

    for epoch in range(start_epoch, cfg.train.epochs):
        model.train()
        losses, t0, seen = [], time.perf_counter(), 0
        for i, batch in enumerate(device_batches(shard, local_batch, device=device, columns=("image",),
                                                    local_shuffle_buffer_size=4 * local_batch,
                                                    local_shuffle_seed=cfg.train.seed * 1000 + epoch)):
            if i >= steps_per_epoch:
                break  # shards may differ by a batch; keep ranks in lock-step for DDP
            lr = cosine_lr(cfg.train.lr, epoch + i / steps_per_epoch, cfg.train.epochs, cfg.train.warmup_epochs)
            set_lr(optimizer, lr)
            loss, pos = train_step(ddp_model, views, optimizer, batch["image"], device)
            losses.append(loss)
            seen += batch["image"].shape[0] * world
            step += 1
            if step % cfg.train.log_every_steps == 0 or i == steps_per_epoch - 1:
                rate = seen / max(time.perf_counter() - t0, 1e-9)
                logger.log_metrics({"loss": loss, "positive_prob": pos, "lr": lr, "images_per_sec": rate}, step=step)
        epoch_loss = sum(losses) / max(len(losses), 1)
        metrics = {"epoch": epoch, "loss": epoch_loss, "step": step}
        logger.log_metrics({"epoch_loss": epoch_loss, "epoch": epoch}, step=step)
        last = epoch == cfg.train.epochs - 1
        if (epoch + 1) % cfg.checkpoint.every_epochs == 0 or last:
            ckpt = None
            if rank == 0:
                state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "step": step}
                meta = {"epoch": epoch, "step": step, "loss": epoch_loss, "backbone": cfg.model.backbone,
                        "low_dim": cfg.model.low_dim, "mlflow_run_id": config["mlflow_run_id"],
                        "dataset": config["dataset"], "image_size": cfg.data.image_size}
                ckpt = ray.train.Checkpoint.from_directory(str(save_checkpoint_dir(state, meta)))
            ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=f"checkpoint_epoch{epoch:05d}")
        else:
            ray.train.report(metrics)
        if rank == 0:
            print(f"[pretrain] epoch {epoch + 1}/{cfg.train.epochs}  loss {epoch_loss:.4f}  step {step}", flush=True)
