"""Checkpoints: what a training checkpoint holds, and finding the latest one of a run.

A checkpoint is a directory (`models.formats.save_checkpoint` / `load_checkpoint`) with
    state.pt    tensors and plain containers only (loads with torch.load(weights_only=True)):
                {"model": MoCo/model state_dict, "optimizer": ..., "epoch": int, "step": int}
    meta.json   {"epoch", "step", "backbone", "low_dim", "mlflow_run_id", "dataset", ...}
Ray Train copies it to `RunConfig(storage_path)/<name>/checkpoint_*` (local or s3://). The
schedule is a pure function of the step, so no scheduler object is stored.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from .. import storage
from ..models.formats import META_FILE, load_checkpoint, save_checkpoint

TEMP_PREFIX = "landmarks-ckpt-"  # + "<pid>-<run id[:8]>-": the process that wrote it, the MLflow run


def save_checkpoint_dir(state: dict[str, Any], meta: dict[str, Any], directory: str | Path | None = None) -> Path:
    """Write state.pt + meta.json into `directory` (by default a new temp dir, `TEMP_PREFIX`, which the
    caller removes; `remove_orphan_temp_dirs` takes those of processes that died first); returns it."""
    if directory is None:
        remove_orphan_temp_dirs()
        run = str(meta.get("mlflow_run_id") or "norun")[:8]
        directory = tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-{run}-")
    return save_checkpoint(state, meta, directory)


def remove_orphan_temp_dirs(root: str | Path | None = None) -> list[Path]:
    """Remove the temp checkpoint dirs on this machine whose writing process is gone (a worker killed
    between writing one and Ray persisting it: Ctrl-C, a lost node, a restart) -> those removed."""
    removed = []
    for path in Path(root or tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*"):
        pid = path.name[len(TEMP_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def checkpoint_due(epoch: int, every_epochs: int, epochs: int) -> bool:
    """Whether epoch `epoch` (0-based) of `epochs` saves a checkpoint: every `every_epochs` and the last."""
    return (epoch + 1) % every_epochs == 0 or epoch == epochs - 1


def report_epoch(metrics: dict[str, Any], epoch: int, state: dict[str, Any] | None = None,
                 meta: dict[str, Any] | None = None) -> None:
    """`ray.train.report` at the end of an epoch, from inside a Ray Train worker.

    On the epochs that checkpoint, the worker holding the weights (rank 0) passes `state` and
    `meta`; otherwise, and on the other workers, neither is passed and only `metrics` are reported.
    The checkpoint is written to a temp dir that is removed once `report` returns (Ray has copied it to
    the run's storage) or fails (Ray deletes it only after a successful copy: a report skipped because
    another worker died left a full copy behind), so nothing accumulates on the node's disk.
    """
    import ray.train

    if state is None:
        ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=f"checkpoint_epoch{epoch:05d}")
        return
    local = save_checkpoint_dir(state, meta or {})
    try:
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(local)),
                         checkpoint_dir_name=f"checkpoint_epoch{epoch:05d}", delete_local_checkpoint_after_upload=True)
    finally:
        shutil.rmtree(local, ignore_errors=True)


def resume(device: torch.device, **restore: Any) -> tuple[dict | None, int, int]:
    """Inside a Ray Train worker: restore from the checkpoint the run starts from, if there is one.

    Each keyword names a key of the checkpoint's state and the module or optimizer that loads it
    (``resume(device, model=model, optimizer=optimizer)``). Returns (state or None, the epoch to start
    at, the step count so far).
    """
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if not checkpoint:
        return None, 0, 0
    with checkpoint.as_directory() as d:
        state, _ = load_checkpoint(d, map_location=device)
    for key, target in restore.items():
        target.load_state_dict(state[key])
    return state, state["epoch"] + 1, state["step"]


def run_dir(storage_path: str, name: str) -> str:
    return storage.join(storage.absolute_storage(storage_path), name)


def latest_checkpoint(storage_path: str, name: str) -> tuple[str, dict] | None:
    """(uri, meta) of the newest checkpoint Ray Train kept for run `name`, or None.

    Ray names checkpoint dirs `checkpoint_<timestamp>`, which sort by time.
    """
    root = run_dir(storage_path, name)
    metas = sorted(
        rel for rel in storage.list_files(root, recursive=True)
        if rel.startswith("checkpoint_") and rel.count("/") == 1 and rel.endswith("/" + META_FILE)
    )
    if not metas:
        return None
    latest = metas[-1]
    return storage.join(root, latest.split("/")[0]), storage.read_json(storage.join(root, latest))


def resume_hint(name: str) -> str:
    """How a training job interrupted (Ctrl-C, a tracking server down) continues where it stopped."""
    return f"rerun with mlflow.run_name={name} (the same command) to resume from its last checkpoint"
