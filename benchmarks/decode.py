"""Decode rate of stored face images: PNG (ingest's lossless default) and JPEG (--image-format jpeg) per
CPU core (PIL, torchvision), and JPEG on the GPU (nvJPEG); bytes per image and pixel loss of each.

    python benchmarks/decode.py [--num-images 2048] [--image-size 96] [--batch-size 1024]
        [--target 20000] [--out decode.json] [--mlflow benchmarks] [--quick]

Input: synthetic faces rendered at the stored size (input x 136/96) and encoded as ingest stores
them (PNG, or JPEG quality 95), held in memory as the bytes a Parquet image column holds. Rows:

  pil / png          PIL decode of PNG, one image at a time (the reader's decoder for PNG), one thread
  pil / jpeg         PIL decode of JPEG, one thread
  torchvision / jpeg torchvision.io.decode_jpeg on a list of byte tensors (the reader's "torchvision"
                     decoder, libjpeg-turbo), one thread
  cuda / jpeg        torchvision.io.decode_jpeg(..., device="cuda") on batches of --batch-size (nvJPEG),
                     from the bytes in host memory, the images stacked (B, H, W, 3) as the views take them

Each row also gives its pixels' largest and mean difference from the rendered image on the first 64
images: what storing in that format (and decoding with that decoder) changes in the training inputs
(PNG: nothing; JPEG q95: its loss; nvJPEG's IDCT is not libjpeg-turbo's).

images/s per core for the CPU rows (one thread each, so the figure scales with the cores a node
gives its readers); the summary's `cpu_cores_per_gpu` is --target / the best CPU rate: how many
cores one GPU's pretraining at --target images/s needs for decoding alone.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np
import torch
from common import bench_parser, finish


def rendered_faces(n: int, image_size: int) -> list[np.ndarray]:
    """`n` synthetic faces at the stored size, (S, S, 3) uint8."""
    from landmarks.data.converters.base import face_border, face_store_size
    from landmarks.data.converters.synthetic import LEVELS
    from landmarks.data.converters.synthetic_render import render_face

    stored, border = face_store_size(image_size), face_border(image_size)
    return [render_face(stored, border, 0, i % 97, i, LEVELS["normal"])[0] for i in range(n)]


def encode(images: list[np.ndarray], fmt: str) -> list[bytes]:
    """As ingest stores them (`data.shards.encode_image`): "png" or "jpeg" (quality 95)."""
    from landmarks.data.shards import encode_image

    return [encode_image(image, fmt) for image in images]


def decode_pil(data: list[bytes]) -> list[np.ndarray]:
    from landmarks.data.shards import decode_image

    return [decode_image(b) for b in data]


def decode_torchvision(data: list[torch.Tensor], device: str = "cpu") -> torch.Tensor:
    """CPU byte tensors -> (B, H, W, 3) uint8 on `device` (decode_jpeg reads the bytes from host
    memory whatever the device; on CUDA nvJPEG decodes the list as one batch)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    return torch.stack(images).permute(0, 2, 3, 1)


def _rate(fn, images: int, repeats: int, cuda: bool = False) -> float:
    """images/s of `fn` (which decodes `images` images), best of `repeats` after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return images / best


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--num-images", type=int, default=2048)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=1024, help="GPU decode batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--target", type=float, default=20000.0, help="images/s one GPU trains at")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.quick:
        args.num_images, args.batch_size, args.repeats = 32, 16, 1
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no GPU")

    rendered = rendered_faces(args.num_images, args.image_size)
    data = {fmt: encode(rendered, fmt) for fmt in ("png", "jpeg")}
    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in data["jpeg"]]
    shape = rendered[0].shape
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # per core
    n = args.num_images
    rows: list[dict[str, Any]] = [
        {"decoder": "pil", "format": "png", "device": "cpu",
         "images_per_s": _rate(lambda: decode_pil(data["png"]), n, args.repeats)},
        {"decoder": "pil", "format": "jpeg", "device": "cpu",
         "images_per_s": _rate(lambda: decode_pil(data["jpeg"]), n, args.repeats)},
        {"decoder": "torchvision", "format": "jpeg", "device": "cpu",
         "images_per_s": _rate(lambda: decode_torchvision(tensors), n, args.repeats)},
    ]
    torch.set_num_threads(threads)
    for row in rows:
        row["per"] = "core"
    if cuda:
        batches = [tensors[i:i + args.batch_size] for i in range(0, len(tensors), args.batch_size)]
        decoded = sum(len(b) for b in batches)
        rate = _rate(lambda: [decode_torchvision(b, args.device) for b in batches], decoded, args.repeats, cuda=True)
        rows.append({"decoder": "cuda", "format": "jpeg", "device": torch.cuda.get_device_name(), "per": "gpu",
                     "images_per_s": rate})
    source = torch.from_numpy(np.stack(rendered[:64])).int()  # the rendered pixels: what storage should keep
    for row in rows:
        if row["decoder"] == "pil":
            pixels = torch.from_numpy(np.stack(decode_pil(data[row["format"]][:64]))).int()
        else:
            pixels = decode_torchvision(tensors[:64], "cuda" if row["decoder"] == "cuda" else "cpu").cpu().int()
        row["bytes_per_image"] = round(sum(map(len, data[row["format"]])) / n)
        row["max_abs_diff_vs_source"] = int((pixels - source).abs().max())
        row["mean_abs_diff_vs_source"] = round(float((pixels - source).abs().float().mean()), 4)
        row["images_per_s"] = round(row["images_per_s"], 1)
    best_cpu = max(r["images_per_s"] for r in rows if r["device"] == "cpu")
    summary: dict[str, Any] = {"best_cpu_images_per_core_s": best_cpu,
                               "cpu_cores_per_gpu": round(args.target / best_cpu, 1)}
    if cuda:
        gpu = rows[-1]["images_per_s"]
        summary["gpu_decode_images_per_s"] = gpu
        summary["gpu_decode_ms_per_target_s"] = round(1000 * args.target / gpu, 1)  # GPU ms spent per second of training
    summary["png_cpu_cores_per_gpu"] = round(args.target / rows[0]["images_per_s"], 1)
    params = {"num_images": n, "stored_shape": list(shape), "jpeg_quality": 95, "batch_size": args.batch_size,
              "target_images_per_s": args.target, "quick": args.quick}
    finish(args, "decode", rows, params=params, summary=summary, label_keys=("decoder", "format"),
           columns=["decoder", "format", "device", "per", "images_per_s", "bytes_per_image",
                    "max_abs_diff_vs_source", "mean_abs_diff_vs_source"],
           notes=[f"cpu_cores_per_gpu = {args.target:.0f} images/s / the best CPU decoder's rate per core"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
