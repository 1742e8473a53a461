"""End-to-end fine-tuning: the model, the Ray Data view of the annotated rows, jobs/finetune.py on 2 Ray
Train workers, and its errors.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

import _eval_data
from landmarks.cli import job_main
from landmarks.config import FinetuneConfig
from landmarks.data import load_manifest, read_split_numpy
from landmarks.data.reader import load_split
from landmarks.models import LandmarkRegressor, build_backbone
from landmarks.models.formats import load_checkpoint
from landmarks.models.representation import assemble
from landmarks.sources import load_backbone
from landmarks.train.finetune import run_finetune, train_view
from landmarks.train.finetune_loop import LandmarkNet, param_groups

PRESET = str(_eval_data.ROOT / "jobs" / "configs" / "finetune_synthetic_cpu.yaml")
MISSING_RUN = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize("kind", ["conv4", "hypercolumn"])
def test_landmark_net_equals_the_regressor_on_the_dense_map(kind):
    torch.manual_seed(0)
    net = LandmarkNet(build_backbone("resnet18"), 5, kind, 4, (16, 16)).eval()
    regressor = LandmarkRegressor(net.regressor.heatmaps.in_channels, 5)
    regressor.load_state_dict(net.regressor.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = regressor(assemble(net.backbone.stages(x), kind, 4, (16, 16)))
        torch.testing.assert_close(net(x), expected, atol=1e-4, rtol=1e-4)  # x100 softmax of N(0, 1) weights
    # Only parameters that reach the output train (DDP rejects unused ones); the head at lr, backbone at backbone_lr.
    net.train()
    net(x).sum().backward()
    trainable = [p for p in net.parameters() if p.requires_grad]
    assert all(p.grad is not None for p in trainable)
    assert any(p.requires_grad for p in net.backbone.layer4.parameters()) == (kind == "hypercolumn")
    assert not any(p.requires_grad for p in net.backbone.fc.parameters())  # the MoCo head
    head, body = param_groups(net, 1e-3, 1e-4)
    assert head["lr_scale"] == 1.0 and body["lr_scale"] == pytest.approx(0.1)
    assert len(head["params"]) + len(body["params"]) == len(trainable)


def test_train_view_crops_like_evaluation_and_keeps_the_budget(eval_data):
    faces = str(eval_data["faces"])
    raw = read_split_numpy(faces, "train")
    keep = frozenset(str(i) for i in raw["image_id"][[1, 4, 7]])
    border = load_manifest(faces).border  # 7 px of 46 stored at a 32 px input
    view = train_view(raw, keep, border=border, image_size=32)
    expected = load_split(faces, "train", 32, rows=[1, 4, 7])  # the evaluation jobs' geometry
    assert view["image"].shape == (3, 32, 32, 3) and view["image"].dtype == np.uint8
    np.testing.assert_array_equal(view["image"], expected["image"])
    np.testing.assert_allclose(view["keypoints"], expected["keypoints"])
    assert len(train_view(raw, frozenset(), border, 32)["image"]) == 0


@pytest.mark.slow
def test_finetune_end_to_end(eval_data, ray_address, tmp_path):
    args = ["--config", PRESET, f"data.path={eval_data['faces']}", "data.image_size=32", "train.epochs=2",
            "train.batch_size=8", "ray.num_workers=2", "max_failures=0", "--metrics-out", "m.json"]
    proc = _eval_data.run_job("finetune", args, tmp_path, ray_address)
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert np.isfinite(metrics["iod"]) and metrics["iod"] > 0 and metrics["epochs"] == 2

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(metrics["mlflow_run_id"])
    tags = run.data.tags
    assert run.info.status == "FINISHED" and run.data.metrics["iod"] == pytest.approx(metrics["iod"])
    assert {k: tags[k] for k in ("job", "dataset", "backbone", "representation", "init", "finetuned")} == {
        "job": "finetune", "dataset": "synthetic-faces", "backbone": "resnet18", "representation": "conv4",
        "init": "random", "finetuned": "1"}
    assert (run.data.params["resolved.lr"], run.data.params["train.backbone_lr"]) == ("0.001", "0.0001")
    # 2 epochs of 14 rows a worker in batches of 4, the last partial (the official DataLoader keeps it)
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 2 * math.ceil((28 // 2) / 4)
    client.download_artifacts(run.info.run_id, "predictions/predictions.npz", str(tmp_path))

    # The backbone itself was trained: its conv4 weights moved away from the seeded initialisation.
    state, meta = load_checkpoint(Path(metrics["checkpoint"]))
    initial, _ = load_backbone("random", "resnet18", seed=0)
    moved = state["model"]["backbone.layer3.0.conv1.weight"] - initial.layer3[0].conv1.weight
    assert moved.abs().max() > 0
    torch.testing.assert_close(state["model"]["backbone.layer4.0.conv1.weight"], initial.layer4[0].conv1.weight)
    assert meta["iod"] == pytest.approx(metrics["iod"]) and meta["mlflow_run_id"] == metrics["mlflow_run_id"]

    # The run's inputs, and its model: the fine-tuned backbone + regressor predict what the run scored.
    assert {i.dataset.name for i in run.inputs.dataset_inputs} == {"synthetic-faces/train", "synthetic-faces/test"}
    model = _eval_data.logged_model(tmp_path, metrics["mlflow_run_id"])
    assert (model.task, model.meta["architecture"]["representation"], model.meta["iod"]) == (
        "landmarks", "conv4", pytest.approx(metrics["iod"]))
    test = load_split(str(eval_data["faces"]), "test", 32)
    logged = np.load(tmp_path / "predictions.npz")
    np.testing.assert_allclose(model.predict(test["image"])["landmarks"], logged["pred"], atol=1e-3)


def test_finetune_bad_input(eval_data, tmp_path, monkeypatch, capsys):
    faces = str(eval_data["faces"])
    base = ["--config", PRESET, f"data.path={faces}", "data.image_size=32"]
    proc = _eval_data.run_job("finetune", base + [f"backbone.source={MISSING_RUN}"], tmp_path, timeout=300)
    _eval_data.assert_one_line_error(proc, MISSING_RUN, "does not exist")  # through the real script

    monkeypatch.chdir(tmp_path)  # the rest through the same entry point, in this process
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    for extra, needles in [
        (["annotations=1000"], ("annotations=1000", "rows of the train split")),
        (["representation=projected"], ("representation=conv4",)),
        (["annotations=2"], ("ray.num_workers",)),  # batches of 1 per worker
        (["train.batch_size=7"], ("train.batch_size", "ray.num_workers")),
    ]:
        code = job_main(FinetuneConfig, run_finetune, None, base + extra)
        _eval_data.assert_one_line_error((code, capsys.readouterr().err), *needles)


@pytest.mark.slow
def test_ctrl_c_stops_the_train_workers_and_reaches_the_job(ray_local, tmp_path):
    """fine-tuning and projector training run on `cluster.fit_torch_trainer`: Ctrl-C in the driver stops the
    Ray Train workers and raises KeyboardInterrupt there (Ray Train's own handler swallowed it: the job could
    not mark its run KILLED), and the driver's SIGINT handler is Python's again afterwards."""
    import signal
    import time

    from landmarks.cluster import fit_torch_trainer
    from landmarks.config import load_config

    beat = tmp_path / "beat"

    def loop(config):  # beats (appends to a file) for a minute on rank 0
        import ray.train

        for _ in range(300 if ray.train.get_context().get_world_rank() == 0 else 0):
            with beat.open("a") as f:
                f.write(".")
            time.sleep(0.2)

    cfg = load_config(FinetuneConfig, PRESET, ["ray.num_workers=2", "ray.cpus_per_worker=0.5", "max_failures=0",
                                               f"checkpoint.storage_path={tmp_path}/ray"])
    _eval_data.interrupt_when(lambda: beat.exists() and beat.stat().st_size > 2)
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        fit_torch_trainer(loop, {}, cfg, "ctrl-c", False, {}, "fine-tuning")
    assert time.monotonic() - t0 < 50  # stopped, not run to its end
    assert not _eval_data.keeps_growing(beat)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
