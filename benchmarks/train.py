"""MoCo training-step throughput: a plain PyTorch loop vs the same step inside Ray Train.

    flock /tmp/landmarks-ray.lock python benchmarks/train.py [--backbones resnet18,resnet50,resnet50_half]
        [--image-size 96] [--batch-size 32] [--workers 1,2] [--steps 4] [--views off,on,ahead]
        [--compile off|default|reduce-overhead] [--out train.json] [--mlflow benchmarks] [--quick]

The step is the MoCo step as pretraining runs it: two MoCo views made on the device, then
`landmarks.train.moco_step.step_on_views` (the query/key encoders, InfoNCE, SGD). `--views`
lists the ways to make the views, one row each:

  off    both views are the centre crop: the network step alone
  on     the views made just before each step, on the same stream (the serial step)
  ahead  the next batch's views made while this batch trains (`augment.ViewsAhead`, a side CUDA
         stream one batch ahead): what pretraining runs

The summary's `<backbone>.serial_over_network` (on / off) and `<backbone>.ahead_over_network`
(ahead / off) are the full step's efficiency against the network alone. The step runs in --precision (bf16 on CUDA by default) with channels_last
(moco_step's `autocast` / memory format), the MoCo model built by `prepare_moco` with the
paper's queue (4096) and momentum; `--compile` compiles both encoders (`compile_encoders`, as
`train.compile=true` does in pretraining; the first step, reported apart, pays for it). Inputs
are fixed random uint8 images at the stored size (input x 136/96, as faces are stored), so the
data pipeline (benchmarks/data.py) is not timed.

  plain        the loop in this process (one device; on CPU with all the machine's cores)
  ray          the same loop as a Ray Train TorchTrainer with N workers (N from --workers; one
               GPU each on CUDA, the CPUs split evenly on CPU), batch per worker = --batch-size,
               DDP + shuffle BN as in pretraining; images/s is global (N x batch / step time)

Step time: on CPU the median of the timed steps (each timed alone), so that the steps that
Ray's daemons interrupt on a small machine do not decide the ratio; `mean_images_per_s` is
the plain mean. On CUDA the mean over the timed run (one sync at its end).

ratio = ray (1 worker) / plain (target >= 0.95). FLOPs per image are counted once per backbone
with torch.utils.flop_counter.FlopCounterMode over the network part of a step (query forward +
backward, key forward, logits; not the views), so TFLOP/s = FLOPs per image x images/s. On CUDA
the fraction of the GPU's dense bf16 peak is reported (H100: 989 TFLOP/s; --peak-tflops overrides).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

import torch
import torch.nn.functional as F
from common import bench_parser, finish, parse_ints, ship_by_value

from landmarks.registry import ARCHITECTURES

# Dense bf16 tensor-core peaks (vendor datasheets, SXM parts), TFLOP/s.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
QUEUE = 4096  # MoCo K, paper Sec. 4
VIEW_MODES = ("off", "on", "ahead")


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


class CentreViews(torch.nn.Module):
    """`--views off`: both views are the normalised centre crop (no augmentation work)."""

    def __init__(self, out_size: int):
        super().__init__()
        self.out_size = out_size

    def forward(self, images_bhw3: torch.Tensor, generator: torch.Generator | None = None):
        x = images_bhw3.permute(0, 3, 1, 2).float().div_(255.0)
        top = (x.shape[-1] - self.out_size) // 2
        x = (x[..., top:top + self.out_size, top:top + self.out_size] - 0.5) / 0.25
        return x, x.clone()


def build_step(backbone: str, image_size: int, batch_size: int, views: str, device: torch.device,
               world: int = 1, compile_mode: str = "off") -> tuple[Any, Any, Any, torch.Tensor]:
    """(model, views, optimizer, images) as pretrain_loop builds them; images (B, S, S, 3) uint8."""
    from landmarks.augment import MoCoViews
    from landmarks.config import PretrainConfig
    from landmarks.data.converters.base import face_border, face_store_size
    from landmarks.train.moco_step import compile_encoders, prepare_moco

    cfg = PretrainConfig.model_validate({
        "model": {"backbone": backbone}, "data": {"image_size": image_size},
        "moco": {"queue_size": QUEUE}, "train": {"batch_size": batch_size * world}, "ray": {"num_workers": world}})
    model = prepare_moco(cfg, device)  # as pretraining builds it (cfg.train.compile is off here)
    if compile_mode != "off":
        compile_encoders(model, None if compile_mode == "default" else compile_mode)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=cfg.train.lr,
                                momentum=cfg.train.sgd_momentum, weight_decay=cfg.train.weight_decay)
    stored, border = face_store_size(image_size), face_border(image_size)  # 136 and 20 at 96 px
    augment = (CentreViews(image_size) if views == "off" else
               MoCoViews(image_size, mean=[0.5] * 3, std=[0.25] * 3, border=border)).to(device)
    generator = torch.Generator(device="cpu").manual_seed(0)
    images = torch.randint(0, 256, (batch_size, stored, stored, 3), dtype=torch.uint8, generator=generator)
    return model, augment, optimizer, images.to(device)


def timed_steps(model, views, optimizer, images: torch.Tensor, device: torch.device, steps: int,
                warmup: int, ahead: bool = False, precision: str = "fp32") -> list[float]:
    """Seconds of `steps` MoCo steps after `warmup`, with the views one batch ahead or not: on CPU
    one entry per step, on CUDA one entry for them all (a sync per step would drain the GPU's
    queue between steps)."""
    from landmarks.augment import ViewsAhead
    from landmarks.train.moco_step import step_on_views

    def run(n: int):  # n steps on the same images, as pretraining's loop makes and consumes them
        generator = torch.Generator().manual_seed(0)
        for _, im_q, im_k in ViewsAhead(views, generator, device, ahead)(images for _ in range(n)):
            step_on_views(model, optimizer, im_q, im_k, device, precision)
            yield

    model.train()
    for _ in run(warmup):
        pass
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in run(steps):
            pass
        torch.cuda.synchronize(device)
        return [time.perf_counter() - t0]
    seconds, t0 = [], time.perf_counter()
    for _ in run(steps):  # a step's time includes making the views it hands out next
        seconds.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
    return seconds


def throughput(images_per_step: int, seconds: list[float], steps: int) -> dict[str, float]:
    """images/s and step_ms from `timed_steps`' seconds: on CPU from the median step, so that steps
    that other processes interrupted (Ray's own daemons share this machine's 2 cores with the
    loop's 2 threads) do not decide the figure; on CUDA from the mean over the timed run.
    `mean_images_per_s` is the mean either way."""
    step = statistics.median(seconds) if len(seconds) > 1 else sum(seconds) / steps
    return {"images_per_s": images_per_step / step, "step_ms": 1000 * step,
            "mean_images_per_s": images_per_step * steps / sum(seconds)}


def flops_per_image(backbone: str, image_size: int, batch_size: int, device: torch.device,
                    precision: str = "fp32") -> float:
    """FLOPs of the network part of one step (query fwd+bwd, key fwd, logits) per image."""
    from torch.utils.flop_counter import FlopCounterMode

    from landmarks.precision import autocast

    model, views, _, images = build_step(backbone, image_size, batch_size, "off", device)
    im_q, im_k = views(images)
    if device.type == "cuda":
        im_q, im_k = (v.contiguous(memory_format=torch.channels_last) for v in (im_q, im_k))
    with FlopCounterMode(display=False) as counter:
        with autocast(device, precision):
            logits, labels = model(im_q, im_k)
            loss = F.cross_entropy(logits.float(), labels)
        loss.backward()
    return counter.get_total_flops() / batch_size


def plain(backbone: str, views_mode: str, args, device: torch.device) -> dict[str, Any]:
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    model, views, optimizer, images = build_step(backbone, args.image_size, args.batch_size, views_mode, device,
                                                 compile_mode=args.compile)
    ahead = views_mode == "ahead"
    first_step_s = timed_steps(model, views, optimizer, images, device, 1, 0, ahead, args.precision)[0]  # compiles
    seconds = timed_steps(model, views, optimizer, images, device, args.steps, args.warmup, ahead, args.precision)
    return {**throughput(args.batch_size, seconds, args.steps), "first_step_s": round(first_step_s, 1)}


def _ray_loop(config: dict[str, Any]) -> None:
    """Ray Train worker: the same steps under DDP (prepare_model, as pretrain_loop does)."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(config["threads"])
    torch.manual_seed(ctx.get_world_rank())
    model, views, optimizer, images = build_step(config["backbone"], config["image_size"], config["batch_size"],
                                                 config["views"], device, world=ctx.get_world_size())
    ddp = ray.train.torch.prepare_model(model, move_to_device=False,
                                        parallel_strategy_kwargs={"find_unused_parameters": False})
    seconds = timed_steps(ddp, views, optimizer, images, device, config["steps"], config["warmup"],
                          config["views"] == "ahead", config["precision"])
    # Train V2 keeps only metrics reported with a checkpoint in `Result.metrics`: rank 0 attaches a tiny one.
    checkpoint = None
    if ctx.get_world_rank() == 0:
        directory = tempfile.mkdtemp(prefix="bench-train-ckpt-")
        with open(os.path.join(directory, "timing.json"), "w") as f:
            json.dump({"seconds": seconds}, f)
        checkpoint = ray.train.Checkpoint.from_directory(directory)
    ray.train.report({"seconds": seconds, "threads": torch.get_num_threads()}, checkpoint=checkpoint,
                     delete_local_checkpoint_after_upload=True)


def ray_train(backbone: str, workers: int, views_mode: str, args, device: torch.device) -> dict[str, Any]:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ship_by_value(__name__)
    use_gpu = device.type == "cuda"
    cpus = (os.cpu_count() or 1) / workers if not use_gpu else max(1.0, (os.cpu_count() or 1) // max(workers, 1) - 1)
    resources = {"CPU": cpus, **({"GPU": 1} if use_gpu else {})}
    config = {"backbone": backbone, "image_size": args.image_size, "batch_size": args.batch_size,
              "views": views_mode, "steps": args.steps, "warmup": args.warmup,
              "threads": max(1, args.threads // workers), "precision": args.precision}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as storage:
        t0 = time.perf_counter()
        trainer = TorchTrainer(_ray_loop, train_loop_config=config,
                               scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                                            resources_per_worker=resources),
                               run_config=RunConfig(name=f"bench-{backbone}-{workers}", storage_path=storage))
        result = trainer.fit()
        wall = time.perf_counter() - t0
    seconds = result.metrics["seconds"]  # rank 0's steps (DDP keeps the ranks in step)
    return {**throughput(workers * args.batch_size, seconds, args.steps), "fit_wall_s": round(wall, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--backbones", default=",".join(ARCHITECTURES))
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=None, help="per worker (default: 256 on CUDA, 32 on CPU)")
    parser.add_argument("--workers", type=parse_ints, default=None,
                        help="Ray Train worker counts (default: 1 and every GPU on CUDA; 1,2 on CPU)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 30 on CUDA, 4 on CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10 CUDA, 1 CPU)")
    parser.add_argument("--views", default=None,
                        help="comma list of off (network only), on (serial views), ahead (views one batch ahead, "
                             "as pretraining); default off,on,ahead on CUDA, ahead on CPU. Ray runs use ahead "
                             "(or the last listed)")
    parser.add_argument("--modes", default="plain,ray")
    parser.add_argument("--compile", default="off", choices=("off", "default", "reduce-overhead", "max-autotune-no-cudagraphs"),
                        help="plain mode: torch.compile both encoders with this mode (moco_step.compile_encoders)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="CPU: torch threads of the plain loop, split over Ray workers (default: all CPUs; "
                             "use 1 on a machine others load, where idle OpenMP threads spin against them)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak, TFLOP/s")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                        help="the step's train.precision (default: bf16 on CUDA, fp32 on CPU)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no GPU")
    args.precision = args.precision or ("bf16" if cuda else "fp32")
    if args.quick:
        args.backbones, args.image_size = "resnet18", 64
        args.batch_size, args.steps, args.warmup = args.batch_size or 4, args.steps or 2, args.warmup or 1
        args.workers = args.workers or [1]
    args.batch_size = args.batch_size or (256 if cuda else 32)
    args.steps = args.steps or (30 if cuda else 4)
    args.warmup = args.warmup or (10 if cuda else 1)
    gpus = torch.cuda.device_count() if cuda else 0
    args.workers = args.workers or sorted({1, gpus} if cuda else {1, 2})
    view_modes = [v for v in (args.views or ("off,on,ahead" if cuda else "ahead")).split(",") if v]
    if bad := [v for v in view_modes if v not in VIEW_MODES]:
        parser.error(f"unknown --views {bad}; choose from {', '.join(VIEW_MODES)}")
    ray_views = "ahead" if "ahead" in view_modes else view_modes[-1]
    names = [n for n in args.backbones.split(",") if n]
    modes = [m for m in args.modes.split(",") if m]
    if bad := [n for n in names if n not in ARCHITECTURES] + [m for m in modes if m not in ("plain", "ray")]:
        parser.error(f"unknown backbone/mode {bad}; backbones: {', '.join(ARCHITECTURES)}; modes: plain, ray")
    if QUEUE % (args.batch_size * max(args.workers)):
        parser.error(f"the MoCo queue ({QUEUE}) must be a multiple of the global batch (batch x workers)")
    peak = args.peak_tflops or peak_tflops(device)

    ray_startup = None
    if "ray" in modes:
        from landmarks.cluster import connect

        t0 = time.perf_counter()
        connect()
        ray_startup = round(time.perf_counter() - t0, 2)

    rows: list[dict[str, Any]] = []
    for name in names:
        gflops = flops_per_image(name, args.image_size, min(args.batch_size, 32), device, args.precision) / 1e9
        runs = ([("plain", 1, v) for v in view_modes] if "plain" in modes else []) + \
               ([("ray", n, ray_views) for n in args.workers] if "ray" in modes else [])
        for mode, workers, views_mode in runs:
            result = (plain(name, views_mode, args, device) if mode == "plain" else
                      ray_train(name, workers, views_mode, args, device))
            tflops = gflops * result["images_per_s"] / 1e3
            row = {"backbone": name, "mode": mode, "workers": workers, "views": views_mode, "batch": args.batch_size,
                   "images_per_s": round(result["images_per_s"], 1), "step_ms": round(result["step_ms"], 1),
                   "mean_images_per_s": round(result["mean_images_per_s"], 1),
                   "gflops_per_image": round(gflops, 3), "tflops": round(tflops, 4),
                   "first_step_s": result.get("first_step_s"),
                   "peak_frac": round(tflops / peak, 4) if peak else None, "fit_wall_s": result.get("fit_wall_s")}
            print(row, flush=True)
            rows.append(row)
    summary: dict[str, Any] = {"ray_startup_s": ray_startup}
    for row in rows:
        base = next((r for r in rows if r["backbone"] == row["backbone"] and r["mode"] == "plain"
                     and r["views"] == row["views"]), None)
        if row["mode"] == "ray" and base:
            row["ratio"] = round(row["images_per_s"] / (base["images_per_s"] * row["workers"]), 3)
            summary[f"{row['backbone']}.ray{row['workers']}_over_plain"] = round(row["images_per_s"] / base["images_per_s"], 3)
    for name in names:  # the full step's efficiency: against the network alone
        plain_rate = {r["views"]: r["images_per_s"] for r in rows if r["backbone"] == name and r["mode"] == "plain"}
        if "off" in plain_rate:
            for views_mode, key in (("on", "serial_over_network"), ("ahead", "ahead_over_network")):
                if views_mode in plain_rate:
                    summary[f"{name}.{key}"] = round(plain_rate[views_mode] / plain_rate["off"], 3)
    params = {"image_size": args.image_size, "batch_per_worker": args.batch_size, "steps": args.steps,
              "warmup": args.warmup, "views": view_modes, "compile": args.compile, "threads": None if cuda else args.threads, "device": str(device), "amp": args.precision,
              "channels_last": cuda, "queue": QUEUE, "peak_tflops": peak, "quick": args.quick}
    notes = ["ratio = ray images/s / (plain images/s x workers): 1.0 = perfect (weak) scaling from the plain loop"]
    if not cuda:
        notes.append(f"CPU: {args.precision}; peak_frac needs a GPU (or --peak-tflops)")
    finish(args, "train", rows, params=params, summary=summary, label_keys=("backbone", "mode", "workers", "views"),
           columns=["backbone", "mode", "workers", "views", "batch", "images_per_s", "mean_images_per_s", "step_ms", "ratio", "gflops_per_image",
                    "tflops", "peak_frac", "first_step_s", "fit_wall_s"], notes=notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
