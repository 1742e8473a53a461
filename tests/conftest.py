"""Shared fixtures: real services started on 127.0.0.1 and stopped by PID afterwards."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 90.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status < 500:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not come up in {timeout:.0f}s")


def stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """TERM the process group, then KILL what is left."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(5)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` with a sqlite backend on 127.0.0.1; yields its URL."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = open(root / "server.log", "w")  # noqa: SIM115 (the server writes it until the session ends)
    proc = subprocess.Popen(
        [str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--artifacts-destination", str(root / "artifacts"),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=root,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health", proc=proc)
        yield url
    finally:
        stop_group(proc)
        log.close()


@pytest.fixture
def in_tmp_cwd(tmp_path, monkeypatch):
    """Run in an empty directory with the default (local) MLflow store."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the session (2 CPUs), shut down at the end."""
    import ray

    from landmarks.cluster import connect

    connect(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def eval_data(tmp_path_factory, ray_local) -> dict[str, Path]:
    """The small evaluation datasets of tests/_eval_data.py, ingested once per session."""
    import _eval_data

    return _eval_data.build_all(tmp_path_factory.getbasetemp() / "eval-data")


@pytest.fixture(scope="session")
def ray_address(ray_local) -> str:
    """The session's Ray instance, for job subprocesses to join (RAY_ADDRESS) instead of each
    starting its own (10-20 s apiece here)."""
    return ray_local.get_runtime_context().gcs_address


def job_env(tracking_uri: str | None = None, **extra: str) -> dict[str, str]:
    """Environment for a job subprocess: the given MLflow URI, and its own local Ray unless `extra`
    names a RAY_ADDRESS to join (never the in-process mode some tests set for themselves)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "LANDMARKS_IN_PROCESS")}
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    env.update(extra)
    return env


def run_job(script: str, *args: str, cwd: Path, env: dict | None = None, timeout: float = 600,
            check: bool = True) -> subprocess.CompletedProcess:
    """Run jobs/<script> through its real entry point; on failure show the tail of its output."""
    out = subprocess.run([sys.executable, str(ROOT / "jobs" / script), *args], cwd=cwd, env=env or job_env(),
                         capture_output=True, text=True, timeout=timeout, check=False)
    if check and out.returncode != 0:
        raise AssertionError(f"{script} exited {out.returncode}\n--- stderr ---\n{out.stderr[-6000:]}"
                             f"\n--- stdout ---\n{out.stdout[-3000:]}")
    return out


@pytest.fixture(scope="session")
def tiny_faces(tmp_path_factory, ray_local) -> Path:
    """200 synthetic faces at a 32 px input (46 px stored), ingested on the session's Ray (the command
    line, jobs/ingest.py, is tested in test_ingest.py)."""
    from landmarks.data import ingest

    out = tmp_path_factory.mktemp("tiny-faces") / "faces"
    ingest("synthetic-faces", None, str(out), image_size=32, rows_per_shard=50,
           options={"num_images": 200, "seed": 0}, progress=False)
    return out
