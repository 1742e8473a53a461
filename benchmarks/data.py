"""Images/s of the Ray Data Parquet pipeline vs a torch DataLoader over the same images as JPEG files.

    flock /tmp/landmarks-ray.lock python benchmarks/data.py [--cpus 1,2] [--num-images 9600] [--rows-per-shard 1000]
        [--view-images 512] [--batch-size 64] [--out data.json] [--mlflow benchmarks] [--quick]

Input: a synthetic-faces dataset ingested once under runs/bench/ (136 px JPEG q95, as CelebA is
stored for 96 px training); the DataLoader reads the same JPEG bytes, exported to one file per
image. For each CPU count N (1, 2, 4, ... up to the machine's) and each workload, the pipelines
run one after the other, each with N CPU workers:

  workload "decode"        uint8 (B, 136, 136, 3) batches, what a GPU worker gets (views run there)
  workload "decode+views"  two MoCo views (B, 3, 96, 96) per image (augment.MoCoViews: JPEG noise,
                           random resized crop, colour jitter, PCA lighting, normalise, border crop),
                           computed in the N workers, as a CPU-only training run needs them

  dataloader   torch DataLoader(num_workers=N): PIL decode per file; views in a collate_fn
  ray          landmarks.data.read_dataset(images_only=True) + device_batches, what pretraining
               reads; views as a map_batches stage; Ray Data limited to N CPUs (ExecutionResources)
  ray-rows     the same reading whole rows (ids, keypoints, masks; PIL decode), as fine-tuning does

Start-up (iterator created -> first batch: DataLoader worker start-up, Ray Data planning and task
start-up) is reported apart from the steady state (images/s after --warmup batches). Ray itself
is started once, before everything, and its start-up is reported on its own. ratio = ray / dataloader.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import DATA_ROOT, Stopwatch, bench_parser, finish, parse_ints, powers_of_two, ship_by_value

PIPELINES = ("dataloader", "ray", "ray-rows")
WORKLOADS = ("decode", "decode+views")


# ----------------------------------------------------------------------------- inputs


def ensure_dataset(num_images: int, rows_per_shard: int, root: Path = DATA_ROOT) -> Path:
    """A synthetic-faces dataset under runs/bench/ (ingested once, then reused)."""
    from landmarks.data import ingest

    path = root / f"synthetic-faces-n{num_images}-r{rows_per_shard}"
    if not (path / "dataset.json").is_file():
        ingest("synthetic-faces", None, str(path), options={"num_images": num_images, "seed": 0},
               rows_per_shard=rows_per_shard, progress=False)
    return path


def export_jpegs(path: Path, split: str) -> list[Path]:
    """The split's stored image bytes, one .jpg per row in ingest order (written once)."""
    import pyarrow.parquet as pq

    from landmarks.data import load_manifest

    manifest = load_manifest(str(path))
    out = path / "_jpeg" / split
    done = out / "_complete"
    if not done.is_file():
        out.mkdir(parents=True, exist_ok=True)
        i = 0
        for shard in manifest.split(split).shards:
            for data in pq.read_table(path / shard.path, columns=["image"]).column("image").to_pylist():
                (out / f"{i:06d}.jpg").write_bytes(data)
                i += 1
        done.write_text(str(i))
    return sorted(out.glob("*.jpg"))


def views_module(manifest: Any):
    """The paper's MoCo augmentation for this dataset's geometry (as pretrain_loop builds it)."""
    from landmarks.augment import MoCoViews
    from landmarks.data.normalization import input_stats

    mean, std, _ = input_stats(manifest)
    return MoCoViews(manifest.input_size, mean=mean, std=std, border=manifest.border)


# ----------------------------------------------------------------------------- torch DataLoader


class JpegFiles(torch.utils.data.Dataset):
    """One image per file -> (H, W, 3) uint8 tensor.

    decoder "pil": `landmarks.data.shards.decode_image`, the reader's own PIL decode;
    "torchvision": torchvision.io.decode_jpeg (libjpeg-turbo, the same pixels, less overhead).
    """

    def __init__(self, files: list[Path], decoder: str = "pil"):
        self.files, self.decoder = files, decoder

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.decoder == "torchvision":
            from torchvision.io import ImageReadMode, decode_jpeg, read_file

            return decode_jpeg(read_file(str(self.files[i])), mode=ImageReadMode.RGB).permute(1, 2, 0)
        from landmarks.data.shards import decode_image

        return torch.from_numpy(decode_image(self.files[i].read_bytes()))


