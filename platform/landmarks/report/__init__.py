"""Tables and figures from MLflow runs, the paper's numbers beside ours: `jobs/report.py`.

    python jobs/report.py --experiment regress --experiment table7-aflw-m-budget --out report/
    python jobs/report.py --experiment regress-synthetic --out report/ \
        --pca-backbone <pretrain run id> --data data/synthetic-faces

Writes OUT/tables/<table>.{md,csv} (`tables`), OUT/figures/*.png (`figures`) and OUT/summary.md,
then logs all of it as artifacts of a run (tag job=report) in `--mlflow-experiment`.

Figures and where their arrays come from (all from what MLflow holds, offline):
- error vs annotation budget (Tables 7 and 8): the tables themselves;
- predicted vs true landmarks: the regress job's artifact `predictions/predictions.npz`
  (image_id (N,), pred and gt (N, K, 2) input pixels, visible (N, K), image_size) of the best run
  per dataset; images from the run's `data.path` (or `--data`) when that dataset is readable;
- segmentation masks: `predictions/masks.npz` of the best segment run (image_id (N,), pred (N, H, W)
  foreground probability, gt (N, H, W) {0, 1}, image_size; images alike), else the figure the
  segment job logs itself (`segmentation/masks.png`);
- hypercolumn PCA, pretrained vs random init: computed from `--pca-backbone` (run id, checkpoint
  or 'random') and `--data`, or read from `pca/hypercolumn_pca.npz` (images, pretrained, random)
  of the newest run tagged `pca_artifact` in the experiments. The report logs the arrays it
  computes under that name and tag, so a later report finds them without the backbone or data.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .. import tracking
from ..errors import UserError
from ..registry import ARCHITECTURES, METRIC_GOALS
from .runs import RUN_ID, RunRecord, load_records
from .tables import LOWER_IS_BETTER, TableResult, build_tables, write_tables

PCA_ARTIFACT = "pca/hypercolumn_pca.npz"
PREDICTIONS_ARTIFACT = "predictions/predictions.npz"
MASKS_ARTIFACT = "predictions/masks.npz"
MASKS_FIGURE = "segmentation/masks.png"  # what landmarks.evaluate.segment logs


def run_report(experiments: list[str], out: str | Path, pca_backbone: str | None = None,
               pca_arch: str | None = None, data: str | None = None, pca_images: int = 4,
               mlflow_experiment: str | None = "reports") -> dict[str, Any]:
    """Build every table and figure into `out`; log them to a report run unless mlflow_experiment is None."""
    if not experiments:
        raise UserError("give at least one --experiment")
    out = Path(out)
    records = load_records(experiments)
    results = build_tables(records)
    tables = write_tables(results, out / "tables")
    figures: dict[str, Path] = {}
    notes: list[str] = []
    _budget_figures(results, out, figures)
    _prediction_figures(records, out, data, figures, notes)
    pca = _pca_arrays(experiments, pca_backbone, pca_arch, data, pca_images, notes)
    if pca is not None:
        from .figures import pca_figure

        figures["hypercolumn PCA (pretrained vs random init)"] = pca_figure(
            pca["images"], pca["pretrained"], pca["random"], out / "figures" / "pca_hypercolumns.png")
    registered = tracking.registered_versions({r.run_id for r in records})
    summary = write_summary(out / "summary.md", experiments, records, results, figures, notes, registered)

    metrics: dict[str, Any] = {"runs": len(records), "tables": len(results),
                               "matched": sum(len(r.matched) for r in results), "figures": len(figures),
                               "registered_models": len(registered)}
    if mlflow_experiment:
        logger = tracking.start_run(mlflow_experiment, f"report-{'+'.join(experiments)}"[:200],
                                    tags={"job": "report", "report_experiments": ", ".join(experiments)})
        logger.log_params({"report": {"experiments": ", ".join(experiments), "out": str(out.resolve())}})
        logger.log_artifact(out / "tables", "tables")
        if figures:
            logger.log_artifact(out / "figures", "figures")
        logger.log_artifact(summary)
        if pca is not None and pca_backbone:
            with tempfile.TemporaryDirectory() as tmp:
                np.savez_compressed(Path(tmp) / Path(PCA_ARTIFACT).name, **pca)
                logger.log_artifact(Path(tmp) / Path(PCA_ARTIFACT).name, str(Path(PCA_ARTIFACT).parent))
            logger.set_tags({"pca_artifact": PCA_ARTIFACT})
        logger.log_metrics({k: v for k, v in metrics.items()})
        logger.finish()
        metrics["mlflow_run_id"] = logger.run_id
    metrics["paths"] = [str(p) for p in tables] + [str(p) for p in figures.values()] + [str(summary)]
    return metrics


# ----------------------------------------------------------------------------- figures


def _budget_figures(results: list[TableResult], out: Path, figures: dict[str, Path]) -> None:
    from .figures import budget_figure

    for result in results:
        full = {"table7_aflw_m_budget": 10122, "table8_cub_budget": 1241}.get(result.spec.name)
        if full is None:
            continue
        path = budget_figure(result, out / "figures" / f"budget_{result.spec.name.split('_', 1)[1]}.png", full)
        if path is not None:
            figures[f"{result.spec.title.split(':')[0]}: error vs annotation budget"] = path


def _best_runs(records: list[RunRecord], job: str, metric_of: dict[str, str]) -> dict[str, list[RunRecord]]:
    """Per dataset, the runs of `job` ordered best first by the dataset's metric."""
    by_dataset: dict[str, list[RunRecord]] = {}
    for r in records:
        metric = next((m for m in metric_of.get(job, "").split(",") if m in r.metrics), None)
        if r.job == job and metric:
            by_dataset.setdefault(r.dataset, []).append(r)
    def score(r: RunRecord) -> float:
        metric = next(m for m in metric_of[job].split(",") if m in r.metrics)
        return r.metrics[metric] if LOWER_IS_BETTER[metric] else -r.metrics[metric]

    for runs in by_dataset.values():
        runs.sort(key=score)
    return by_dataset


