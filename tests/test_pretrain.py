"""MoCo pretraining through jobs/pretrain.py on Ray Train (CPU, tiny synthetic faces)."""

import hashlib
import json
import tempfile
from pathlib import Path

import pytest
import torch

from conftest import ROOT, job_env, run_job
from landmarks import tracking
from landmarks.train.checkpoint import latest_checkpoint, load_checkpoint_dir
from landmarks.train.pretrain_loop import COLLAPSED_KEY_SIMILARITY

PRESET = str(ROOT / "jobs" / "configs" / "pretrain_synthetic_cpu.yaml")
TINY = ["data.image_size=32", "train.batch_size=32", "moco.queue_size=64", "moco.jpeg=false",
        "train.log_every_steps=1", "ray.num_workers=2", "ray.cpus_per_worker=0.5"]


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def _queue_sha(state: dict) -> str:
    h = hashlib.sha256()
    h.update(state["model"]["queue"].numpy().tobytes())
    h.update(state["model"]["queue_ptr"].numpy().tobytes())
    return h.hexdigest()


@pytest.mark.slow
def test_two_workers_loss_falls_then_resume_continues(tiny_faces, tmp_path, monkeypatch, ray_address):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = job_env(uri, RAY_ADDRESS=ray_address)
    common = [f"data.path={tiny_faces}", "mlflow.run_name=tiny", f"checkpoint.storage_path={tmp_path}/ray", *TINY]
    # Milder views and a higher lr than the paper so that 40 CPU steps show learning.
    easy = ["train.lr=0.2", "moco.crop_min_scale=0.5", "moco.color_jitter=0.2"]
    local_copies = set(Path(tempfile.gettempdir()).glob("landmarks-ckpt-*"))
    out = run_job("pretrain.py", "--config", PRESET, *common, *easy, "train.epochs=8",
                  "--metrics-out", str(tmp_path / "m1.json"), cwd=tmp_path, env=env)
    # Rank 0's epoch lines reach the driver once each (Ray Train's print() echoed them twice).
    assert (out.stdout + out.stderr).count("[pretrain] epoch 8/8  loss") == 1, out.stdout[-3000:]
    # Ray Train's INFO lines (worker group started, checkpoint created, result reported) only with --verbose.
    for line in ("Started training worker group", "Checkpoint successfully created", "Reporting training result"):
        assert line not in out.stdout + out.stderr, line
    # Each epoch's checkpoint is written to a temp dir that Ray deletes once it is in storage.
    assert set(Path(tempfile.gettempdir()).glob("landmarks-ckpt-*")) <= local_copies
    m1 = json.loads((tmp_path / "m1.json").read_text())
    run_id = m1["mlflow_run_id"]
    client = _client(uri)
    epoch_losses = [m.value for m in client.get_metric_history(run_id, "epoch_loss")]
    assert len(epoch_losses) == 8
    # The queue (64 keys) is full after two steps; from then on the loss must fall. An epoch here is
    # 5 steps of 2 x 16 images, its loss noisy by ~0.05: compare three-epoch means.
    early, late = sum(epoch_losses[1:4]) / 3, sum(epoch_losses[-3:]) / 3
    assert late < early - 0.05, epoch_losses
    run = client.get_run(run_id)
    assert run.data.tags["backbone"] == "resnet18" and run.data.tags["dataset"] == "synthetic-faces"
    assert {"loss", "positive_prob", "prob", "lr", "images_per_sec", "key_similarity"} <= set(run.data.metrics)
    # The landmark probe: the initial weights (probe_epoch 0), then every epoch, beside the mean shape's error.
    probe = sorted(client.get_metric_history(run_id, "probe_iod"), key=lambda m: m.step)
    assert len(probe) == 9 and all(0 < m.value < 200 for m in probe)
    epochs = sorted(client.get_metric_history(run_id, "probe_epoch"), key=lambda m: m.step)
    assert [m.value for m in epochs] == list(range(9))
    assert "probe_mean_shape_iod" in run.data.metrics and "probe IOD" in out.stdout + out.stderr
    # Healthy keys stay spread out, below the job's collapse warning; the summary reports the final value.
    assert -0.1 < m1["key_similarity"] < COLLAPSED_KEY_SIMILARITY
    assert m1["key_similarity"] == pytest.approx(run.data.metrics["final_key_similarity"])
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"backbone", "checkpoint"} <= artifacts
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    backbone = tracking.load_torch_model(run_id, "backbone_model")
    assert backbone(torch.zeros(2, 3, 32, 32)).shape == (2, 128)
    ckpt_uri, meta = latest_checkpoint(str(tmp_path / "ray"), "tiny")
    assert meta["epoch"] == 7 and meta["mlflow_run_id"] == run_id
    saved_state, _ = load_checkpoint_dir(ckpt_uri)
    steps_before = max(m.step for m in client.get_metric_history(run_id, "loss"))

    # Rerun the same experiment with more epochs: resumes at epoch 8 with the saved queue.
    run_job("pretrain.py", "--config", PRESET, *common, *easy, "train.epochs=9",
            "--metrics-out", str(tmp_path / "m2.json"), cwd=tmp_path, env=env)
    m2 = json.loads((tmp_path / "m2.json").read_text())
    assert m2["mlflow_run_id"] == run_id and m2["epochs"] == 9
    run = client.get_run(run_id)
    assert run.data.tags["resumed_from_epoch"] == "7"
    assert run.data.tags["resume_queue_sha256"] == _queue_sha(saved_state)
    epochs = [int(m.value) for m in client.get_metric_history(run_id, "epoch")]
    assert epochs == list(range(9))  # epoch 8 logged once, after 0..7: nothing redone
    steps = sorted(m.step for m in client.get_metric_history(run_id, "loss"))
    assert steps[-1] > steps_before and len(steps) == len(set(steps))


def test_bad_inputs_fail_before_work(tiny_faces, tmp_path, ray_local, monkeypatch, capsys):
    """In process (the job's command line minus the interpreter start): each bad input is one error line
    before any worker starts; the session's Ray has 2 CPUs."""
    from landmarks.cli import job_main
    from landmarks.config import PretrainConfig
    from landmarks.train.checkpoint import save_checkpoint_dir
    from landmarks.train.pretrain import run_pretrain

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    # A checkpoint of another backbone under the run name "tiny".
    save_checkpoint_dir({"epoch": 0}, {"epoch": 0, "backbone": "resnet18"}, tmp_path / "ray" / "tiny" /
                        "checkpoint_epoch00000")
    base = ["--config", PRESET, f"checkpoint.storage_path={tmp_path}/ray", *TINY]
    cases = [
        ([f"data.path={tmp_path}/nope"], "no dataset.json"),
        ([f"data.path={tiny_faces}", "ray.num_workers=64", "train.batch_size=64"], "the Ray cluster has"),
        ([f"data.path={tiny_faces}", "train.batch_size=33"], "not divisible by ray.num_workers"),
        ([f"data.path={tiny_faces}", "train.batch_size=128"], "moco.queue_size=64 is smaller than train.batch_size=128"),
        ([f"data.path={tiny_faces}", "probe.query_split=nope"], "has no split 'nope'"),
        ([f"data.path={tiny_faces}", "mlflow.run_name=tiny", "model.backbone=resnet50_half"],
         "from backbone 'resnet18'"),
    ]
    for extra, text in cases:
        code = job_main(PretrainConfig, run_pretrain, None, [*base, *extra])
        err = capsys.readouterr().err
        assert code != 0 and text in err and "Traceback" not in err, (extra, err)
