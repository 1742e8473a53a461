"""JPEG decode rate: per CPU core (PIL, torchvision) and on the GPU (nvJPEG), for stored face images.

    python benchmarks/decode.py [--num-images 2048] [--image-size 96] [--batch-size 1024]
        [--target 20000] [--out decode.json] [--mlflow benchmarks] [--quick]

Input: synthetic faces rendered at the stored size (input x 136/96) and encoded as ingest stores
them (JPEG quality 95), held in memory as the bytes a Parquet image column holds. Rows:

  pil          PIL decode, one image at a time (the reader's default decoder), one thread
  torchvision  torchvision.io.decode_jpeg on a list of byte tensors (the reader's "torchvision"
               decoder, libjpeg-turbo), one thread
  cuda         torchvision.io.decode_jpeg(..., device="cuda") on batches of --batch-size (nvJPEG),
               from the bytes in host memory, the images stacked (B, H, W, 3) as the views take them

Each row also gives its pixels' largest and mean difference from PIL's on the first 64 images
(nvJPEG's IDCT is not libjpeg-turbo's: a GPU decode changes the training inputs slightly).

images/s per core for the CPU rows (one thread each, so the figure scales with the cores a node
gives its readers); the summary's `cpu_cores_per_gpu` is --target / the best CPU rate: how many
cores one GPU's pretraining at --target images/s needs for decoding alone.
"""

from __future__ import annotations

import io
import sys
import time
from typing import Any

import numpy as np
import torch
from common import bench_parser, finish
from PIL import Image


def encoded_faces(n: int, image_size: int, quality: int = 95) -> list[bytes]:
    """`n` synthetic faces at the stored size, JPEG-encoded as ingest stores them."""
    from landmarks.data.converters.base import face_border, face_store_size
    from landmarks.data.converters.synthetic import LEVELS
    from landmarks.data.converters.synthetic_render import render_face

    stored, border = face_store_size(image_size), face_border(image_size)
    out = []
    for i in range(n):
        image, _, _ = render_face(stored, border, 0, i % 97, i, LEVELS["normal"])
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        out.append(buffer.getvalue())
    return out


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

    data = encoded_faces(args.num_images, args.image_size)
    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in data]
    shape = decode_pil(data[:1])[0].shape
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # per core
    rows: list[dict[str, Any]] = [
        {"decoder": "pil", "device": "cpu", "images_per_s": _rate(lambda: decode_pil(data), len(data), args.repeats)},
        {"decoder": "torchvision", "device": "cpu",
         "images_per_s": _rate(lambda: decode_torchvision(tensors), len(data), args.repeats)},
    ]
    torch.set_num_threads(threads)
    for row in rows:
        row["per"] = "core"
    if cuda:
        batches = [tensors[i:i + args.batch_size] for i in range(0, len(tensors), args.batch_size)]
        decoded = sum(len(b) for b in batches)
        rate = _rate(lambda: [decode_torchvision(b, args.device) for b in batches], decoded, args.repeats, cuda=True)
        rows.append({"decoder": "cuda", "device": torch.cuda.get_device_name(), "per": "gpu", "images_per_s": rate})
    reference = torch.from_numpy(np.stack(decode_pil(data[:64]))).int()  # pixels against PIL's
    for row in rows:
        device = "cuda" if row["decoder"] == "cuda" else "cpu"
        pixels = reference if row["decoder"] == "pil" else decode_torchvision(tensors[:64], device).cpu().int()
        row["max_abs_diff_vs_pil"] = int((pixels - reference).abs().max())
        row["mean_abs_diff_vs_pil"] = round(float((pixels - reference).abs().float().mean()), 4)
        row["images_per_s"] = round(row["images_per_s"], 1)
    best_cpu = max(r["images_per_s"] for r in rows if r["device"] == "cpu")
    summary: dict[str, Any] = {"best_cpu_images_per_core_s": best_cpu,
                               "cpu_cores_per_gpu": round(args.target / best_cpu, 1)}
    if cuda:
        gpu = rows[-1]["images_per_s"]
        summary["gpu_decode_images_per_s"] = gpu
        summary["gpu_decode_ms_per_target_s"] = round(1000 * args.target / gpu, 1)  # GPU ms spent per second of training
    params = {"num_images": len(data), "stored_shape": list(shape), "jpeg_quality": 95,
              "mean_bytes": round(sum(map(len, data)) / len(data)), "batch_size": args.batch_size,
              "target_images_per_s": args.target, "quick": args.quick}
    finish(args, "decode", rows, params=params, summary=summary, label_keys=("decoder",),
           columns=["decoder", "device", "per", "images_per_s", "max_abs_diff_vs_pil", "mean_abs_diff_vs_pil"],
           notes=[f"cpu_cores_per_gpu = {args.target:.0f} images/s / the best CPU decoder's rate per core"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
