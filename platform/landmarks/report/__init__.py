"""Tables and figures from MLflow runs, the paper's numbers beside ours: `jobs/report.py`.

    python jobs/report.py --experiment regress --experiment table7-aflw-m-budget --out report/
    python jobs/report.py --experiment regress-synthetic --out report/ \
        --pca-backbone <pretrain run id> --data data/synthetic-faces

Writes OUT/tables/<table>.{md,csv} (`tables`), OUT/figures/*.png (`figures`) and OUT/summary.md,
then logs all of it as artifacts of a run (tag job=report) in `--mlflow-experiment`.

Modules: `runs` (the MLflow runs a report reads), `tables` (ours beside the paper's), `figures`
(matplotlib), `artifacts` (the figures' arrays from what the runs logged, the hypercolumn PCA),
`summary` (summary.md), `job` (`run_report`, the command line). The PCA arrays a report computes are
logged under `PCA_ARTIFACT` with that tag, so a later report finds them without the backbone or data.
"""

from .artifacts import MASKS_ARTIFACT, MASKS_FIGURE, PCA_ARTIFACT, PREDICTIONS_ARTIFACT, compute_pca
from .job import main, run_report
from .summary import write_summary

__all__ = ["MASKS_ARTIFACT", "MASKS_FIGURE", "PCA_ARTIFACT", "PREDICTIONS_ARTIFACT", "compute_pca", "main",
           "run_report", "write_summary"]
