"""The tracking module against a real `mlflow server` (sqlite backend) and the default local store."""

import json
import tempfile
from pathlib import Path

import pytest

from landmarks import tracking
from landmarks.config import PretrainConfig
from landmarks.errors import UserError


def _roundtrip(run_name: str):
    cfg = PretrainConfig().model_dump(mode="json")
    cfg["data"]["aws_secret_access_key"] = "AKIA-SECRET"
    cfg["mlflow"]["password"] = "hunter2"
    run = tracking.start_run("tracking-test", run_name, tags={"dataset": "synthetic-faces", "backbone": "resnet18",
                                                                 "seed": 3, "budget": None})
    run.log_params(cfg)
    run.log_metrics({"loss": 1.5}, step=0)
    run.log_metrics({"loss": 0.5}, step=1)
    run.log_dict({"a": 1}, "info/a.json")
    run.finish()
    return run.run_id


def _check(run_id: str, downloads: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking.tracking_uri())
    got = client.get_run(run_id)
    assert got.info.status == "FINISHED"
    assert got.data.params["train.lr"] == "0.03" and got.data.params["model.backbone"] == "resnet50"
    assert got.data.params["data.aws_secret_access_key"] == "***" and got.data.params["mlflow.password"] == "***"
    assert "hunter2" not in json.dumps(got.data.params) and "AKIA" not in json.dumps(got.data.params)
    assert got.data.tags["dataset"] == "synthetic-faces" and got.data.tags["seed"] == "3"
    assert "budget" not in got.data.tags and got.data.tags["git_commit"]
    history = client.get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.5), (1, 0.5)]
    path = tracking.download_artifact(run_id, "info/a.json", downloads)
    assert json.loads(path.read_text()) == {"a": 1}


def test_against_mlflow_server(mlflow_server, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.chdir(tmp_path)
    run_id = _roundtrip("server-run")
    _check(run_id, tmp_path / "downloads")
    links = tracking.run_links(run_id)
    assert any("/#/experiments/" in line and line.endswith("/runs") for line in links)
    assert any(run_id in line and line.startswith("MLflow run:") for line in links)
    assert not (tmp_path / "mlflow.db").exists()


def test_default_local_store(in_tmp_cwd):
    assert tracking.tracking_uri() == f"sqlite:///{in_tmp_cwd}/mlflow.db"
    run_id = _roundtrip("local-run")
    _check(run_id, in_tmp_cwd / "downloads")
    assert (in_tmp_cwd / "mlflow.db").is_file() and (in_tmp_cwd / "mlartifacts").is_dir()
    assert "mlflow ui" in "\n".join(tracking.run_links(run_id))


def test_resume_same_run_and_rank_gating(in_tmp_cwd):
    first = tracking.start_run("resume", "r", tags={"dataset": "d"})
    first.log_params({"train": {"lr": 0.1}})
    first.log_metrics({"loss": 2.0}, step=0)
    again = tracking.start_run("resume", "r", run_id=first.run_id)
    assert again.run_id == first.run_id
    again.log_params({"train": {"lr": 0.1}, "extra": 1})  # already-logged params are skipped
    again.log_metrics({"loss": 1.0}, step=1)
    silent = tracking.RunLogger(first.run_id, enabled=False)  # rank != 0
    silent.log_metrics({"loss": 99.0}, step=2)
    from mlflow.tracking import MlflowClient

    hist = MlflowClient(tracking.tracking_uri()).get_metric_history(first.run_id, "loss")
    assert [m.value for m in hist] == [2.0, 1.0]


def test_missing_run_is_user_error(in_tmp_cwd):
    with pytest.raises(UserError, match="does not exist"):
        tracking.get_run("0123456789abcdef0123456789abcdef")


def test_find_runs_by_tags_name_status_and_parent(in_tmp_cwd):
    parent = tracking.start_run("find", "sweep-parent", tags={"sweep_role": "parent", "sweep_path": "/x/it's"})
    child = tracking.start_run("find", "trial_a=1", tags={"job": "regress", "pca_artifact": "pca/a.npz"},
                               parent_run_id=parent.run_id)
    child.finish()
    other = tracking.start_run("find", "trial_a=2", tags={"job": "regress"})

    def ids(runs):
        return {r.info.run_id for r in runs}

    assert ids(tracking.find_runs("find")) == {parent.run_id, child.run_id, other.run_id}
    assert ids(tracking.find_runs("find", tags={"sweep_path": "/x/it's", "sweep_role": "parent"})) == {parent.run_id}
    assert ids(tracking.find_runs("find", parent=parent.run_id)) == {child.run_id}
    assert ids(tracking.find_runs("find", tags={"job": "regress"}, status="FINISHED")) == {child.run_id}
    assert ids(tracking.find_runs("find", name="trial_a=2", status="RUNNING")) == {other.run_id}
    assert ids(tracking.find_runs("find", has_tag="pca_artifact")) == {child.run_id}
    assert tracking.find_runs("no-such-experiment", tags={"job": "regress"}) == []


def test_redact_and_safe_uri():
    assert tracking.redact_params({"a.secret_key": 1, "Token": 2, "x": 3}) == {"a.secret_key": "***", "Token": "***", "x": 3}
    assert tracking.safe_uri("http://user:pw@host:5000") == "http://host:5000"



def test_logging_a_model_leaves_the_process_tracking_uri_alone(in_tmp_cwd, monkeypatch):
    """A job logging its model must not redirect later runs in the same process (Tune trials)."""
    import mlflow
    import torch
    from mlflow.tracking._tracking_service import utils

    monkeypatch.setattr(utils, "_tracking_uri", None)  # as in a fresh process
    first = f"sqlite:///{in_tmp_cwd}/first.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", first)
    run = tracking.start_run("models", "m")
    run.log_torch_model(torch.nn.Linear(2, 1), name="linear")
    assert mlflow.get_tracking_uri() == first
    scratch = in_tmp_cwd / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where MLflow's downloads would stay
    model = tracking.load_torch_model(run.run_id, "linear")
    assert model.weight.shape == (1, 2) and mlflow.get_tracking_uri() == first
    assert list(scratch.iterdir()) == []  # the downloaded model files are gone; the model is in memory
    # Pinned from the installed versions (not inferred by re-loading the model in a subprocess).
    requirements = mlflow.artifacts.download_artifacts(f"runs:/{run.run_id}/linear/requirements.txt",
                                                       dst_path=str(in_tmp_cwd), tracking_uri=first)
    pins = Path(requirements).read_text().split()
    assert f"torch=={torch.__version__.split('+')[0]}" in pins and any(p.startswith("landmarks==") for p in pins)

    second = f"sqlite:///{in_tmp_cwd}/second.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", second)  # the next trial's store
    assert mlflow.get_tracking_uri() == second and tracking.tracking_uri() == second
