"""The development recipes, run for real: cluster/local_up.sh brings up a head and a worker
Ray node on this machine, a `ray job submit --working-dir` job lands a task on the worker, a
pretraining job submitted there survives a killed training worker, cluster/local_down.sh leaves no
process behind; cluster/mlflow_server.sh serves MLflow with basic auth on 127.0.0.1 and accepts the
Host names the Kubernetes manifest allows.

Slow (minutes on 2 cores): the clusters are their own, beside the session's Ray.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import ROOT, VENV_BIN, free_port, stop_group, wait_http

UP = ROOT / "cluster" / "local_up.sh"
DOWN = ROOT / "cluster" / "local_down.sh"


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def free_port_base() -> int:
    """A base whose fixed ports (base..base+19) and worker-port ranges (base+100..+299) are free,
    below the ephemeral range, so a developer's own local cluster on the default base is left alone."""
    for base in range(24100, 32000, 400):
        if all(port_is_free(p) for p in [*range(base, base + 20), *range(base + 100, base + 300)]):
            return base
    raise RuntimeError("no free port range for a test cluster")


def processes_mentioning(text: str) -> list[str]:
    """Command lines of running processes that contain `text` (zombies have none)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{proc.name}: {cmdline[:200]}")
    return found


def processes_in_groups(pgids: set[int]) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[2]) in pgids:
            found.append(int(proc.name))
    return found


@pytest.fixture
def cluster_env():
    """Environment for the scripts: a short state dir outside the repo (unix socket paths are
    limited to 107 bytes), free ports, no inherited RAY_ADDRESS."""
    state = Path(tempfile.mkdtemp(prefix="lmray-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(LANDMARKS_RAY_DIR=str(state), LANDMARKS_RAY_PORT_BASE=str(free_port_base()),
               PATH=f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}")
    yield env
    shutil.rmtree(state, ignore_errors=True)


def run(cmd: list[str], env: dict, timeout: float, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False)


def exported(output: str, name: str) -> str:
    line = next((ln for ln in output.splitlines() if ln.strip().startswith(f"export {name}=")), None)
    assert line, f"local_up.sh did not print `export {name}=...`:\n{output}"
    return line.strip().split("=", 1)[1]


TASK = textwrap.dedent("""
    import sys
    import ray

    ray.init()
    worker = [n["NodeID"] for n in ray.nodes() if n["Alive"] and "worker_node" in n["Resources"]]

    @ray.remote(resources={"worker_node": 1})
    def where():
        # The working dir was unpacked on this node too: the payload travels with the job.
        return ray.get_runtime_context().get_node_id(), open("payload.txt").read().strip()

    node, payload = ray.get(where.remote())
    print("TASK_NODE", node, "WORKER_NODES", worker, "PAYLOAD", payload)
    sys.exit(0 if [node] == worker and payload == "shipped-with-the-job" else 1)
