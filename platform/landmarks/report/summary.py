"""OUT/summary.md of a report: the key comparisons with the paper, the figures, the registered models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import tracking
from ..registry import METRIC_GOALS
from .runs import RunRecord
from .tables import TableResult


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
