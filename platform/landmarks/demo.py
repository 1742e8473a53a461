"""`make demo`: the whole pipeline on the built-in synthetic faces, on local Ray and local MLflow.

    ingest -> MoCo pretraining (2 Ray Train workers; the landmark probe after every epoch) -> feature projector
      -> Ray Tune sweeps: landmark regression, budget x repeat x {pretrained, random init}, and the baselines
         at the same budgets and rows, {mean shape, supervised from scratch}
      -> matching + segmentation -> report (tables + PNGs) -> summary (printed, and --metrics-out JSON)

Every step calls the same library function as its `jobs/*.py` entry point, in one process
that holds one Ray instance, and logs to the MLflow experiment `demo`. The settings, and why each
demo-only one differs from the paper's, are in docs/demo_study.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cli import JobArgs, setup_logging
from .config import load_config
from .demo_summary import budget_values, print_demo_summary, probe_curve, summarize
from .errors import UserError
from .progress import write_metrics
from .registry import config_class, run_function

CONFIGS = Path(__file__).resolve().parents[2] / "jobs" / "configs"


@dataclass(frozen=True)
class DemoPreset:
    """Sizes of one demo; `default` is what `make demo` runs, `tiny` is the CI smoke version. Every value that
    is not the paper's is measured in docs/demo_study.md."""

    num_images: int
    image_size: int
    pretrain_epochs: int
    pretrain_batch: int
    queue_size: int
    pretrain_lr: float
    projector_epochs: int
    regress_epochs: int
    budgets: tuple[Any, ...]
    repeats: int
    segment_epochs: int
    baseline_epochs: int
    backbone: str = "resnet18_quarter"
    samples_per_epoch: int | str = "auto"  # regression samples per epoch, every budget alike
    regress_lr: float | str = 1e-3
    # The regressor's heatmap conv starts from N(0, regress_init_std): the official N(0, 1) saturates the x100
    # soft-argmax and learns little in the demo's few hundred steps (docs/demo_study.md, "the head").
    regress_init_std: float = 0.001
    regress_points: int = 10  # soft-argmax points per landmark (official 50): 6x cheaper, a little worse
    tps_augment: bool = False  # limited budgets without the TPS warps (official on): cached features, 2.7x faster
    projector_fraction: float = 1.0  # of the training split (its loss levels off within ~100 steps)
    data_options: tuple[tuple[str, Any], ...] = ()  # synthetic-faces renderer options (difficulty, ...)
    extra_pretrain: tuple[str, ...] = field(default=())


PRESETS = {
    # docs/demo_study.md measures every choice: a quarter-width ResNet18 (0.72M parameters) gets ~2,400 MoCo steps
    # in the minutes a full one gets ~300; the paper's crops (0.2) and JPEG noise make better features than crops of
    # 0.6 or no JPEG at the same steps; temperature 0.2 and m 0.99 (MoCo v2's, and a faster key encoder) learn in a
    # short run where T 0.07 stalled; the regressor starts soft (init 0.001) and takes 500 steps.
    "default": DemoPreset(num_images=6000, image_size=48, pretrain_epochs=32, pretrain_batch=64, queue_size=1024,
                          pretrain_lr=0.03, projector_epochs=1, regress_epochs=20, samples_per_epoch=800,
                          budgets=(10, 100, "all"), repeats=3, segment_epochs=5, baseline_epochs=20,
                          projector_fraction=0.35,
                          extra_pretrain=("moco.momentum=0.99", "moco.temperature=0.2", "moco.crop_min_scale=0.2",
                                          "probe.images=512")),
    "tiny": DemoPreset(num_images=240, image_size=32, pretrain_epochs=2, pretrain_batch=32, queue_size=128,
                       pretrain_lr=0.03, projector_epochs=1, regress_epochs=3, budgets=(5, "all"), repeats=1,
                       segment_epochs=2, baseline_epochs=2,
                       extra_pretrain=("moco.jpeg=false", "moco.temperature=0.2", "probe.images=32")),
}


def step(title: str) -> float:
    print(f"\n=== {title} ===", flush=True)
    return time.monotonic()


def run_job(job: str, preset_file: str, overrides: list[str], verbose: bool) -> dict:
    cfg = load_config(config_class(job), CONFIGS / preset_file, overrides)
    return run_function(job)(cfg, JobArgs(str(CONFIGS / preset_file), None, verbose))


