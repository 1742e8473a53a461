"""What every benchmark shares: its command line, the machine it ran on, the table, JSON and MLflow.

    parser = bench_parser(__doc__)              # --quick, --out PATH.json, --mlflow EXPERIMENT
    args = parser.parse_args()
    rows = [{"backbone": "resnet18", "images_per_s": 812.3}, ...]
    finish(args, "train", rows, params={"image_size": 96}, summary={"ratio": 0.97})

`finish` prints the table, writes `{"benchmark", "machine", "params", "summary", "rows"}` as
JSON to `--out`, and with `--mlflow EXPERIMENT` logs one MLflow run (params, the summary and
every numeric cell as `<row label>.<column>` metrics, the JSON as an artifact) through
`landmarks.tracking`, so it lands where the jobs' runs do (`MLFLOW_TRACKING_URI`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Generated benchmark inputs (gitignored); tests point LANDMARKS_BENCH_DATA at a temp dir.
DATA_ROOT = Path(os.environ.get("LANDMARKS_BENCH_DATA") or ROOT / "runs" / "bench")


def bench_parser(description: str | None) -> argparse.ArgumentParser:
    """An argparse parser with the options every benchmark has."""
    parser = argparse.ArgumentParser(description=(description or "").strip().splitlines()[0] if description else None,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join((description or "").strip().splitlines()[1:]))
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of a few seconds")
    parser.add_argument("--out", metavar="PATH.json", help="write the results as JSON here")
    parser.add_argument("--mlflow", metavar="EXPERIMENT", help="log the results as one run of this MLflow experiment")
    parser.add_argument("--run-name", help="MLflow run name (default: bench-<benchmark>)")
    return parser


def parse_ints(text: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4] (for list-valued options)."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def powers_of_two(limit: int) -> list[int]:
    """1, 2, 4, ... up to `limit`, plus `limit` itself (e.g. 1, 2, 4, 6 for 6 CPUs)."""
    out, n = [], 1
    while n < limit:
        out.append(n)
        n *= 2
    return out + [limit]


def machine() -> dict[str, Any]:
    """Where and with what the numbers were taken."""
    import torch

    info: dict[str, Any] = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "torch": torch.__version__, "device": "cpu", "load_avg_1min": _load_avg(),
    }
    try:
        import ray

        info["ray"] = ray.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["device"] = "cuda"
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpus"] = torch.cuda.device_count()
    try:
        from landmarks.tracking import git_commit

        info["git_commit"] = git_commit()
    except ImportError:
        pass
    return info


def _load_avg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def fmt(value: Any) -> str:
    """A table cell: 4 significant digits for floats, '-' for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e6:
            return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
        return f"{value:.3e}"
    return str(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, title: str | None = None) -> str:
    """A plain-text table of `rows` (dicts), columns in first-seen order unless given."""
    if columns is None:
        columns = []
        for row in rows:
            columns += [k for k in row if k not in columns]
    cells = [[fmt(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    out = ([title] if title else []) + [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.rjust(w) if _numeric(v) else v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(out)


def _numeric(text: str) -> bool:
    return bool(re.fullmatch(r"[-+0-9.e]+", text))


def finish(args: argparse.Namespace, benchmark: str, rows: list[dict[str, Any]], *, params: dict[str, Any],
           summary: dict[str, Any] | None = None, columns: Sequence[str] | None = None,
           label_keys: Iterable[str] = (), notes: Sequence[str] = ()) -> dict[str, Any]:
    """Print the table (and summary), write --out, log to --mlflow; returns the JSON document.

    label_keys: columns that together name a row in MLflow metric keys (e.g. ("pipeline", "cpus")).
    """
    summary = summary or {}
    print()
    print(table(rows, columns, title=f"== {benchmark} =="))
    for key, value in summary.items():
        print(f"{key}: {fmt(value)}")
    for note in notes:
        print(f"note: {note}")
    doc = {"benchmark": benchmark, "machine": machine(), "params": params, "summary": summary, "rows": rows,
           "notes": list(notes)}
    if args.out:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        print(f"wrote {path}")
    if args.mlflow:
        run_id = log_mlflow(args.mlflow, args.run_name or f"bench-{benchmark}", doc, list(label_keys))
        print(f"MLflow run id: {run_id}")
    return doc


def metric_key(text: str) -> str:
    """MLflow metric names allow [A-Za-z0-9_-./ ]; anything else becomes '_'."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", text)


def log_mlflow(experiment: str, run_name: str, doc: dict[str, Any], label_keys: list[str]) -> str:
    """One MLflow run: params + machine as params, summary and per-row numbers as metrics, JSON artifact."""
    from landmarks import tracking

    logger = tracking.start_run(experiment, run_name, tags={"job": "benchmark", "benchmark": doc["benchmark"],
                                                             "device": doc["machine"].get("device")})
    logger.log_params({**doc["params"], "machine": doc["machine"]})
    metrics = {metric_key(k): float(v) for k, v in doc["summary"].items() if _is_number(v)}
    for row in doc["rows"]:
        label = ".".join(str(row.get(k)) for k in label_keys) if label_keys else None
        for key, value in row.items():
            if key not in label_keys and _is_number(value):
                metrics[metric_key(f"{label}.{key}" if label else key)] = float(value)
    logger.log_metrics(metrics, step=0)
    logger.log_dict(doc, f"{doc['benchmark']}.json")
    logger.finish()
    return logger.run_id


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def ship_by_value(module_name: str) -> None:
    """Let Ray workers run functions of the benchmark module `module_name`: they cannot import a
    script by name, so send its functions by value when it was imported as a module (run as a
    script, `__main__`, cloudpickle does that already)."""
    import ray.cloudpickle

    if module_name != "__main__":
        ray.cloudpickle.register_pickle_by_value(sys.modules[module_name])


class Stopwatch:
    """Timestamps of consecutive items (batches, steps): start-up and steady-state rate.

        watch = Stopwatch()
        for batch in it:
            watch.tick(len(batch))
        watch.startup_s, watch.rate(warmup=3)
    """

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.stamps: list[float] = []
        self.sizes: list[int] = []

    def tick(self, items: int) -> None:
        self.stamps.append(time.perf_counter())
        self.sizes.append(int(items))

    @property
    def startup_s(self) -> float:
        """Seconds from construction to the first item."""
        return self.stamps[0] - self.t0 if self.stamps else float("nan")

    @property
    def total(self) -> int:
        return sum(self.sizes)

    def rate(self, warmup: int) -> float:
        """Items per second after the first `warmup` ticks: items of ticks warmup+1.. over their span."""
        if len(self.stamps) <= warmup + 1 or warmup < 1:
            raise ValueError(f"need more than {warmup + 1} ticks after a warm-up of {warmup}, got {len(self.stamps)}")
        span = self.stamps[-1] - self.stamps[warmup - 1]
        return sum(self.sizes[warmup:]) / span if span > 0 else float("inf")