""")


def _train_worker_pids(state: Path) -> list[int]:
    """Ray Train workers of this test's cluster: children of its raylets, whose command lines name its
    state dir (other tests may train on other Ray instances meanwhile)."""
    raylets = {int(line.split(":")[0]) for line in processes_mentioning(str(state)) if "raylet" in line}
    out = subprocess.run(["pgrep", "-f", "RayTrainWorker"], capture_output=True, text=True, check=False)
    pids = []
    for pid in (int(p) for p in out.stdout.split()):
        try:
            ppid = int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if ppid in raylets:
            pids.append(pid)
    return sorted(pids)


def _job_logs(address: str, job_id: str, env: dict, follow: bool = False) -> str:
    out = subprocess.run([str(VENV_BIN / "ray"), "job", "logs", "--address", address,
                          *(["--follow"] if follow else []), job_id],
                         env=env, capture_output=True, text=True, timeout=600 if follow else 120, check=False)
    return out.stdout


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_node_cluster_runs_jobs_survives_a_killed_worker_and_goes_down(cluster_env, tiny_faces, tmp_path):
    """The one two-node test: cluster/local_up.sh, a `ray job submit --working-dir` task placed on the worker
    node, then pretraining submitted with `ray job submit` whose training worker is killed after a checkpoint
    (restarted from it by max_failures; the job succeeds), then cluster/local_down.sh leaves nothing behind."""
    state = Path(cluster_env["LANDMARKS_RAY_DIR"])
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    up = None
    try:
        up = run(["bash", str(UP)], cluster_env, timeout=420)
        assert up.returncode == 0, f"local_up.sh failed:\n{up.stdout}\n{up.stderr}"
        assert exported(up.stdout, "RAY_AUTH_MODE") == "token"
        address = exported(up.stdout, "RAY_ADDRESS")
        dashboard = f"http://127.0.0.1:{int(cluster_env['LANDMARKS_RAY_PORT_BASE']) + 1}"
        assert dashboard in up.stdout, "prints the dashboard URL"
        # Each node has its own temp dir, outside the repository.
        assert (state / "head" / "session_latest").exists() and (state / "worker" / "session_latest").exists()
        assert not state.resolve().is_relative_to(ROOT)

        client_env = {**cluster_env, "RAY_AUTH_MODE": "token", "RAY_ADDRESS": address}
        # `ray status` shows the autoscaler's view, refreshed every few seconds: a node that local_up saw
        # join (`ray list nodes`) may take a report or two to appear there on a loaded machine.
        deadline = time.monotonic() + 60
        while True:
            status = run([str(VENV_BIN / "ray"), "status"], client_env, timeout=120)
            assert status.returncode == 0, status.stderr
            nodes = [ln for ln in status.stdout.split("Pending:")[0].splitlines() if ln.strip().startswith("1 node_")]
            if len(nodes) == 2 or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert len(nodes) == 2, status.stdout
        assert "/2.0 CPU" in status.stdout, "each node advertises --num-cpus 1"

        # A task with the worker node's resource lands there, with the job's working dir unpacked.
        job_dir = tmp_path / "job"
        job_dir.mkdir()
        (job_dir / "task.py").write_text(TASK)
        (job_dir / "payload.txt").write_text("shipped-with-the-job\n")
        job = run([str(VENV_BIN / "ray"), "job", "submit", "--working-dir", str(job_dir), "--",
                   "python", "task.py"], client_env, timeout=300, cwd=tmp_path)
        assert job.returncode == 0, f"job failed:\n{job.stdout[-3000:]}\n{job.stderr[-3000:]}"
        assert "TASK_NODE" in job.stdout and "PAYLOAD shipped-with-the-job" in job.stdout

        # Pretraining submitted to the cluster; a training worker killed after the first checkpoint.
        job_id = f"landmarks-test-{os.getpid()}"
        submit = run(
            [str(VENV_BIN / "ray"), "job", "submit", "--submission-id", job_id, "--no-wait", "--working-dir", str(ROOT),
             "--runtime-env-json", json.dumps({"env_vars": {"MLFLOW_TRACKING_URI": uri}}), "--",
             "python", "jobs/pretrain.py", "--config", "jobs/configs/pretrain_synthetic_cpu.yaml",
             f"data.path={tiny_faces}", f"checkpoint.storage_path={tmp_path}/ray", "mlflow.run_name=fault",
             "data.image_size=32", "train.batch_size=32", "moco.queue_size=64", "moco.jpeg=false",
             "train.log_every_steps=1", "ray.num_workers=2", "train.epochs=4", "max_failures=2",
             "ray.cpus_per_worker=0.25", f"--metrics-out={tmp_path}/m.json"], client_env, timeout=300)
        assert submit.returncode == 0, submit.stdout[-4000:] + submit.stderr[-2000:]
        dashboard_address = dashboard
        first = tmp_path / "ray" / "fault" / "checkpoint_epoch00001"
        deadline = time.monotonic() + 400
        while not first.exists():
            assert time.monotonic() < deadline, "no checkpoint: " + _job_logs(dashboard_address, job_id, client_env)
            time.sleep(0.5)
        pids = _train_worker_pids(state)
        assert pids, "no Ray Train worker process found"
        os.kill(pids[-1], signal.SIGKILL)
        logs = _job_logs(dashboard_address, job_id, client_env, follow=True)  # returns when the job ends
        job_status = run([str(VENV_BIN / "ray"), "job", "status", "--address", dashboard_address, job_id],
                         client_env, timeout=120).stdout
        assert "succeeded" in job_status.lower(), job_status + logs[-4000:]
        metrics = json.loads((tmp_path / "m.json").read_text())
        assert metrics["epochs"] == 4
        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("pretrain-synthetic").experiment_id])
        assert len(runs) == 1 and runs[0].info.run_id == metrics["mlflow_run_id"]
        epochs = [int(m.value) for m in client.get_metric_history(metrics["mlflow_run_id"], "epoch")]
        assert epochs[-1] == 3 and set(epochs) == set(range(4))
        # Restarted from a checkpoint (epoch 0 or 1, whichever Ray had registered when the worker died).
        assert int(runs[0].data.tags["resumed_from_epoch"]) in (0, 1)
    finally:
        pgids = {int((state / f"{n}.pid").read_text()) for n in ("head", "worker") if (state / f"{n}.pid").exists()}
        down = run(["bash", str(DOWN)], cluster_env, timeout=180)
    assert down.returncode == 0, f"local_down.sh failed:\n{down.stdout}\n{down.stderr}"
    assert len(pgids) == 2, "local_up.sh records one process group per node"
    assert not (state / "head.pid").exists() and not (state / "worker.pid").exists()
    assert processes_in_groups(pgids) == [], "processes of the cluster's groups survived local_down.sh"
    assert processes_mentioning(str(state)) == [], "Ray processes of this cluster survived local_down.sh"


def mlflow_manifest_env() -> dict[str, str]:
    docs = yaml.safe_load_all((ROOT / "cluster" / "k8s" / "mlflow.yaml").read_text())
    deployment = next(d for d in docs if d and d["kind"] == "Deployment")
    return {e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
            if "value" in e}


def request(url: str, user: str | None = None, password: str | None = None, body: dict | None = None,
            host: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    if user is not None:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    if host is not None:
        req.add_header("Host", host)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def listening_addresses(port: int) -> set[str]:
    """Local IPv4 addresses with a listening TCP socket on `port` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        ip_hex, port_hex = local.split(":")
        if state == "0A" and int(port_hex, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(ip_hex)[::-1]))
    return found


