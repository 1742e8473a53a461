"""MoCo pretraining in one process (no Ray), the landmark probe every N steps: what a recipe buys per step.

    python benchmarks/moco_curve.py --data runs/demo/data/synthetic-faces --image-size 48 --steps 2500 \\
        --every 500 --temperature 0.2 --crop-min-scale 0.2 --momentum 0.99 --queue-size 1024 \\
        [--no-jpeg] [--precision bf16] [--save-dir DIR --save-at 1000,2500]

The same MoCo step as pretraining (`train.moco_step.train_step`: views, both encoders, the queue),
SGD with momentum 0.9 and weight decay 1e-4 on a per-epoch cosine of `--lr`, batch `--batch-size`, one
core. Every `--every` steps the probe of the pretraining job (`landmarks.probe`, a ridge read-out of
the pooled stage outputs on `--probe-images` annotated training rows, scored on validation) reads the
query encoder; the rows give the probe's IOD (%) and the mean loss since the last row. `--save-at`
writes the backbone at those steps (a `backbone.source` path for the regress / match jobs).
docs/demo_study.md, "the pretraining", is made of these curves.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_parser, finish, parse_ints

from landmarks.augment import MoCoViews
from landmarks.config import PretrainConfig
from landmarks.data.manifest import Manifest
from landmarks.data.normalization import input_stats
from landmarks.data.reader import load_split
from landmarks.models.formats import save_backbone
from landmarks.probe import load_probe_data, probe
from landmarks.schedules import cosine_lr, set_lr
from landmarks.train.moco_step import build_moco, train_step


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--data", required=True, help="an ingested synthetic-faces dataset")
    parser.add_argument("--image-size", type=int, default=48)
    parser.add_argument("--backbone", default="resnet18_quarter")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.03)
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--crop-min-scale", type=float, default=0.2)
    parser.add_argument("--momentum", type=float, default=0.99)
    parser.add_argument("--queue-size", type=int, default=1024)
    parser.add_argument("--no-jpeg", action="store_true", help="views without the JPEG noise")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--probe-images", type=int, default=512)
    parser.add_argument("--save-dir", help="with --save-at: backbones go to DIR/step_<N>")
    parser.add_argument("--save-at", type=parse_ints, default=[])
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.every, args.batch_size, args.queue_size, args.probe_images = 4, 2, 16, 64, 32
    torch.set_num_threads(1)
    torch.manual_seed(0)
    manifest = Manifest.load(args.data)
    mean, std, _ = input_stats(manifest)
    border = round(manifest.border * args.image_size / manifest.input_size)
    images = load_split(args.data, "train", args.image_size, stored=True)["image"]
    probe_data = load_probe_data(args.data, "train", "val", images=args.probe_images, image_size=args.image_size)
    cfg = PretrainConfig.model_validate({
        "model": {"backbone": args.backbone}, "data": {"image_size": args.image_size},
        "train": {"batch_size": args.batch_size},
        "moco": {"queue_size": args.queue_size, "momentum": args.momentum, "temperature": args.temperature,
                 "crop_min_scale": args.crop_min_scale, "jpeg": not args.no_jpeg}})
    model = build_moco(cfg)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    views = MoCoViews(args.image_size, mean=mean, std=std, border=border, crop_min_scale=args.crop_min_scale,
                      jpeg=not args.no_jpeg)
    device, gen, rng = torch.device("cpu"), torch.Generator().manual_seed(0), np.random.default_rng(0)
    per_epoch = len(images) // args.batch_size
    rows = [{"step": 0, "probe_iod": round(probe(model.encoder_q, probe_data, device)["probe_iod"], 2)}]
    losses, step, started = [], 0, time.perf_counter()
    while step < args.steps:
        order = rng.permutation(len(images))
        for i in range(per_epoch):
            set_lr(optimizer, cosine_lr(args.lr, step / per_epoch, args.steps / per_epoch))
            batch = torch.from_numpy(images[order[i * args.batch_size:(i + 1) * args.batch_size]])
            losses.append(train_step(model, views, optimizer, batch, device, gen, args.precision)[0].item())
            step += 1
            if step in args.save_at and args.save_dir:
                save_backbone(model.encoder_q.eval(), {"backbone": args.backbone}, Path(args.save_dir) / f"step_{step}")
                model.encoder_q.train()
            if step % args.every == 0 or step == args.steps:
                rows.append({"step": step, "probe_iod": round(probe(model.encoder_q, probe_data, device)["probe_iod"], 2),
                             "loss": round(float(np.mean(losses[-args.every:])), 3),
                             "seconds": round(time.perf_counter() - started, 1)})
                print(rows[-1], flush=True)
            if step >= args.steps:
                break
    finish(args, "moco_curve", rows, label_keys=("step",), params={
        k: getattr(args, k) for k in ("data", "image_size", "backbone", "steps", "batch_size", "lr", "temperature",
                                      "crop_min_scale", "momentum", "queue_size", "no_jpeg", "precision")})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
