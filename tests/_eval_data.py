"""Tiny datasets for the evaluation-job tests (test_features, test_regress, test_match).

Built once per pytest session with the real `landmarks.data.ingest` (Ray tasks) under the
session's base temp dir, and shared by the three test modules:

- faces: `synthetic-faces`, 48 images at a 32 px input (stored 45 px, border 6), with masks;
- dots:  five coloured dots on noise, at fixed places plus jitter, 32 px input: a random
         backbone's hypercolumn locates them, so a regressor trained on it must learn;
- cub:   the same dots named "cub" (PCK, a val split, CUB's rules), 40 images;
- blank: three unlabelled images (K = 0), for the "dataset without landmarks" error.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import conftest
from landmarks.data.converters.base import Converter, DatasetInfo, Record

ROOT = Path(__file__).resolve().parents[1]
COLORS = np.array([[255, 40, 40], [40, 255, 40], [60, 60, 255], [255, 255, 40], [255, 40, 255]], np.float32)
BASE = np.array([[0.3, 0.35], [0.7, 0.35], [0.5, 0.55], [0.35, 0.75], [0.65, 0.75]])  # x, y of the input


@dataclass
class Dots(Converter):
    """Options: num_images (train + test), seed, name ("cub": bird-like, no eyes, a val split, no border)."""

    def __post_init__(self) -> None:
        n, cub = self.image_size, self.options.get("name") == "cub"
        border = 0 if cub else n // 8
        self.info = DatasetInfo(name="cub" if cub else "dots", landmark_names=("le", "re", "nose", "lm", "rm"),
                                eye_indices=None if cub else (0, 1), stored_size=n + 2 * border,
                                input_size=n, border=border, image_format="png")

    def splits(self):
        num = int(self.options.get("num_images", 80))
        test = max(8, num // 5)
        out = {"train": [("train", i) for i in range(num - test)], "test": [("test", i) for i in range(test)]}
        if self.info.name == "cub":
            out["val"] = [("val", i) for i in range(test)]
        return out

    def load(self, item) -> Record:
        split, i = item
        split_code = ("train", "val", "test").index(split)
        rng = np.random.default_rng([int(self.options.get("seed", 0)), split_code, i])
        n, b = self.image_size, self.info.border
        side = n + 2 * b
        kps = b + (BASE + rng.uniform(-0.08, 0.08, BASE.shape)) * n
        image = np.full((side, side, 3), 90, np.float32) + rng.normal(0, 6, (side, side, 3))
        yy, xx = np.mgrid[0:side, 0:side]
        for (x, y), color in zip(kps, COLORS):
            alpha = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * (0.05 * n) ** 2))[..., None]
            image = image * (1 - alpha) + color * alpha
        return Record(f"{split}/{i:04d}", image.clip(0, 255).astype(np.uint8), kps.astype(np.float32),
                      np.ones(5, bool), identity=f"{split}-{i}")


@dataclass
class Blank(Converter):
    """Unlabelled grey images (like inat-aves): K = 0."""

    def __post_init__(self) -> None:
        self.info = DatasetInfo(name="blank", landmark_names=(), eye_indices=None, stored_size=self.image_size,
                                input_size=self.image_size, border=0, image_format="png")

    def splits(self):
        return {"train": [0, 1], "test": [2]}

    def load(self, item) -> Record:
        image = np.full((self.image_size, self.image_size, 3), 40 * item, np.uint8)
        return Record(f"img{item}", image, np.zeros((0, 2), np.float32), np.zeros(0, bool))


def build_all(base: Path) -> dict[str, Path]:
    """Ingest the four datasets under `base` once (a marker file says they are complete)."""
    paths = {name: base / name for name in ("faces", "dots", "cub", "blank")}
    if not (base / "complete").exists():
        from ray import cloudpickle  # Ray's own copy: the one that pickles task arguments

        from landmarks.data import ingest

        cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import tests/
        kw = {"image_size": 32, "progress": False, "overwrite": True}
        ingest("synthetic-faces", None, str(paths["faces"]), options={"num_images": 48, "seed": 0}, **kw)
        ingest(f"{__name__}:Dots", None, str(paths["dots"]), options={"num_images": 240, "seed": 0}, **kw)
        ingest(f"{__name__}:Dots", None, str(paths["cub"]), options={"num_images": 40, "seed": 1, "name": "cub"}, **kw)
        ingest(f"{__name__}:Blank", None, str(paths["blank"]), **kw)
        (base / "complete").write_text("ok")
    return paths


def job_env(tmp: Path, ray_address: str | None = None) -> dict[str, str]:
    """conftest.job_env with MLflow in sqlite under `tmp` and, if given, the session's Ray cluster."""
    extra = {"RAY_ADDRESS": ray_address} if ray_address else {}
    return conftest.job_env(f"sqlite:///{tmp}/mlflow.db", PYTHONUNBUFFERED="1", **extra)


def run_job(job: str, args: list[str], tmp: Path, ray_address: str | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """`python jobs/<job>.py ARGS` in `tmp`; returns the finished process (text output), failed or not."""
    return conftest.run_job(f"{job}.py", *args, cwd=tmp, env=job_env(tmp, ray_address), timeout=timeout, check=False)


# A line Ray's log monitor forwards from its own processes to the driver's stderr, e.g.
# "\x1b[33m(raylet)\x1b[0m ... is over 95% full": printed by the cluster at any moment, not by the job.
RAY_FORWARDED_LINE = re.compile(r"^(\x1b\[[0-9;]*m)?\((raylet|gcs_server|autoscaler|[\w.() -]*? ?pid=\d+[^)]*)\)")


def logged_model(tmp: Path, run_id: str):
    """The landmark model (`landmarks.models.artifact.LandmarkModel`) that run `run_id` of the job store in `tmp`
    (`job_env`) logged as its "model"."""
    from landmarks import tracking
    from landmarks.models.artifact import load_model

    return load_model(tracking.fetch_landmark_model(run_id, tmp / f"model-{run_id}", f"sqlite:///{tmp}/mlflow.db"))


def job_stderr_lines(err: str) -> list[str]:
    """The non-blank lines of a job's stderr that the job itself printed (Ray's forwarded lines dropped)."""
    return [ln for ln in err.strip().splitlines() if ln.strip() and not RAY_FORWARDED_LINE.match(ln)]


def assert_one_line_error(proc: subprocess.CompletedProcess | tuple, *needles: str) -> str:
    """Non-zero exit, a single `error: ...` line on stderr naming `needles`, no traceback."""
    code, err = (proc.returncode, proc.stderr) if hasattr(proc, "returncode") else proc
    lines = job_stderr_lines(err)
    assert code != 0, err
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def interrupt_when(ready, timeout: float = 240.0) -> threading.Thread:
    """Ctrl-C to this process (SIGINT, as a terminal sends it) from a thread, once `ready()` holds: a user
    stopping a job that runs in process. The main thread then gets Python's (or the job's) SIGINT handler."""
    def watch() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.2)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def keeps_growing(path: Path, wait: float = 3.0) -> bool:
    """Whether the file a task appends to is still being written (it is not, once the task is stopped)."""
    size = path.stat().st_size
    time.sleep(wait)
    return path.stat().st_size > size
