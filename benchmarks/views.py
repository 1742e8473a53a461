"""MoCo view throughput: both augmented views of a batch (landmarks.augment.MoCoViews), per stage.

    python benchmarks/views.py [--batch-size 256] [--image-size 96] [--steps 20]
        [--canvas-steps 64,128,320] [--jpeg-backends torch,kornia] [--out views.json] [--quick]

Input: random uint8 faces at the stored size (input x 136/96); the views are what pretraining
feeds the network each step (2 x batch images). Rows:

  total       views(images) for each JPEG backend (--jpeg-backends) and canvas step (see
              augment/jpeg_noise.py): ms per call and images/s (batch / time)
  stage       one view pass over the 2 x batch images split into its stages (the random draws, the JPEG
              noise, the crop and colour jitter, the lighting), each timed alone, at the default canvas step
  compare     --compare: each batched JPEG backend's views against the PIL backend's (libjpeg, the
              official pixels) for the same random draws, in 8-bit levels: mean and max |difference|
"""

from __future__ import annotations

import sys
import time
from typing import Any

import torch
from common import bench_parser, finish, parse_ints


def _timed(fn, steps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / steps


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--batch-size", type=int, default=None, help="default: 256 on CUDA, 16 on CPU")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--steps", type=int, default=None, help="timed calls (default 20 CUDA, 2 CPU)")
    parser.add_argument("--canvas-steps", type=parse_ints, default=[64, 128, 320])
    parser.add_argument("--jpeg-backends", default=None,
                        help="MoCoViews jpeg_backend values to time (default: torch,kornia on CUDA; pil,torch on CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compare", action="store_true", help="also the batched codecs' distance from libjpeg")
    args = parser.parse_args()
    from landmarks.augment import MoCoViews
    from landmarks.augment import views as views_module
    from landmarks.data.converters.base import face_border, face_store_size

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    batch = args.batch_size or (256 if cuda else 16)
    steps, warmup = args.steps or (20 if cuda else 2), 3 if cuda else 1
    if args.quick:
        batch, steps, warmup, args.canvas_steps = 4, 1, 1, args.canvas_steps[:1]
    stored, border = face_store_size(args.image_size), face_border(args.image_size)  # 136 and 20 at 96 px
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, stored, stored, 3), dtype=torch.uint8, generator=gen).to(device)
    default_step = views_module.CANVAS_STEP
    rows: list[dict[str, Any]] = []
    backends = [b for b in (args.jpeg_backends or ("torch,kornia" if cuda else "pil,torch")).split(",") if b]
    for backend in backends:
        for canvas in args.canvas_steps if backend not in ("pil", "auto") or cuda else args.canvas_steps[:1]:
            views = MoCoViews(args.image_size, mean=[0.5] * 3, std=[0.25] * 3, border=border,
                              jpeg_backend=backend, canvas_step=canvas).to(device)
            seconds = _timed(lambda v=views: v(images, gen), steps, warmup, device)
            rows.append({"row": "total", "stage": "views", "backend": backend, "canvas_step": canvas,
                         "ms": seconds * 1e3, "images_per_s": batch / seconds})
    views = MoCoViews(args.image_size, mean=[0.5] * 3, std=[0.25] * 3, border=border).to(device)  # auto
    x = views_module.to_levels(torch.cat((images, images)))
    draws = views.draw(x.shape[0], x.shape[2], x.shape[3], gen)
    backend = views.backend(device)
    plain = MoCoViews(args.image_size, mean=[0.5] * 3, std=[0.25] * 3, border=border, jpeg=False).to(device)
    pixels = plain._pil_pixels if backend == "pil" else plain._tensor_pixels
    levels = pixels(x, draws)
    stages = {"draw": lambda: views.draw(x.shape[0], x.shape[2], x.shape[3], gen),
              "jpeg": lambda: views_module.jpeg_noise(x, draws.jpeg_z.to(device), draws.jpeg_quality, backend),
              "crop+jitter": lambda: pixels(x, draws),
              "lighting": lambda: views._lighting(levels / 255, draws.alpha)}
    for name, fn in stages.items():
        seconds = _timed(fn, steps, warmup, device)
        rows.append({"row": "stage", "stage": name, "backend": backend, "canvas_step": default_step,
                     "ms": seconds * 1e3, "images_per_s": batch / seconds})
    if args.compare:
        rows += _compare(args.image_size, border, images, device)
    finish(args, "views", rows, params={"batch_size": batch, "image_size": args.image_size, "stored": stored,
                                        "device": str(device), "steps": steps},
           label_keys=("row", "stage", "backend", "canvas_step"))
    return 0


def _compare(image_size: int, border: int, images: torch.Tensor, device: torch.device) -> list[dict[str, Any]]:
    """Views with each batched codec vs the PIL codec's (the official pixels), same draws, in 8-bit levels."""
    from landmarks.augment import MoCoViews

    def views_with(backend: str) -> torch.Tensor:
        v = MoCoViews(image_size, mean=[0.0] * 3, std=[1 / 255] * 3, border=border, lighting_std=0.0,
                      jpeg_backend=backend).to(device)  # std 1/255, no lighting: the views are 8-bit levels
        return torch.cat(v(images, torch.Generator().manual_seed(0)))

    reference = views_with("pil")
    rows = []
    for backend in ("torch", "kornia"):
        diff = (views_with(backend) - reference).abs()
        rows.append({"row": "compare", "stage": "views", "backend": backend, "canvas_step": 0,
                     "mean_levels": diff.mean().item(), "max_levels": diff.max().item(),
                     "share_changed": (diff > 0.5).float().mean().item()})
    return rows


if __name__ == "__main__":
    sys.exit(main())