def _artifact(run_id: str, name: str) -> dict[str, np.ndarray] | None:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = tracking.download_artifact(run_id, name, tmp)
        except UserError:
            return None
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}


def _images(record: RunRecord, data: str | None, ids: np.ndarray, size: int, notes: list[str]) -> np.ndarray | None:
    """The test images `ids` from --data (if it is this dataset) or the run's data.path; None if unreadable."""
    from ..data.manifest import Manifest

    for path in [p for p in (data, record.params.get("data.path")) if p]:
        try:
            manifest = Manifest.load(path)
            if manifest.name not in (record.dataset, {"aflw_m": "aflw-mtfl", "aflw_r": "aflw"}.get(record.dataset)):
                continue
            from ..data.reader import load_split

            split = load_split(path, "test", size)
        except (UserError, OSError, ValueError) as err:
            notes.append(f"images of run {record.run_id} not loaded from {path}: {err}")
            continue
        where = {str(i): n for n, i in enumerate(split["image_id"])}
        if all(str(i) in where for i in ids):
            return split["image"][[where[str(i)] for i in ids]]
    notes.append(f"run {record.run_id}: test images not available; points drawn on a blank canvas")
    return None


def _prediction_figures(records: list[RunRecord], out: Path, data: str | None, figures: dict[str, Path],
                        notes: list[str]) -> None:
    from .figures import MAX_IMAGES, landmarks_figure, masks_figure

    for dataset, runs in _best_runs(records, "regress", {"regress": "iod,pck"}).items():
        for r in runs[:3]:
            arrays = _artifact(r.run_id, PREDICTIONS_ARTIFACT)
            if arrays is None:
                continue
            size = int(arrays.get("image_size", 96))
            ids = arrays["image_id"][:MAX_IMAGES]
            images = _images(r, data, ids, size, notes)
            title = f"{dataset}: {r.run_name} ({r.backbone} {r.representation}, {r.budget} annotations)"
            figures[f"predicted vs true landmarks, {dataset}"] = landmarks_figure(
                images, arrays["pred"][:MAX_IMAGES], arrays["gt"][:MAX_IMAGES], arrays["visible"][:MAX_IMAGES],
                out / "figures" / f"landmarks_{dataset}.png", size, title, ids)
            break
        else:
            notes.append(f"no regress run on {dataset} has {PREDICTIONS_ARTIFACT}")
    for dataset, runs in _best_runs(records, "segment", {"segment": "iou"}).items():
        for r in runs[:3]:
            arrays = _artifact(r.run_id, MASKS_ARTIFACT)
            if arrays is None:  # the segment job's own figure (image | true | predicted rows)
                with tempfile.TemporaryDirectory() as tmp:
                    try:
                        png = tracking.download_artifact(r.run_id, MASKS_FIGURE, tmp)
                    except UserError:
                        continue
                    (out / "figures").mkdir(parents=True, exist_ok=True)
                    figures[f"segmentation masks, {dataset}"] = Path(shutil.copy(png, out / "figures" / f"masks_{dataset}.png"))
                break
            pred = arrays["pred"][:4].astype(np.float32)
            pred = pred / 255.0 if pred.max() > 1 else pred
            images = _images(r, data, arrays["image_id"][:4], pred.shape[1], notes)
            figures[f"segmentation masks, {dataset}"] = masks_figure(
                images, arrays["gt"][:4].astype(np.float32), pred, out / "figures" / f"masks_{dataset}.png",
                f"{dataset}: {r.run_name} (IoU {r.metrics['iou']:.3f})")
            break
        else:
            notes.append(f"no segment run on {dataset} has {MASKS_ARTIFACT}")


