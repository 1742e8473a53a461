"""The demo's closing summary: the budget table from its MLflow runs, the probe's curve, what it shows.

    summary = summarize(experiment, sweeps, pretrain_run_id, match, segment, minutes=..., ...)
    print_demo_summary(summary, experiment)        # the table with each mean's spread over repeats

`iod_by_budget[budget][method]` is the mean inter-ocular error over the repeats of the demo's sweeps
(methods: pretrained and random init, the regressor on the frozen hypercolumn; mean_shape and supervised,
`jobs/baseline.py`), and `iod_spread_by_budget` their standard deviations (0 for one repeat).
"""

from __future__ import annotations

import statistics
from typing import Any

from . import tracking

METHODS = ("pretrained", "random", "mean_shape", "supervised")
LABELS = {"pretrained": "MoCo pretrained", "random": "random init", "mean_shape": "mean shape",
          "supervised": "supervised"}


def budget_values(experiment: str, sweeps: list[str], backbone: str) -> dict[str, dict[str, list[float]]]:
    """budget -> method -> IOD of every finished run of these sweeps (their `sweep` tag: runs of earlier demos in
    the experiment stay out). Regress runs are pretrained or random by their backbone.source."""
    cells: dict[str, dict[str, list[float]]] = {}
    for sweep in sweeps:
        for run in tracking.find_runs(experiment, tags={"sweep": sweep}, status="FINISHED"):
            tags, params, iod = run.data.tags, run.data.params, run.data.metrics.get("iod")
            if iod is None or tags.get("job") not in ("regress", "baseline"):
                continue
            if tags["job"] == "baseline":
                method = tags.get("method", "")
            else:
                method = {backbone: "pretrained", "random": "random"}.get(params.get("backbone.source", ""), "")
            if method:
                cells.setdefault(params.get("annotations", "all"), {}).setdefault(method, []).append(iod)
    return cells


def probe_curve(run_id: str) -> dict[str, Any]:
    """The pretraining run's landmark probe: {"epoch": [0, 1, ...], "iod": [...], "mean_shape": x} (0 = the
    initial weights); empty lists when it logged none."""
    epochs = dict(tracking.metric_history(run_id, "probe_epoch"))
    values = dict(tracking.metric_history(run_id, "probe_iod"))
    steps = sorted(s for s in values if s in epochs)
    shape = tracking.metric_history(run_id, "probe_mean_shape_iod")
    return {"epoch": [int(epochs[s]) for s in steps], "iod": [values[s] for s in steps],
            "mean_shape": shape[-1][1] if shape else None}


def _order(budgets) -> list[str]:
    return sorted(budgets, key=lambda b: (b == "all", int(b) if b.isdigit() else 0))


def summarize(values: dict[str, dict[str, list[float]]], **extra: Any) -> dict[str, Any]:
    """The summary dict (the --metrics-out JSON): means and spreads per budget and method, plus `extra`."""
    by_budget = {b: {m: statistics.fmean(v) for m, v in values[b].items()} for b in _order(values)}
    spread = {b: {m: statistics.stdev(v) if len(v) > 1 else 0.0 for m, v in values[b].items()} for b in by_budget}
    repeats = {b: {m: len(v) for m, v in values[b].items()} for b in by_budget}
    return {"iod_by_budget": by_budget, "iod_spread_by_budget": spread, "repeats_by_budget": repeats, **extra}


def worth(summary: dict[str, Any]) -> list[str]:
    """What the table shows about pretraining, one line each: against random init and the mean shape."""
    table, lines = summary["iod_by_budget"], []
    budgets = [b for b in table if "pretrained" in table[b]]
    beats_random = [b for b in budgets if table[b]["pretrained"] < table[b].get("random", float("inf"))]
    lines.append(f"MoCo pretrained beats random init at {len(beats_random)}/{len(budgets)} budgets")
    gains = [f"{b}: {100 * (1 - table[b]['pretrained'] / table[b]['mean_shape']):.0f} %"
             for b in budgets if table[b].get("mean_shape")]
    if gains:
        lines.append("MoCo pretrained below the mean shape by " + ", ".join(gains))
    return lines


def print_demo_summary(summary: dict[str, Any], experiment: str) -> None:
    """The closing table (mean ± spread over repeats per budget and method), matching, segmentation, the probe."""
    table, spread = summary["iod_by_budget"], summary["iod_spread_by_budget"]
    methods = [m for m in METHODS if any(m in row for row in table.values())]
    print("\n=== summary ===")
    print("inter-ocular error (%) on the synthetic test split, lower is better (mean ± std over repeats)")
    print(f"{'annotations':>12}" + "".join(f"{LABELS[m]:>18}" for m in methods))
    for budget, row in table.items():
        cells = [f"{row[m]:6.2f} ± {spread[budget][m]:4.2f}" if m in row else "-" for m in methods]
        print(f"{budget:>12}" + "".join(f"{c:>18}" for c in cells))
    for line in worth(summary):
        print(line)
    m_same, m_diff = summary["match_same_px"], summary["match_diff_px"]
    print(f"matching error (px @70): same identity {m_same['pretrained']:.2f} (random {m_same['random']:.2f}), "
          f"different identity {m_diff['pretrained']:.2f} (random {m_diff['random']:.2f})")
    print(f"segmentation IoU (pretrained, linear): {summary['segment_iou']:.3f}")
    probe = summary.get("probe") or {}
    if probe.get("iod"):
        points = ", ".join(f"{e}: {v:.1f}" for e, v in zip(probe["epoch"], probe["iod"]))
        print(f"pretraining's landmark probe (IOD % by epoch; mean shape {probe['mean_shape']:.1f}): {points}")
    print(f"report: {summary['report']}/summary.md (tables/, figures/)")
    print(f"MLflow: experiment '{experiment}' at {tracking.safe_uri(tracking.tracking_uri())}")
    print("  open the UI: mlflow ui   (from this directory; then http://127.0.0.1:5000, experiment "
          f"'{experiment}')")
    print(f"total time: {summary['minutes']:.1f} min")
