"""The report job (`jobs/report.py`, the `report` command): tables, figures and summary into a directory,
then all of it as artifacts of a run (tag job=report) in `--mlflow-experiment`."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .. import tracking
from ..errors import UserError
from .artifacts import PCA_ARTIFACT, budget_figures, pca_arrays, prediction_figures
from .runs import load_records
from .summary import write_summary
from .tables import build_tables, write_tables


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
    budget_figures(results, out, figures)
    prediction_figures(records, out, data, figures, notes)
    pca = pca_arrays(experiments, pca_backbone, pca_arch, data, pca_images, notes)
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
