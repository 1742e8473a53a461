"""Progress lines (epochs/steps/ETA) and the `--metrics-out` file: helpers every job uses."""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from typing import Any

from . import storage


def format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """Prints `desc  step/total  pct  elapsed  ETA  key=value...` to stderr, at most every
    `every` seconds (and always at the last step). Works in logs (no carriage returns)."""

    def __init__(self, total: int, desc: str, every: float = 5.0, stream=None, enabled: bool = True):
        self.total, self.desc, self.every = max(int(total), 1), desc, every
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.start = time.monotonic()
        self.last = -math.inf
        self.done = 0

    def eta(self) -> float:
        elapsed = time.monotonic() - self.start
        if self.done == 0:
            return math.inf
        return elapsed / self.done * (self.total - self.done)

    def update(self, n: int = 1, **info: Any) -> None:
        self.done = min(self.done + n, self.total)
        now = time.monotonic()
        if self.enabled and (now - self.last >= self.every or self.done == self.total):
            self.last = now
            self.stream.write(self.line(**info) + "\n")
            self.stream.flush()

    def line(self, **info: Any) -> str:
        elapsed = time.monotonic() - self.start
        extras = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items())
        return (
            f"[{self.desc}] {self.done}/{self.total} {100 * self.done / self.total:5.1f}%  "
            f"elapsed {format_seconds(elapsed)}  ETA {format_seconds(self.eta())}  {extras}".rstrip()
        )


def worker_print(line: str, warning: bool = False) -> None:
    """One line from a Ray Train worker, shown once by the driver and kept in Train's log files.

    Ray Train 2.60 routes a worker's print() to its logger and, because Ray wraps the worker's
    stdout and stderr, also prints it as is: every line appeared twice. Its logger prints once.
    """
    logging.getLogger("landmarks.train").log(logging.WARNING if warning else logging.INFO, line)


def write_metrics(path: str | os.PathLike | None, metrics: dict[str, Any]) -> None:
    """`--metrics-out`: the job's final metrics as one JSON object (no-op when path is None)."""
    if path:
        storage.write_json_atomic(os.fspath(path), metrics, sort_keys=True)
