"""Baselines (jobs/baseline.py): the mean shape computed independently, the supervised network's training,
the same annotated rows as regress, and the job end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import _eval_data
from landmarks.cli import JobArgs
from landmarks.config import BaselineConfig, RegressConfig, load_config
from landmarks.data.reader import load_split
from landmarks.evaluate.baseline import check_baseline, run_baseline
from landmarks.evaluate.regress import check_regression
from landmarks.models import MapRegressor, build_backbone

PRESET = str(_eval_data.ROOT / "jobs" / "configs" / "baseline_synthetic_cpu.yaml")


def _cfg(data: str, *overrides: str) -> BaselineConfig:
    return load_config(BaselineConfig, PRESET, [f"data.path={data}", "data.image_size=32", *overrides])


@pytest.fixture
def in_process(tmp_path, monkeypatch):
    """Evaluate in this process (as inside a Tune trial), MLflow in a temp sqlite store."""
    monkeypatch.setenv("LANDMARKS_IN_PROCESS", "1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")


def test_baselines_use_the_rows_regress_uses(eval_data):
    faces = str(eval_data["faces"])
    for budget, repeat in (("all", 0), (5, 0), (5, 2)):
        base = check_baseline(_cfg(faces, f"annotations={budget}", f"repeat={repeat}"))
        reg = check_regression(load_config(RegressConfig, None, [f"data.path={faces}", f"annotations={budget}",
                                                                 f"repeat={repeat}"]))
        assert list(base.rows) == list(reg.rows)
    limited = check_baseline(_cfg(faces, "annotations=5"))
    n = limited.manifest.splits["train"].rows
    assert limited.settings.tps_augment and limited.settings.samples_per_epoch == 5 * (min(1000, n) // 5)


def test_mean_shape_is_the_naive_mean_of_the_annotated_rows(eval_data, in_process):
    faces = str(eval_data["faces"])
    cfg = _cfg(faces, "method=mean_shape", "annotations=6", "repeat=1")
    metrics = run_baseline(cfg, JobArgs(None, None, False))
    rows = check_baseline(cfg).rows
    train, test = load_split(faces, "train", 32, rows=rows), load_split(faces, "test", 32)
    shape = np.zeros((5, 2))
    for k in range(5):  # a naive loop: each landmark's mean over the annotated rows where it is visible
        shape[k] = np.mean([train["keypoints"][i, k] for i in range(len(rows)) if train["visible"][i, k]], axis=0)
    errors = []
    for i in range(len(test["keypoints"])):  # inter-ocular error of the mean shape on every test face
        gt = test["keypoints"][i]
        iod = np.linalg.norm(gt[0] - gt[1])
        errors += [np.linalg.norm(shape[k] - gt[k]) / iod for k in range(5) if test["visible"][i, k]]
    assert metrics["iod"] == pytest.approx(100 * np.mean(errors), rel=1e-5)
    run = in_process.get_run(metrics["mlflow_run_id"])
    assert (run.data.tags["job"], run.data.tags["method"], run.data.tags["budget"]) == ("baseline", "mean_shape", "6")


def test_map_regressor_shapes():
    for size in (32, 48, 96):
        model = MapRegressor(build_backbone("resnet18_quarter"), 5, size)
        assert model(torch.zeros(2, 3, size, size)).shape == (2, 5, 2)


@pytest.mark.slow
def test_supervised_baseline_trains_from_scratch(eval_data, in_process):
    """From random init on the 28 training faces: its loss falls, and it is scored on the test split."""
    faces = str(eval_data["faces"])
    cfg = _cfg(faces, "method=supervised", "train.epochs=20", "model.backbone=resnet18_quarter", "train.batch_size=8")
    metrics = run_baseline(cfg, JobArgs(None, None, False))
    assert metrics["steps"] == 20 * 4 and np.isfinite(metrics["iod"]) and metrics["iod"] > 0
    history = in_process.get_metric_history(metrics["mlflow_run_id"], "train_loss")
    losses = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert len(losses) == 20 and np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3]), losses
    run = in_process.get_run(metrics["mlflow_run_id"])
    assert (run.data.tags["method"], run.data.tags["backbone"], run.data.tags["init"]) == (
        "supervised", "resnet18_quarter", "supervised")
