"""MoCo pretraining, the per-worker side: `train_loop_per_worker(config)` run by Ray Train.

Every rank streams its shard of the Ray Dataset, makes two views per image on its own
device (`augment.MoCoViews`), and steps a DDP-wrapped MoCo (keys gathered over ranks, shuffle BN).
Every rank calls `ray.train.report` each epoch; only rank 0 attaches the checkpoint and
logs to MLflow (losses averaged over ranks).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from ..augment import MoCoViews, ViewsAhead, views_generator
from ..config import PretrainConfig
from ..data.loader import device_batches, epoch_steps
from ..dist import all_reduce_mean
from ..probe import probe
from ..progress import worker_print
from ..schedules import cosine_lr, epoch_cosine_lr, set_lr
from ..tracking import RunLogger
from .checkpoint import checkpoint_due, report_epoch, resume
from .moco_step import prepare_moco, queue_sha256, step_on_views

# Above this mean cosine between queued keys the pretraining warns that its embeddings collapse.
COLLAPSED_KEY_SIMILARITY = 0.8


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    cfg = PretrainConfig.model_validate(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.train.seed * 1000 + rank)
    logger = RunLogger(config["mlflow_run_id"], enabled=rank == 0, uri=config["tracking_uri"])

    model = prepare_moco(cfg, device)
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad],
        lr=cfg.train.lr, momentum=cfg.train.sgd_momentum, weight_decay=cfg.train.weight_decay,
    )
    state, start_epoch, step = resume(device, model=model, optimizer=optimizer)
    logger.skip_logged_steps()  # an earlier attempt's points after its last checkpoint stay the only ones
    if state is not None:
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
    # Each rank gets the same rows an epoch (an equal split); the last batch is smaller, as the official
    # DataLoader's, and every rank's is the same size, so shuffle BN and DDP stay in step.
    steps_per_epoch = epoch_steps(config["train_rows"], world, local_batch)
    shard = ray.train.get_dataset_shard("train")
    probe_data = ray.get(config["probe"]) if rank == 0 and config.get("probe") is not None else None
    if probe_data is not None and start_epoch == 0:  # the initial weights: where the curve starts
        _log_probe(logger, model, probe_data, device, step, epoch=-1)

    for epoch in range(start_epoch, cfg.train.epochs):
        model.train()
        loss_sum, t0, seen, n = torch.zeros((), device=device), time.perf_counter(), 0, 0
        batches = (b["image"] for b in device_batches(shard, local_batch, device=device, columns=("image",),
                                                      drop_last=False))
        # The views draw from their own generator (per rank and epoch), so making them one batch
        # ahead (on a side CUDA stream, overlapping the step) leaves every number as it was.
        ahead = ViewsAhead(views, views_generator(cfg.train.seed, rank, epoch), device, cfg.train.views_ahead)
        for i, (images, im_q, im_k) in enumerate(ahead(batches)):
            if cfg.train.lr_schedule == "epoch":  # the official: set once per epoch (1-based), down to 0
                lr = epoch_cosine_lr(cfg.train.lr, epoch + 1, cfg.train.epochs)
            else:
                lr = cosine_lr(cfg.train.lr, epoch + i / steps_per_epoch, cfg.train.epochs, cfg.train.warmup_epochs)
            set_lr(optimizer, lr)
            loss, pos, prob = step_on_views(ddp_model, optimizer, im_q, im_k, device, cfg.train.precision)
            loss_sum += loss
            seen, n, step = seen + images.shape[0] * world, n + 1, step + 1
            if step % cfg.train.log_every_steps == 0 or i == steps_per_epoch - 1:  # .item() waits for the GPU
                rate = seen / max(time.perf_counter() - t0, 1e-9)
                means = all_reduce_mean(torch.stack([loss, pos, prob]).float()).tolist()  # over all ranks
                logger.log_metrics({"loss": means[0], "positive_prob": means[1], "prob": means[2], "lr": lr,
                                    "images_per_sec": rate, "key_similarity": model.key_similarity().item()},
                                   step=step)
        # Every rank's queries count: rank 0 alone sees 1/world of them (5 steps x 16 images in the CPU tests).
        epoch_loss = all_reduce_mean(loss_sum / max(n, 1)).item()
        similarity = model.key_similarity().item()
        metrics = {"epoch": epoch, "loss": epoch_loss, "step": step, "key_similarity": similarity}
        logger.log_metrics({"epoch_loss": epoch_loss, "epoch": epoch}, step=step)
        state = meta = None  # rank 0 attaches the checkpoint on the epochs that save one
        if rank == 0 and checkpoint_due(epoch, cfg.checkpoint.every_epochs, cfg.train.epochs):
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "step": step}
            meta = {"epoch": epoch, "step": step, "loss": epoch_loss, "backbone": cfg.model.backbone,
                    "low_dim": cfg.model.low_dim, "mlflow_run_id": config["mlflow_run_id"],
                    "dataset": config["dataset"], "image_size": cfg.data.image_size}
        probed = ""
        if probe_data is not None and checkpoint_due(epoch, cfg.probe.every_epochs, cfg.train.epochs):
            probed = _log_probe(logger, model, probe_data, device, step, epoch)
        report_epoch(metrics, epoch, state, meta)
        if rank == 0:
            worker_print(f"[pretrain] epoch {epoch + 1}/{cfg.train.epochs}  loss {epoch_loss:.4f}  "
                         f"key similarity {similarity:.2f}{probed}  step {step}")
            if similarity > COLLAPSED_KEY_SIMILARITY:
                worker_print(f"[pretrain] warning: the embeddings are collapsing (mean cosine {similarity:.2f} "
                             f"between queued keys): try a lower train.lr than {cfg.train.lr:g} (the paper's 0.03 "
                             f"is for batch 256; {cfg.train.batch_size} here) or a smaller backbone that can take "
                             f"more steps", warning=True)


def _log_probe(logger: RunLogger, model, data, device: torch.device, step: int, epoch: int) -> str:
    """The landmark probe of the query encoder (`landmarks.probe`) -> MLflow (`probe_iod` or `probe_pck`, and
    the mean shape's, at the step; `probe_epoch` = epoch + 1, 0 for the initial weights); the text it prints."""
    result = probe(model.encoder_q, data, device)
    logger.log_metrics({**result, "probe_epoch": epoch + 1}, step=step)
    name = f"probe_{data.metric}"
    return f"  probe {data.metric.upper()} {result[name]:.2f} (mean shape {result[f'probe_mean_shape_{data.metric}']:.2f})"