class Collate:
    """Stack the images; with `views`, return the two MoCo views computed in the worker."""

    def __init__(self, views: torch.nn.Module | None):
        self.views = views

    def __call__(self, images: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        batch = torch.stack(images)  # (B, H, W, 3) uint8
        if self.views is None:
            return {"image": batch}
        view_q, view_k = self.views(batch)
        return {"view_q": view_q, "view_k": view_k}


def dataloader_batches(files: list[Path], batch_size: int, workers: int, views: torch.nn.Module | None,
                       decoder: str = "pil") -> Iterator[dict[str, torch.Tensor]]:
    loader = torch.utils.data.DataLoader(JpegFiles(files, decoder), batch_size=batch_size, num_workers=workers,
                                         collate_fn=Collate(views), drop_last=True, shuffle=False)
    yield from loader


# ----------------------------------------------------------------------------- Ray Data


def _views_udf(batch: dict[str, np.ndarray], input_size: int, mean: list[float], std: list[float],
               border: int) -> dict[str, np.ndarray]:
    """map_batches stage: decoded rows -> {"view_q", "view_k"} (B, 3, out, out) float32."""
    from landmarks.augment import MoCoViews

    views = MoCoViews(input_size, mean=mean, std=std, border=border)
    images = np.require(batch["image"], requirements="W")  # Arrow hands read-only arrays
    view_q, view_k = views(torch.from_numpy(images))
    return {"view_q": view_q.contiguous().numpy(), "view_k": view_k.contiguous().numpy()}


def with_views(ds: Any, manifest: Any, batch_size: int) -> Any:
    return ds.map_batches(_views_udf, batch_format="numpy", batch_size=batch_size, zero_copy_batch=True,
                          fn_kwargs={"input_size": manifest.input_size, "mean": list(manifest.mean),
                                         "std": list(manifest.std), "border": manifest.border})


def ray_batches(pipeline: str, path: Path, manifest: Any, batch_size: int, workers: int, limit: int | None,
                views: bool) -> Iterator[dict[str, torch.Tensor]]:
    from ray.data import DataContext, ExecutionResources

    from landmarks.data import device_batches, read_dataset

    ship_by_value(__name__)
    DataContext.get_current().execution_options.resource_limits = ExecutionResources(cpu=workers)
    ds = read_dataset(str(path), "train", verify=False, images_only=pipeline == "ray")
    if limit:
        ds = ds.limit(limit)
    columns = ("image",)
    if views:
        # The reader yields one block per shard (--rows-per-shard rows): cut it into batch-sized blocks
        # so that the views stage runs as many tasks over the CPUs (one shard-sized task is one burst).
        ds = ds.repartition(target_num_rows_per_block=batch_size)
        ds, columns = with_views(ds, manifest, batch_size), ("view_q", "view_k")
    yield from device_batches(ds, batch_size, device="cpu", columns=columns)


# ----------------------------------------------------------------------------- measuring


def measure(batches: Iterator[dict[str, torch.Tensor]], warmup: int) -> dict[str, Any]:
    """Start-up, steady-state and end-to-end images/s of one pass over `batches`.

    A pipeline that delivers (almost) everything in one burst at the end has no steady state:
    its steady rate is left out (None) when the batches after warm-up arrive within the last
    10% of the run; the end-to-end rate (images / total time, start-up included) is always there.
    """
    watch = Stopwatch()
    for batch in batches:
        watch.tick(next(iter(batch.values())).shape[0])
    total = watch.stamps[-1] - watch.t0
    window = watch.stamps[-1] - watch.stamps[min(warmup, len(watch.stamps)) - 1]
    steady = watch.rate(warmup) if len(watch.stamps) > warmup + 1 and window >= 0.1 * total else None
    return {"images": watch.total, "startup_s": round(watch.startup_s, 3),
            "images_per_s": None if steady is None else round(steady, 1),
            "e2e_images_per_s": round(watch.total / total, 1), "total_s": round(total, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--cpus", type=parse_ints, default=None, help="CPU worker counts (default 1,2,4..all)")
    parser.add_argument("--num-images", type=int, default=9600, help="images in the generated dataset")
    parser.add_argument("--rows-per-shard", type=int, default=1000, help="as ingest writes by default")
    parser.add_argument("--view-images", type=int, default=512, help="images per decode+views run")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=3, help="batches before the steady-state clock starts")
    parser.add_argument("--pipelines", default=",".join(PIPELINES))
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    args = parser.parse_args(argv)
    if args.quick:
        args.num_images, args.rows_per_shard, args.view_images, args.batch_size = 200, 40, 48, 8
        args.cpus, args.warmup = args.cpus or [1], 1
    cpus = args.cpus or powers_of_two(os.cpu_count() or 1)
    pipelines = [p for p in args.pipelines.split(",") if p]
    workloads = [w for w in args.workloads.split(",") if w]
    bad = [p for p in pipelines if p not in PIPELINES] + [w for w in workloads if w not in WORKLOADS]
    if bad:
        parser.error(f"unknown pipeline/workload {bad}; valid: {PIPELINES} / {WORKLOADS}")
    if max(cpus) > (os.cpu_count() or 1):
        parser.error(f"--cpus {max(cpus)} is more than this machine's {os.cpu_count()} CPUs")

    from landmarks.cluster import connect
    from landmarks.data import load_manifest

    t0 = time.perf_counter()
    connect(num_cpus=os.cpu_count())
    ray_startup = time.perf_counter() - t0
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    path = ensure_dataset(args.num_images, args.rows_per_shard)
    manifest = load_manifest(str(path))
    files = export_jpegs(path, "train")
    print(f"dataset {path}: {len(files)} train images of {manifest.stored_size} px; Ray up in {ray_startup:.1f} s",
          flush=True)

    rows: list[dict[str, Any]] = []
    for workload in workloads:
        views = workload == "decode+views"
        limit = args.view_images if views else None
        for n in cpus:
            for pipeline in pipelines:
                if pipeline == "dataloader":
                    it = dataloader_batches(files[:limit] if limit else files, args.batch_size, n,
                                            views_module(manifest) if views else None)
                else:
                    it = ray_batches(pipeline, path, manifest, args.batch_size, n, limit, views)
                row = {"workload": workload, "pipeline": pipeline, "cpus": n, **measure(it, args.warmup)}
                print(row, flush=True)
                rows.append(row)

    summary: dict[str, Any] = {"ray_startup_s": round(ray_startup, 2)}
    for row in rows:
        base = next((r for r in rows if r["pipeline"] == "dataloader" and r["workload"] == row["workload"]
                     and r["cpus"] == row["cpus"]), None)
        if row["pipeline"] == "dataloader" or base is None:
            continue
        label = f"{row['pipeline']}.{row['workload']}.cpus{row['cpus']}"
        if row["images_per_s"] and base["images_per_s"]:
            row["ratio"] = round(row["images_per_s"] / base["images_per_s"], 3)
            summary[f"ratio.{label}"] = row["ratio"]
        row["ratio_e2e"] = round(row["e2e_images_per_s"] / base["e2e_images_per_s"], 3)
        summary[f"ratio_e2e.{label}"] = row["ratio_e2e"]
    params = {"num_images": args.num_images, "rows_per_shard": args.rows_per_shard, "view_images": args.view_images,
              "batch_size": args.batch_size, "warmup_batches": args.warmup, "cpus": cpus, "quick": args.quick,
              "stored_size": manifest.stored_size, "input_size": manifest.input_size}
    finish(args, "data", rows, params=params, summary=summary, label_keys=("workload", "pipeline", "cpus"),
           columns=["workload", "pipeline", "cpus", "images", "startup_s", "images_per_s", "ratio",
                    "e2e_images_per_s", "ratio_e2e", "total_s"],
           notes=[("images_per_s: steady state after the warm-up batches ('-': no steady state, the images "
                  "came in one burst at the end); ratio = ray / dataloader at the same CPU count")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
