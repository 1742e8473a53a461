"""MoCo pretraining through jobs/pretrain.py on Ray Train (CPU, tiny synthetic faces)."""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch

from _eval_data import RAY_FORWARDED_LINE, job_stderr_lines
from conftest import ROOT, VENV_BIN, free_port, job_env, run_job, stop_group, wait_http
from landmarks import tracking
from landmarks.data.loader import epoch_steps
from landmarks.data.manifest import Manifest
from landmarks.models.formats import load_checkpoint
from landmarks.train.checkpoint import TEMP_PREFIX, latest_checkpoint
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


class Job:
    """jobs/pretrain.py as a child process whose output is read as it comes (for signals mid-run)."""

    def __init__(self, args: list[str], cwd: Path, env: dict):
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "jobs" / "pretrain.py"), *args], cwd=cwd, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                         for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, lines: list[str]) -> None:
        for line in stream:  # each line seen as the child writes it
            lines.append(line)  # noqa: PERF402

    def wait_for(self, condition, what: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.proc.poll() is None, f"exited {self.proc.returncode} before {what}:\n{self.text()[-4000:]}"
            assert time.monotonic() < deadline, f"no {what} in {timeout:.0f}s:\n{self.text()[-4000:]}"
            time.sleep(0.2)

    def finish(self, timeout: float = 180) -> tuple[int, str, str]:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            stop_group(self.proc)
            raise AssertionError(f"still running after {timeout:.0f}s:\n{self.text()[-6000:]}") from None
        for reader in self._readers:
            reader.join(10)
        return code, "".join(self.out), "".join(self.err)

    def text(self) -> str:
        return "".join(self.out) + "".join(self.err)


def _temp_checkpoints(run_id: str | None = None) -> set[Path]:
    """The temp checkpoint dirs on this machine (of one run: `train.checkpoint.TEMP_PREFIX`)."""
    return set(Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*" + (f"-{run_id[:8]}-*" if run_id else "")))


def _job_lines(err: str) -> list[str]:
    """The lines of stderr the job printed: not Ray's forwarded lines, nor Ray Data's driver-side INFO records
    (the parquet read estimate)."""
    return [ln for ln in job_stderr_lines(err) if not re.match(r"\d{4}-\d\d-\d\d [\d:,]+\tINFO ", ln)]


def _job_tracebacks(text: str) -> list[str]:
    """Traceback lines of the job or its Train workers. Ray's own actors may log theirs: the
    PlacementGroupCleaner's "Found multiple active Ray instances" when another Ray runs on the machine."""
    return [ln for ln in text.splitlines() if "Traceback" in ln and ("RayTrainWorker" in ln or
                                                                     not RAY_FORWARDED_LINE.match(ln))]


def _max_step(client, run_id: str, key: str = "loss") -> int:
    return max((m.step for m in client.get_metric_history(run_id, key)), default=-1)


@pytest.mark.slow
def test_ctrl_c_kills_the_run_then_the_rerun_resumes_it_loss_falls_no_step_twice(tiny_faces, tmp_path, monkeypatch,
                                                                                 ray_address):
    """Ctrl-C (SIGINT to the driver) in epoch 5 of 8, checkpoints every 4 epochs: exit 130 with one line saying
    how to resume, the MLflow run KILLED; the same command resumes it from epoch 4 with the saved queue,
    logs no step twice (the interrupted attempt had logged steps past its checkpoint), and the loss falls.
    Every temp checkpoint dir is gone afterwards."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = job_env(uri, RAY_ADDRESS=ray_address, PYTHONUNBUFFERED="1")
    # Milder views and a higher lr than the paper so that 40 CPU steps show learning.
    args = ["--config", PRESET, f"data.path={tiny_faces}", "mlflow.run_name=tiny", f"checkpoint.storage_path={tmp_path}/ray",
            *TINY, "train.lr=0.2", "moco.crop_min_scale=0.5", "moco.color_jitter=0.2", "train.epochs=8",
            "checkpoint.every_epochs=4", "--metrics-out", str(tmp_path / "m1.json")]
    client = _client(uri)
    # Steps an epoch: each of 2 workers gets half the train split in batches of 16, the last one partial.
    spe = epoch_steps(Manifest.load(str(tiny_faces)).splits["train"].rows, 2, 16)
    first = Job(args, tmp_path, env)
    first.wait_for(lambda: "[pretrain] epoch 4/8" in first.text(), "end of epoch 4")  # the checkpoint of epoch 4
    run_id = tracking_run_id(client, "tiny")
    first.wait_for(lambda: _max_step(client, run_id) >= 4 * spe + 2, "2 steps of epoch 5")
    t0 = time.monotonic()
    first.proc.send_signal(signal.SIGINT)
    code, out, err = first.finish()
    stopped_in = time.monotonic() - t0
    assert code == 130, out[-3000:] + err[-3000:]
    assert _job_lines(err) == [(f"interrupted: pretraining stopped; MLflow run {run_id} marked KILLED; rerun with "
                      "mlflow.run_name=tiny (the same command) to resume from its last checkpoint")], err[-3000:]
    assert not _job_tracebacks(out + err) and stopped_in < 60, err[-3000:]
    assert client.get_run(run_id).info.status == "KILLED"
    ckpt_uri, meta = latest_checkpoint(str(tmp_path / "ray"), "tiny")
    assert (meta["epoch"], meta["step"], meta["mlflow_run_id"]) == (3, 4 * spe, run_id), first.text()[-3000:]
    assert _max_step(client, run_id) > 4 * spe  # the aborted epoch's points, past the checkpoint
    saved_state, _ = load_checkpoint(ckpt_uri)

    # The same command resumes the same MLflow run at epoch 4 with the saved queue.
    out = run_job("pretrain.py", *args, cwd=tmp_path, env=env)
    # Rank 0's epoch lines reach the driver once each (Ray Train's print() echoed them twice).
    assert (out.stdout + out.stderr).count("[pretrain] epoch 8/8  loss") == 1, out.stdout[-3000:]
    assert "[pretrain] resuming tiny from" in out.stdout and "(epoch 4 done)" in out.stdout
    # Ray Train's INFO lines (worker group started, checkpoint created, result reported) only with --verbose.
    for line in ("Started training worker group", "Checkpoint successfully created", "Reporting training result"):
        assert line not in out.stdout + out.stderr, line
    m1 = json.loads((tmp_path / "m1.json").read_text())
    assert m1["mlflow_run_id"] == run_id and m1["epochs"] == 8
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.source.name"] == "jobs/pretrain.py"
    assert run.data.tags["resumed_from_epoch"] == "3"
    assert run.data.tags["resume_queue_sha256"] == _queue_sha(saved_state)
    assert [int(m.value) for m in client.get_metric_history(run_id, "epoch")] == list(range(8))  # nothing twice
    for key in ("loss", "key_similarity", "positive_prob"):
        steps = sorted(m.step for m in client.get_metric_history(run_id, key))
        assert steps == list(range(1, 8 * spe + 1)), (key, steps)  # every step logged once
    # Each checkpoint is written to a temp dir removed once Ray has it in storage (or the worker is gone).
    assert not _temp_checkpoints(run_id)  # (other jobs on this machine may have theirs in flight)

    epoch_losses = [m.value for m in sorted(client.get_metric_history(run_id, "epoch_loss"), key=lambda m: m.step)]
    assert len(epoch_losses) == 8
    # The queue (64 keys) is full after two steps; from then on the loss must fall. An epoch here is
    # ~6 steps of 2 x 16 images, its loss noisy by ~0.05: compare three-epoch means.
    early, late = sum(epoch_losses[1:4]) / 3, sum(epoch_losses[-3:]) / 3
    assert late < early - 0.05, epoch_losses
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
    assert latest_checkpoint(str(tmp_path / "ray"), "tiny")[1]["epoch"] == 7


def tracking_run_id(client, name: str, timeout: float = 120) -> str:
    """The id of the run called `name` (the job creates it before its workers start)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                  f"attributes.run_name = '{name}'")
        if runs:
            return runs[0].info.run_id
        time.sleep(0.5)
    raise AssertionError(f"no MLflow run {name!r} in {timeout:.0f}s")


@pytest.mark.slow
def test_a_tracking_server_down_longer_than_the_retries_is_one_line(tiny_faces, tmp_path, ray_address):
    """The MLflow server stopped after epoch 1, for longer than MLflow's (lowered) retries: one error line naming
    the server and how to resume, no traceback, exit 1; the run cannot be marked (left RUNNING)."""
    server = start_mlflow_server(tmp_path / "server")
    # A request in flight when the server stops waits for its answer: MLFLOW_HTTP_REQUEST_TIMEOUT (120 s) lowered too.
    env = job_env(server["url"], RAY_ADDRESS=ray_address, PYTHONUNBUFFERED="1", MLFLOW_HTTP_REQUEST_MAX_RETRIES="1",
                  MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1", MLFLOW_HTTP_REQUEST_TIMEOUT="5")
    args = ["--config", PRESET, f"data.path={tiny_faces}", "mlflow.run_name=down",
            f"checkpoint.storage_path={tmp_path}/ray", *TINY, "train.epochs=6", "max_failures=0"]
    try:
        job = Job(args, tmp_path, env)
        job.wait_for(lambda: "[pretrain] epoch 1/6" in job.text(), "end of epoch 1")
    finally:
        stop_group(server["proc"])
    code, out, err = job.finish()
    store = _client(f"sqlite:///{server['db']}")  # the server's own store
    run_id = store.search_runs(["1"])[0].info.run_id
    assert code == 1, err[-3000:]
    assert _job_lines(err) == [(
        f"error: pretraining failed: the MLflow tracking server {server['url']} does not answer (Connection refused, "
        f"after 1 retries, MLFLOW_HTTP_REQUEST_MAX_RETRIES); MLflow run {run_id} left RUNNING; once the server "
        "answers, rerun with mlflow.run_name=down (the same command) to resume from its last checkpoint")], err[-3000:]
    assert not _job_tracebacks(out + err), err[-3000:]
    assert store.get_run(run_id).info.status == "RUNNING"


def start_mlflow_server(root: Path) -> dict:
    """A real `mlflow server` of this test alone (the session's must stay up), like conftest's fixture."""
    root.mkdir()
    port = free_port()
    log = open(root / "server.log", "w")  # noqa: SIM115 (the server writes it until stopped)
    proc = subprocess.Popen(
        [str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--artifacts-destination", str(root / "artifacts"),
         "--workers", "1"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health", proc=proc)
    except BaseException:
        stop_group(proc)
        raise
    return {"url": url, "proc": proc, "db": root / "mlflow.db", "log": log}


def test_orphan_temp_checkpoints_of_dead_workers_are_removed(tmp_path):
    from landmarks.train.checkpoint import remove_orphan_temp_dirs, save_checkpoint_dir

    written = save_checkpoint_dir({"epoch": 0}, {"mlflow_run_id": "abcd1234" + "0" * 24})
    try:  # a temp dir named by the process that wrote it and its run (what _temp_checkpoints(run_id) finds)
        assert written.name.startswith(f"{TEMP_PREFIX}{os.getpid()}-abcd1234-")
        assert written.parent == Path(tempfile.gettempdir()) and (written / "state.pt").is_file()
    finally:
        shutil.rmtree(written)

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    orphan, live = tmp_path / f"{TEMP_PREFIX}{dead}-abcd1234-x1", tmp_path / f"{TEMP_PREFIX}{os.getpid()}-abcd1234-x2"
    other = tmp_path / "landmarks-ckpt-notapid"
    for d in (orphan, live, other):
        d.mkdir()
        (d / "state.pt").write_bytes(b"0" * 1000)
    assert remove_orphan_temp_dirs(tmp_path) == [orphan]
    assert not orphan.exists() and live.exists() and other.exists()


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
