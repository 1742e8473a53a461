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

    import landmarks.models  # noqa: F401  (torchvision's first import makes torch's inductor dir in the temp dir)

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


def test_a_server_that_does_not_answer_is_one_line_naming_it(monkeypatch):
    """Nothing listens on the port (a stopped server): after MLflow's (lowered) retries, one error naming it."""
    from conftest import free_port
    from landmarks.errors import TrackingUnavailable

    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    logger = tracking.RunLogger("0" * 32, uri=url)
    with pytest.raises(TrackingUnavailable) as caught:
        logger.log_metrics({"loss": 1.0}, step=3)
    message = str(caught.value)
    assert message.startswith(f"the MLflow tracking server {url} does not answer (Connection refused, after 0 "
                              "retries"), message
    assert "\n" not in message and caught.value.__cause__ is None and caught.value.__suppress_context__
    assert logger.fail("boom") is False  # one quick try, no retries: the server is still down

    with pytest.raises(TrackingUnavailable, match=r"left RUNNING; once the server answers, rerun with x"), \
            logger.ending("pretraining", rerun="rerun with x"):
        logger.log_metrics({"loss": 1.0}, step=4)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    with pytest.raises(TrackingUnavailable, match=f"{url} does not answer"):
        tracking.start_run("down", "r")


def test_ending_marks_the_run_killed_on_ctrl_c_and_failed_on_an_error(in_tmp_cwd):
    from mlflow.tracking import MlflowClient

    from landmarks.errors import Interrupted

    client = MlflowClient(tracking.tracking_uri())
    stopped = tracking.start_run("ending", "stopped")
    with pytest.raises(Interrupted) as caught, \
            stopped.ending("pretraining", rerun="rerun with mlflow.run_name=stopped to resume"):
        raise KeyboardInterrupt
    assert str(caught.value) == (f"pretraining stopped; MLflow run {stopped.run_id} marked KILLED; rerun with "
                                 "mlflow.run_name=stopped to resume")
    assert isinstance(caught.value, KeyboardInterrupt)
    assert client.get_run(stopped.run_id).info.status == "KILLED"

    failed = tracking.start_run("ending", "failed")
    with pytest.raises(ValueError, match="bad row"), failed.ending("regress"):
        raise ValueError("bad row")
    run = client.get_run(failed.run_id)
    assert run.info.status == "FAILED" and run.data.tags["error"] == "ValueError: bad row"


def test_a_resumed_attempt_does_not_log_steps_the_run_already_has(in_tmp_cwd):
    """Attempt 1 logged steps 1..45 and its checkpoint is at 40; attempt 2 redoes 41..45, then goes on."""
    from mlflow.tracking import MlflowClient

    first = tracking.start_run("steps", "r")
    for step in range(5, 46, 5):
        first.log_metrics({"loss": 1.0, "lr": 0.1}, step=step)
    first.log_metrics({"epoch": 7.0}, step=40)
    again = tracking.RunLogger(first.run_id)
    again.skip_logged_steps()
    for step in range(45, 56, 5):
        again.log_metrics({"loss": 2.0, "lr": 0.2}, step=step)
    again.log_metrics({"epoch": 8.0}, step=45)  # the epoch metric had no point at 45 yet: kept
    client = MlflowClient(tracking.tracking_uri())
    loss = [(m.step, m.value) for m in client.get_metric_history(first.run_id, "loss")]
    assert sorted(loss) == [(s, 1.0) for s in range(5, 46, 5)] + [(50, 2.0), (55, 2.0)]
    assert sorted((m.step, m.value) for m in client.get_metric_history(first.run_id, "epoch")) == [(40, 7.0), (45, 8.0)]


def test_a_pickled_module_loads_weights_only_and_anything_else_is_refused(tmp_path):
    """`load_torch_model` reads an mlflow.pytorch model's whole pickled module weights-only: our backbones
    and torch's modules load; a pickled function (code that would run on unpickling) is refused."""
    import os
    import pickle

    import torch

    from landmarks.models.backbones import build_backbone
    from landmarks.models.formats import load_pickled_module

    backbone = build_backbone("resnet18_quarter")
    torch.save(backbone, tmp_path / "model.pth")
    loaded = load_pickled_module(tmp_path / "model.pth")
    assert type(loaded) is type(backbone)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), backbone.state_dict().values()))
    torch.save({"module": torch.nn.Linear(2, 1), "hook": os.getcwd}, tmp_path / "evil.pth")
    with pytest.raises(pickle.UnpicklingError, match="getcwd"):
        load_pickled_module(tmp_path / "evil.pth")
