"""Figure-ground segmentation: the block-wise head, annotation budgets, jobs/segment.py end to end
(linear on cached features as a Ray task; fine-tuned in-process), and its errors.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

import _eval_data
from landmarks.cli import job_main
from landmarks.config import SegmentConfig, load_config
from landmarks.data import load_manifest
from landmarks.data.budgets import annotated_rows, budget_indices
from landmarks.data.reader import load_split
from landmarks.errors import UserError
from landmarks.evaluate.segment import mask_figure, run_segment
from landmarks.metrics import mask_iou
from landmarks.models import Projector, SegmentationHead, build_backbone
from landmarks.models.representation import Representation, assemble

PRESET = str(_eval_data.ROOT / "jobs" / "configs" / "segment_synthetic_cpu.yaml")
MISSING_RUN = "0123456789abcdef0123456789abcdef"
FAST = ["data.image_size=32", "train.lr=0.01", "train.batch_size=16", "train.samples_per_epoch=112"]


@pytest.mark.parametrize("kind", ["hypercolumn", "conv4", "projected"])
def test_blockwise_logits_equal_the_head_on_the_dense_map(kind):
    torch.manual_seed(0)
    backbone = build_backbone("resnet18").eval()
    projector = Projector(960, 8) if kind == "projected" else None
    rep = Representation(kind, backbone, {}, projector, 4, [0.5] * 3, [0.25] * 3)
    head = SegmentationHead(rep.channels)
    with torch.no_grad():
        stages = backbone.stages(torch.randn(2, 3, 32, 32))
        dense = assemble(stages, rep.kind, 4, (16, 16))
        expected = head(projector(dense) if projector else dense, 32)
        got = rep.mask_logits(head, stages, (16, 16), 32)
    assert got.shape == (2, 32, 32)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_annotated_rows_follow_the_seeded_budget(eval_data):
    faces = str(eval_data["faces"])
    manifest = load_manifest(faces)
    n = manifest.splits["train"].rows

    def rows(*overrides):
        return annotated_rows(load_config(SegmentConfig, PRESET, [f"data.path={faces}", *overrides]), manifest)

    assert list(rows()) == list(range(n))
    assert list(rows("annotations=5", "train.seed=3", "repeat=1")) == sorted(budget_indices(n, 5, seed=4))
    assert len(rows("data.fraction=0.5")) == round(0.5 * n)
    with pytest.raises(UserError, match=f"annotations={n + 1} is more than the {n} rows"):
        rows(f"annotations={n + 1}")
    with pytest.raises(UserError, match="not both"):
        rows("annotations=5", "data.fraction=0.5")


def test_mask_figure_shows_input_truth_and_prediction():
    images = np.zeros((2, 32, 32, 3), np.uint8)
    gt = np.zeros((2, 32, 32), bool)
    gt[:, 8:24, 8:24] = True
    fig = np.asarray(mask_figure(images, gt, ~gt))
    assert fig.shape == (2 * 96 + 2, 3 * 96 + 4, 3)  # two rows of three 96 px tiles
    assert fig[48, 98 + 48].min() == 255 and fig[48, 196 + 48].max() == 0  # gt fg / pred bg at the centre


@pytest.mark.slow
def test_segment_linear_end_to_end(eval_data, ray_address, tmp_path):
    args = ["--config", PRESET, f"data.path={eval_data['faces']}", *FAST, "--metrics-out", "m.json"]
    proc = _eval_data.run_job("segment", args, tmp_path, ray_address)
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["iou_all_background"] == 0.0  # every synthetic face has a foreground
    assert metrics["iou"] > max(metrics["iou_all_foreground"], 0.5), metrics

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(metrics["mlflow_run_id"])
    tags = run.data.tags
    assert run.info.status == "FINISHED" and run.data.metrics["iou"] == pytest.approx(metrics["iou"])
    assert {k: tags[k] for k in ("job", "dataset", "backbone", "representation", "budget", "init", "finetuned")} == {
        "job": "segment", "dataset": "synthetic-faces", "backbone": "resnet18", "representation": "hypercolumn",
        "budget": "all", "init": "random", "finetuned": "0"}
    assert tags["features.train"] in ("hit", "miss")
    png = client.download_artifacts(run.info.run_id, "segmentation/masks.png", str(tmp_path))
    assert Image.open(png).size[0] == 3 * 96 + 4


@pytest.mark.slow
def test_segment_finetuned_in_process(eval_data, tmp_path):
    """finetune=true trains the backbone too; LANDMARKS_IN_PROCESS runs the job without a Ray task."""
    args = ["--config", PRESET, f"data.path={eval_data['faces']}", *FAST, "finetune=true", "annotations=20",
            "train.epochs=2", "train.samples_per_epoch=40", "train.batch_size=10", "--metrics-out", "m.json"]
    env = dict(_eval_data.job_env(tmp_path), LANDMARKS_IN_PROCESS="1")
    proc = subprocess.run([sys.executable, str(_eval_data.ROOT / "jobs" / "segment.py"), *args], check=False,
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert 0.0 <= metrics["iou"] <= 1.0
    run = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(metrics["mlflow_run_id"])
    assert (run.data.tags["finetuned"], run.data.tags["budget"]) == ("1", "20")
    assert run.data.params["resolved.train_rows"] == "20"
    assert len(MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_metric_history(run.info.run_id,
                                                                                  "train_loss")) == 2 + 1
    # Its model (fine-tuned backbone + head) segments the test split as the run scored it.
    model = _eval_data.logged_model(tmp_path, metrics["mlflow_run_id"])
    test = load_split(str(eval_data["faces"]), "test", 32)
    pred = model.predict(test["image"])["mask"]
    assert model.task == "mask" and pred.shape == (len(test["image"]), 32, 32)
    assert mask_iou(pred, test["mask"] > 127) == pytest.approx(metrics["iou"], abs=0.01)


def test_segment_bad_input(eval_data, tmp_path, monkeypatch, capsys):
    faces = str(eval_data["faces"])
    base = ["--config", PRESET, "data.image_size=32"]
    proc = _eval_data.run_job("segment", base + [f"data.path={eval_data['dots']}"], tmp_path, timeout=300)
    _eval_data.assert_one_line_error(proc, "no foreground masks")  # through the real script

    monkeypatch.chdir(tmp_path)  # the rest through the same entry point, in this process
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    for extra, needles in [
        (["annotations=1000"], ("annotations=1000", "rows of the train split")),
        ([f"backbone.source={MISSING_RUN}"], (MISSING_RUN, "does not exist")),
        (["finetune=true", "representation=projected"], ("finetune=true", "projected")),
        (["representation=projected"], ("projector.source",)),
    ]:
        code = job_main(SegmentConfig, run_segment, None, base + [f"data.path={faces}"] + extra)
        _eval_data.assert_one_line_error((code, capsys.readouterr().err), *needles)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")  # all refused before an MLflow run was created
    assert not client.search_runs([e.experiment_id for e in client.search_experiments()])