def check_mlflow_server(base: str, port: int, proc: subprocess.Popen) -> None:
    wait_http(base + "/health", timeout=180, proc=proc)
    assert listening_addresses(port) == {"127.0.0.1"}, "bound to localhost when MLFLOW_HOST is unset"

    search = base + "/api/2.0/mlflow/experiments/search?max_results=5"
    assert request(search)[0] == 401, "no credentials, no data"
    assert request(search, "admin", "wrong")[0] == 401
    assert request(search, "admin", "admin-pw-for-test")[0] == 200

    # The README's flow: the admin creates the user that Ray jobs log as (Secret mlflow-client).
    code, body = request(base + "/api/2.0/mlflow/users/create", "admin", "admin-pw-for-test",
                         {"username": "ray", "password": "ray-pw-for-test"})
    assert code == 200, body
    code, body = request(base + "/api/2.0/mlflow/experiments/create", "ray", "ray-pw-for-test",
                         {"name": "pretrain"})
    assert code == 200, body

    # Host headers: the manifest's in-cluster Service name passes, other names are refused.
    assert request(search, "ray", "ray-pw-for-test", host="mlflow.landmarks.svc.cluster.local:5000")[0] == 200
    assert request(search, "ray", "ray-pw-for-test", host="mlflow.evil.example:5000")[0] == 403


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_mlflow_server_script_basic_auth_on_localhost(tmp_path):
    try:
        import flask_wtf  # noqa: F401
    except ImportError:
        pytest.fail("MLflow's basic-auth app needs Flask-WTF: depend on mlflow[auth] in pyproject.toml")

    port = free_port()
    manifest = mlflow_manifest_env()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_PORT=str(port), MLFLOW_WORKERS="1", MLFLOW_DATA_DIR=str(tmp_path / "data"),
               MLFLOW_AUTH_ADMIN_PASSWORD="admin-pw-for-test", MLFLOW_FLASK_SERVER_SECRET_KEY="test-key",
               MLFLOW_SERVER_ALLOWED_HOSTS=manifest["MLFLOW_SERVER_ALLOWED_HOSTS"],
               PATH=f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}")
    with open(tmp_path / "server.log", "w") as log:
        proc = subprocess.Popen(["bash", str(ROOT / "cluster" / "mlflow_server.sh")], env=env, cwd=tmp_path,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            check_mlflow_server(f"http://127.0.0.1:{port}", port, proc)
        finally:
            stop_group(proc, grace=20)
    assert (tmp_path / "data" / "basic_auth.db").exists() and (tmp_path / "data" / "mlflow.db").exists()