def _pca_arrays(experiments: list[str], source: str | None, arch: str | None, data: str | None, n: int,
                notes: list[str]) -> dict[str, np.ndarray] | None:
    if source or data:
        if not (source and data):
            raise UserError("--pca-backbone and --data go together (a backbone and the images to run it on)")
        return compute_pca(source, arch, data, n)
    tagged = [run for exp in experiments for run in tracking.find_runs(exp, has_tag="pca_artifact")]
    for run in sorted(tagged, key=lambda r: -r.info.start_time):
        arrays = _artifact(run.info.run_id, run.data.tags["pca_artifact"])
        if arrays is not None and {"images", "pretrained", "random"} <= set(arrays):
            return arrays
    notes.append("hypercolumn PCA skipped: pass --pca-backbone SOURCE --data DIR (or log "
                 f"{PCA_ARTIFACT} on a run tagged pca_artifact)")
    return None


def compute_pca(source: str, arch: str | None, data: str, n: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """Hypercolumn PCA maps of `n` test images for the backbone `source` and a seeded random init."""
    import torch

    from ..augment.views import input_tensor
    from ..data.manifest import Manifest
    from ..data.normalization import input_stats
    from ..data.reader import load_split
    from ..models.representation import dense_size, hypercolumn
    from ..sources import load_backbone
    from .figures import pca_rgb

    manifest = Manifest.load(data)
    arch = arch or (tracking.get_run(source).data.tags.get("backbone") if RUN_ID.fullmatch(source) else None)
    if not arch:
        raise UserError(f"--pca-arch is needed for this --pca-backbone ({', '.join(ARCHITECTURES)})")
    split = load_split(data, "test", manifest.input_size, rows=range(min(n, manifest.split("test").rows)))
    maps = {}
    for name, src in (("pretrained", source), ("random", "random")):
        backbone, _ = load_backbone(src, arch, seed=seed)
        mean, std, _ = input_stats(manifest)
        x = input_tensor(split["image"], mean, std, "cpu")
        with torch.no_grad():
            maps[name] = pca_rgb(hypercolumn(backbone, x, size=dense_size("hypercolumn", manifest.input_size)))
    return {"images": split["image"], **maps}


# ----------------------------------------------------------------------------- summary


def write_summary(path: Path, experiments: list[str], records: list[RunRecord], results: list[TableResult],
                  figures: dict[str, Path], notes: list[str], registered: list[dict[str, Any]] = ()) -> Path:
    jobs: dict[str, int] = {}
    for r in records:
        jobs[r.job] = jobs.get(r.job, 0) + 1
    lines = ["# Report: ours vs the paper (Cheng, Su, Maji, ICCV 2021)", "",
             f"Experiments: {', '.join(experiments)} ({len(records)} finished runs: "
             + ", ".join(f"{n} {job}" for job, n in sorted(jobs.items())) + ")",
             f"Tracking URI: {tracking.safe_uri(tracking.tracking_uri())}", "", "## Key comparisons", ""]
    for result in results:
        ours = result.ours_rows
        if not ours:
            continue
        matched = result.matched
        lines.append(f"### {result.spec.title}")
        if matched:
            diffs = [abs(float(r["diff"])) for r in matched]
            lines.append(f"{len(matched)} of our {len(ours)} numbers have a paper counterpart; mean |ours - paper| "
                         f"= {sum(diffs) / len(diffs):.2f}.")
        else:
            lines.append(f"{len(ours)} numbers of ours, none in a setting the paper reports.")
        for r in (matched or ours)[:12]:
            setting = ", ".join(f"{k}={r[k]}" for k in result.spec.keys if r[k] != "")
            ours_text = r["ours"] + (f" ± {r['ours_std']}" if r["ours_std"] else "") + f" (n={r['n']})"
            paper = f" vs paper {r['paper']} ({float(r['diff']):+.2f})" if r["paper"] else ""
            lines.append(f"- {r['dataset']} {r['metric']}, {setting}: ours {ours_text}{paper}")
        lines.append(f"Table files: tables/{result.spec.name}.md, tables/{result.spec.name}.csv")
        lines.append("")
    if not any(r.ours_rows for r in results):
        lines += ["None of the runs belong to a paper table (which jobs and settings do: see the tables).", ""]
    lines += ["## Figures", ""] + [f"- {title}: figures/{p.name}" for title, p in figures.items()]
    if registered:
        by_id = {r.run_id: r for r in records}
        lines += ["", "## Registered models", ""]
        for v in sorted(registered, key=lambda v: (v["name"], int(v["version"]))):
            run = by_id[v["run_id"]]
            scores = ", ".join(f"{k}={run.metrics[k]:.4g}" for k in METRIC_GOALS if k in run.metrics)
            aliases = "".join(f" @{a}" for a in v["aliases"])
            lines.append(f"- models:/{v['name']}/{v['version']}{aliases}: {run.job} run {run.run_name} "
                         f"({run.run_id[:8]}, {run.experiment}){': ' + scores if scores else ''}")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Tables (ours beside the paper's) and figures from MLflow runs.")
    parser.add_argument("--experiment", action="append", required=True, help="MLflow experiment (repeatable)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--pca-backbone", help="backbone for the PCA figure: MLflow run id, checkpoint, or 'random'")
    parser.add_argument("--pca-arch", help="its architecture (default: the run's backbone tag)")
    parser.add_argument("--data", help="ingested dataset dir: PCA images, and images under predictions")
    parser.add_argument("--pca-images", type=int, default=4, help="images in the PCA figure")
    parser.add_argument("--mlflow-experiment", default="reports", help="where the report run is logged")
    parser.add_argument("--no-log", action="store_true", help="only write files; log nothing to MLflow")
    ns = parser.parse_args(argv)
    from ..cli import setup_logging

    setup_logging(False)
    try:
        metrics = run_report(ns.experiment, ns.out, ns.pca_backbone, ns.pca_arch, ns.data, ns.pca_images,
                             None if ns.no_log else ns.mlflow_experiment)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return err.exit_code
    print(Path(ns.out, "summary.md").read_text(), flush=True)
    print(f"report: {metrics['runs']} runs, {metrics['tables']} tables ({metrics['matched']} numbers beside the "
          f"paper's), {metrics['figures']} figures in {ns.out}", flush=True)
    if metrics.get("mlflow_run_id"):
        for line in tracking.run_links(metrics["mlflow_run_id"]):
            print(line, flush=True)
    return 0