def run_demo(preset: DemoPreset, out: Path, experiment: str = "demo", verbose: bool = False) -> dict:
    from .cluster import connect, connected, shutdown
    from .data import ingest
    from .data.manifest import Manifest

    started = time.monotonic()
    ray_was_up = connected()  # ingest below starts Ray if nobody has
    out = out.resolve()
    data = out / "data" / "synthetic-faces"
    common = [f"data.path={data}", f"data.image_size={preset.image_size}", f"model.backbone={preset.backbone}",
              f"mlflow.experiment={experiment}"]

    t = step(f"1/6 synthetic faces: {preset.num_images} images -> {data}")
    options = {"num_images": preset.num_images, "seed": 0, **dict(preset.data_options)}
    done = (data / "dataset.json").exists() and Manifest.load(str(data)).extra.get("options") == options
    if not done:
        ingest("synthetic-faces", None, str(data), image_size=preset.image_size, rows_per_shard=500,
               options=options, overwrite=True)
    print(f"dataset ready ({time.monotonic() - t:.0f}s)", flush=True)
    resources = connect(verbose=verbose)
    print(f"Ray: {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs", flush=True)

    t = step(f"2/6 MoCo pretraining of a {preset.backbone}, 2 Ray Train workers, the landmark probe every epoch")
    pre = run_job("pretrain", "pretrain_synthetic_cpu.yaml", [
        *common, f"train.epochs={preset.pretrain_epochs}", f"train.batch_size={preset.pretrain_batch}",
        f"moco.queue_size={preset.queue_size}", f"train.lr={preset.pretrain_lr}",
        f"checkpoint.storage_path={out / 'ray'}", f"mlflow.run_name=demo-pretrain-{preset.num_images}",
        *preset.extra_pretrain], verbose)
    backbone = pre["mlflow_run_id"]
    print(f"pretraining done ({time.monotonic() - t:.0f}s), final loss {pre['loss']:.3f}, mean cosine between "
          f"keys {pre['key_similarity']:.2f} (near 1 = collapsed)", flush=True)

    t = step("3/6 feature projector on the pretrained hypercolumns")
    proj = run_job("train_projector", "train_projector_synthetic_cpu.yaml", [
        *common, f"backbone.source={backbone}", f"train.epochs={preset.projector_epochs}",
        f"data.fraction={preset.projector_fraction}", f"validation.path={data}",
        f"checkpoint.storage_path={out / 'ray'}"], verbose)
    print(f"projector done ({time.monotonic() - t:.0f}s), loss {proj['loss']:.3f}", flush=True)

    t = step("4/6 Ray Tune sweeps: regression (pretrained vs random init) and the baselines, budgets x repeats")
    sweeps = run_sweeps(preset, common, backbone, experiment, out, verbose)
    print(f"sweeps done ({time.monotonic() - t:.0f}s)", flush=True)

    t = step("5/6 landmark matching and segmentation")
    match = {src: run_job("match", "match_synthetic_cpu.yaml", [*common, f"backbone.source={src}"], verbose)
             for src in (backbone, "random")}
    seg = run_job("segment", "segment_synthetic_cpu.yaml", [
        *common, f"backbone.source={backbone}", f"train.epochs={preset.segment_epochs}"], verbose)
    print(f"matching + segmentation done ({time.monotonic() - t:.0f}s)", flush=True)

    t = step("6/6 report")
    from .report import run_report

    report = run_report([experiment], out / "report", pca_backbone=backbone, data=str(data),
                        mlflow_experiment=experiment)
    values = budget_values(experiment, sweeps, backbone)
    if not ray_was_up:
        # Ray holds back repeated worker lines (log deduplication) and prints them when it disconnects:
        # disconnect now, so that the summary stays the last thing printed.
        shutdown()
    summary = summarize(
        values, pretrain_run_id=backbone, pretrain_loss=pre["loss"], projector_loss=proj["loss"],
        match_same_px={"pretrained": match[backbone]["match_same_px"], "random": match["random"]["match_same_px"]},
        match_diff_px={"pretrained": match[backbone]["match_diff_px"], "random": match["random"]["match_diff_px"]},
        segment_iou=seg["iou"], probe=probe_curve(backbone), report=str(out / "report"),
        report_run_id=report.get("mlflow_run_id"), minutes=(time.monotonic() - started) / 60)
    print_demo_summary(summary, experiment)
    return summary


def run_sweeps(preset: DemoPreset, common: list[str], backbone: str, experiment: str, out: Path,
               verbose: bool) -> list[str]:
    """The regression sweep (pretrained and random init) and the baselines' (mean shape, supervised), over the
    same budgets and repeats (so the same annotated rows); returns the sweeps' names."""
    from .sweep import SweepConfig, run_sweep

    budgets = {"annotations": list(preset.budgets), "repeat": list(range(preset.repeats))}
    jobs = {
        "regress": ({"train.epochs": preset.regress_epochs, "train.schedule_epochs": preset.regress_epochs,
                     "train.lr": preset.regress_lr, "train.samples_per_epoch": preset.samples_per_epoch,
                     "regressor.init_std": preset.regress_init_std,
                     "regressor.points_per_landmark": preset.regress_points, "tps_augment": preset.tps_augment},
                    {"backbone.source": [backbone, "random"]}),
        "baseline": ({"train.epochs": preset.baseline_epochs, "train.samples_per_epoch": preset.samples_per_epoch,
                      "tps_augment": preset.tps_augment},
                     {"method": ["mean_shape", "supervised"]}),
    }
    names = []
    for job, (overrides, grid) in jobs.items():
        name = f"demo-{job}-{backbone[:8]}"
        cfg = SweepConfig.model_validate({
            "job": job, "base_config": str(CONFIGS / f"{job}_synthetic_cpu.yaml"),
            "overrides": {**dict(o.split("=", 1) for o in common), **overrides},
            "grid": {**grid, **budgets}, "max_concurrent": 2, "resources_per_trial": {"cpu": 1, "gpu": 0},
            "mlflow": {"experiment": experiment, "run_name": name}, "name": name, "storage_path": str(out / "tune"),
        })
        result = run_sweep(cfg, JobArgs(None, None, verbose))
        print(f"[demo] {job}: {result.get('finished')} of {result.get('trials')} trials finished", flush=True)
        names.append(name)
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the whole pipeline on synthetic faces.")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    parser.add_argument("--out", default="demo_output", help="where data, checkpoints and the report go")
    parser.add_argument("--experiment", default="demo", help="MLflow experiment of every run")
    parser.add_argument("--metrics-out", help="write the summary (budget table, baselines, matching, the probe's "
                        "curve, minutes) as one JSON object here")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        summary = run_demo(PRESETS[args.preset], Path(args.out), args.experiment, args.verbose)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    write_metrics(args.metrics_out, summary)
    return 0
