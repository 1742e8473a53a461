"""Trials per hour of a landmark-regression grid with and without the feature cache.

    python benchmarks/sweep.py [--num-images 600] [--lrs 0.001,0.003] [--repeats 2] [--epochs 10]
        [--backbone resnet18] [--threads 1] [--runner job|tune] [--out sweep.json] [--mlflow EXP] [--quick]
    flock /tmp/landmarks-ray.lock python benchmarks/sweep.py --runner tune     # the Ray Tune sweep
    python benchmarks/sweep.py --bound resnet18@64,resnet50@96 [--threads 1]  # the cache's ceiling

The grid is train.lr x repeat over jobs/configs/regress_synthetic_cpu.yaml (ResNet18 by default,
hypercolumn, random init, full annotations: no TPS augmentation, so the cache applies) on a
synthetic-faces dataset generated once under runs/bench/. It runs twice:

  cache     features.enabled=true with an empty features.dir: the first trial computes the
            backbone's stage outputs of the train and test splits once (landmarks.features);
            every trial then trains its regressor on them
  no-cache  features.enabled=false: every trial runs every image through the backbone every epoch
  cache-interpolate (optional) "cache" with the regressor's resize done by F.interpolate, as
            before linear_over_blocks used two matrix products (patched in this process, job runner)

  --runner job   each trial is `landmarks.evaluate.regress.run_regress(cfg, ...)` called in this
                 process, one after the other: what a Tune trial runs (landmarks.sweep.run_trial),
                 MLflow run included (a throw-away local store), without Ray
  --runner tune  the whole grid through `landmarks.sweep.run_sweep` (Ray Tune; trials as
                 resources allow, one CPU each); starts Ray

trials/hour = trials x 3600 / wall time of the grid (the cache build included in "cache"); the
cache's first trial and the mean of the others are reported too. speedup = cache / no-cache.

--bound BACKBONE@SIZE,...  instead of the grid: per batch of 32, the backbone's forward (what the
cache saves) and the regressor head's forward and forward + backward (what a cached trial still
runs), each the median of --bound-repeats calls. Their ratios are the most any feature cache can
give: (backbone + head step) / head step for a trial that trains, (backbone + head forward) /
head forward for one that only evaluates (a small annotation budget, where the test split rules).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from common import DATA_ROOT, ROOT, bench_parser, finish, parse_ints

PRESET = ROOT / "jobs" / "configs" / "regress_synthetic_cpu.yaml"


def ensure_dataset(num_images: int, image_size: int) -> Path:
    """synthetic-faces for input `image_size`, ingested once under runs/bench/ (starts Ray the first time)."""
    from landmarks.data import ingest

    path = DATA_ROOT / f"synthetic-faces-n{num_images}-px{image_size}"
    if not (path / "dataset.json").is_file():
        ingest("synthetic-faces", None, str(path), image_size=image_size,
               options={"num_images": num_images, "seed": 0}, progress=False)
    return path


def grid_points(lrs: list[float], repeats: int) -> list[dict[str, Any]]:
    return [{"train.lr": lr, "repeat": r} for lr in lrs for r in range(repeats)]


def job_overrides(data: Path, cache: bool, cache_dir: str, epochs: int, image_size: int,
                  backbone: str = "resnet18") -> dict[str, Any]:
    return {"data.path": str(data), "data.image_size": image_size, "train.epochs": epochs, "model.backbone": backbone,
            "features.enabled": cache, "features.dir": cache_dir if cache else "",
            "mlflow.experiment": "bench-sweep"}


def interpolate_linear_over_blocks(blocks_bchw, weight, bias, size):
    """`landmarks.models.representation.linear_over_blocks` as it was before: each block's (B, O, h, w)
    conv output resized by F.interpolate rather than two matrix products (the same numbers)."""
    out, start = None, 0
    for block in blocks_bchw:
        c = block.shape[1]
        y = F.conv2d(block, weight[:, start:start + c])
        if tuple(y.shape[-2:]) != tuple(size):
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        out = y if out is None else out + y
        start += c
    return out if bias is None else out + bias.view(1, -1, 1, 1)


def run_jobs(points: list[dict[str, Any]], overrides: dict[str, Any], interpolate_resize: bool = False,
             ) -> dict[str, Any]:
    """Every grid point as `run_regress` in this process; per-trial seconds and metrics."""
    from landmarks.cli import JobArgs
    from landmarks.config import RegressConfig, load_config, with_overrides
    from landmarks.evaluate import regress
    from landmarks.models import representation as rep_module

    base = with_overrides(load_config(RegressConfig, PRESET), overrides)
    original = rep_module.linear_over_blocks  # what regress's head (landmarks_from_blocks) calls
    if interpolate_resize:
        rep_module.linear_over_blocks = interpolate_linear_over_blocks
    os.environ["LANDMARKS_IN_PROCESS"] = "1"  # evaluate here, as inside a Tune trial, not as a Ray task
    seconds, iods = [], []
    t0 = time.perf_counter()
    try:
        for point in points:
            cfg = with_overrides(base, {**point, "mlflow.run_name": f"bench-{point['train.lr']}-{point['repeat']}"})
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):  # the job's progress lines and MLflow links
                metrics = regress.run_regress(cfg, JobArgs(None, None, False))
            seconds.append(time.perf_counter() - start)
            iods.append(metrics["iod"])
    finally:
        rep_module.linear_over_blocks = original
    return {"wall_s": time.perf_counter() - t0, "trial_s": seconds, "iod": iods}


def run_tune(points: list[dict[str, Any]], overrides: dict[str, Any], lrs: list[float], repeats: int,
             storage: str) -> dict[str, Any]:
    """The grid through landmarks.sweep (Ray Tune), timed end to end."""
    from landmarks.cli import JobArgs
    from landmarks.sweep import SweepConfig, run_sweep

    cfg = SweepConfig.model_validate({
        "job": "regress", "base_config": str(PRESET), "overrides": overrides,
        "grid": {"train.lr": lrs, "repeat": list(range(repeats))}, "storage_path": storage,
        "name": f"bench-{'cache' if overrides['features.enabled'] else 'nocache'}", "resume": False,
        "mlflow": {"experiment": "bench-sweep"}, "resources_per_trial": {"cpu": 1}})
    t0 = time.perf_counter()
    metrics = run_sweep(cfg, JobArgs(None, None, False))
    return {"wall_s": time.perf_counter() - t0, "trial_s": [], "iod": [], "sweep_metrics": metrics}


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(sorted(times)[len(times) // 2] * 1000, 1)


def cache_bound(backbone: str, image_size: int, batch_size: int, repeats: int) -> dict[str, Any]:
    """Per-batch cost of what the cache saves (backbone forward) and what it leaves (the head)."""
    from landmarks.models import LandmarkRegressor, build_backbone
    from landmarks.models.representation import landmarks_from_blocks

    net = build_backbone(backbone).eval()
    images = torch.randn(batch_size, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        blocks = net.stages(images)[::-1]  # the hypercolumn's blocks, layer4 first (Representation.stage_blocks)
    head = LandmarkRegressor(sum(b.shape[1] for b in blocks), num_landmarks=5)
    size = (image_size // 2, image_size // 2)

    def head_step() -> None:
        head.zero_grad(set_to_none=True)
        landmarks_from_blocks(head, blocks, size).square().mean().backward()

    with torch.no_grad():
        backbone_ms = median_ms(lambda: net.stages(images), repeats)
        head_fwd_ms = median_ms(lambda: landmarks_from_blocks(head, blocks, size), repeats)
    head_step_ms = median_ms(head_step, repeats)
    return {"backbone": backbone, "image_size": image_size, "batch": batch_size, "backbone_fwd_ms": backbone_ms,
            "head_fwd_ms": head_fwd_ms, "head_step_ms": head_step_ms,
            "max_speedup_train": round((backbone_ms + head_step_ms) / head_step_ms, 2),
            "max_speedup_eval": round((backbone_ms + head_fwd_ms) / head_fwd_ms, 2)}


def parse_bound(text: str) -> list[tuple[str, int]]:
    """'resnet18@64,resnet50@96' -> [("resnet18", 64), ("resnet50", 96)]."""
    out = []
    for item in filter(None, (x.strip() for x in text.split(","))):
        name, _, size = item.partition("@")
        if not size.isdigit() or int(size) < 32:
            raise argparse.ArgumentTypeError(f"expected BACKBONE@SIZE (SIZE >= 32), got {item!r}")
        out.append((name, int(size)))
    if not out:
        raise argparse.ArgumentTypeError(f"expected BACKBONE@SIZE,..., got {text!r}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--num-images", type=int, default=600)
    parser.add_argument("--image-size", type=int, default=64, help="network input (the CPU preset's 64)")
    parser.add_argument("--lrs", default="0.001,0.003")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=10, help="regressor epochs per trial (the CPU preset's 10)")
    parser.add_argument("--backbone", default="resnet18", help="model.backbone (the CPU preset's resnet18)")
    parser.add_argument("--runner", choices=("job", "tune"), default="job")
    parser.add_argument("--modes", default="cache,no-cache",
                        help="of cache, no-cache, cache-interpolate (cache + the former F.interpolate resize, job runner)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of a trial (job runner): 1, as in a Tune trial holding one CPU")
    parser.add_argument("--bound", type=parse_bound, metavar="BACKBONE@SIZE,...",
                        help="measure the cache's ceiling per batch instead of running the grid")
    parser.add_argument("--bound-repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if args.bound:
        return main_bound(args)
    if args.quick:
        args.num_images, args.image_size, args.lrs, args.repeats, args.epochs = 60, 32, "0.001", 2, 1
    lrs = [float(x) for x in args.lrs.split(",") if x]
    modes = [m for m in args.modes.split(",") if m]
    if bad := [m for m in modes if m not in ("cache", "no-cache", "cache-interpolate")]:
        parser.error(f"unknown mode(s) {bad}; valid: cache, no-cache, cache-interpolate")
    if "cache-interpolate" in modes and args.runner != "job":
        parser.error("mode cache-interpolate patches the regressor in this process: it needs --runner job")
    parse_ints(str(args.repeats))
    points = grid_points(lrs, args.repeats)
    if args.runner == "job":
        torch.set_num_threads(args.threads)
    data = ensure_dataset(args.num_images, args.image_size)

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        # A throw-away MLflow store: the benchmark's trials are not results. Created (schema
        # migrations, imports) before the clock starts, so the first mode does not pay for it.
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        from landmarks import tracking
        from landmarks.evaluate import regress  # noqa: F401  (imported before timing)

        tracking.get_or_create_experiment("bench-sweep")
        for mode in modes:
            overrides = job_overrides(data, mode != "no-cache", f"{tmp}/features-{mode}", args.epochs,
                                      args.image_size, args.backbone)
            out = (run_jobs(points, overrides, interpolate_resize=mode == "cache-interpolate") if args.runner == "job"
                   else run_tune(points, overrides, lrs, args.repeats, f"{tmp}/tune-{mode}"))
            trials = out["trial_s"]
            row = {"mode": mode, "runner": args.runner, "trials": len(points), "wall_s": round(out["wall_s"], 2),
                   "trials_per_hour": round(len(points) * 3600 / out["wall_s"], 1),
                   "first_trial_s": round(trials[0], 2) if trials else None,
                   "later_trial_mean_s": round(sum(trials[1:]) / len(trials[1:]), 2) if len(trials) > 1 else None,
                   "iod_mean": round(sum(out["iod"]) / len(out["iod"]), 3) if out["iod"] else None}
            print(row, flush=True)
            rows.append(row)
        os.environ.pop("MLFLOW_TRACKING_URI", None)

    summary: dict[str, Any] = {}
    by = {r["mode"]: r for r in rows}
    for mode in ("cache", "cache-interpolate"):
        if mode not in by or "no-cache" not in by:
            continue
        suffix = "" if mode == "cache" else ".interpolate"
        by[mode]["speedup"] = round(by[mode]["trials_per_hour"] / by["no-cache"]["trials_per_hour"], 2)
        summary[f"speedup_trials_per_hour{suffix}"] = by[mode]["speedup"]
        if by[mode]["later_trial_mean_s"] and by["no-cache"]["later_trial_mean_s"]:
            summary[f"speedup_per_trial_after_first{suffix}"] = round(
                by["no-cache"]["later_trial_mean_s"] / by[mode]["later_trial_mean_s"], 2)
    params = {"num_images": args.num_images, "image_size": args.image_size, "lrs": lrs, "repeats": args.repeats,
              "epochs": args.epochs, "runner": args.runner,
              "threads": args.threads if args.runner == "job" else None, "preset": str(PRESET.relative_to(ROOT)),
              "backbone": f"{args.backbone} (random init)", "representation": "hypercolumn", "quick": args.quick}
    finish(args, "sweep", rows, params=params, summary=summary, label_keys=("mode",),
           notes=["the grid's wall time includes building the cache once (first trial of 'cache')"])
    return 0


def main_bound(args) -> int:
    torch.set_num_threads(args.threads)
    batch, repeats = (4, 1) if args.quick else (32, args.bound_repeats)
    rows = []
    for backbone, size in args.bound:
        rows.append(cache_bound(backbone, size, batch, repeats))
        print(rows[-1], flush=True)
    params = {"bound": [f"{b}@{n}" for b, n in args.bound], "threads": args.threads, "batch": batch,
              "repeats": repeats, "quick": args.quick}
    finish(args, "sweep", rows, params=params,
           label_keys=("backbone", "image_size"),
           notes=["max_speedup_*: the most a feature cache can give per step (backbone + head) / head"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
