"""Ray Tune sweeps (landmarks.sweep): nested MLflow runs, mean +- std per cell, failures, resume.

Most tests sweep `toy`, a job registered here whose run function logs a metric computed from its
config (iod = 100 lr + annotations / 10 + repeat / 2) and leaves one marker line per execution
in the directory `data.path` names. The real `regress` job is swept in tests/test_predict.py
(registering its best trial) and by the tiny demo (annotation budgets).
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import ROOT, job_env
from landmarks import registry, tracking
from landmarks.cli import JobArgs
from landmarks.config import to_flat_dict
from landmarks.errors import ConfigError, UserError
from landmarks.sweep import SweepConfig, load_sweep, plan_sweep, run_sweep, sweep_main, trial_run_name
from landmarks.sweep_aggregate import cell_label

CONFIGS = ROOT / "jobs" / "configs"


def run_toy(cfg, args):
    """The toy job: fails for train.lr == 0.666 (with repeat 1 if train.seed == 1), sleeps
    train.epochs / 10 s, logs iod, appends a line to <data.path>/<run name>."""
    run = tracking.start_run(cfg.mlflow.experiment, cfg.mlflow.run_name,
                             tags={"job": "toy", "dataset": "toy", "budget": cfg.annotations, "repeat": cfg.repeat})
    run.log_params(to_flat_dict(cfg))
    try:
        time.sleep(cfg.train.epochs / 10)
        if cfg.train.lr == 0.666 and (cfg.train.seed != 1 or cfg.repeat == 1):
            raise UserError("toy job: this learning rate always fails")
        budget = 100 if cfg.annotations == "all" else cfg.annotations
        iod = 100 * cfg.train.lr + budget / 10 + cfg.repeat / 2
        run.log_metrics({"iod": iod})
    except BaseException as err:
        run.fail(str(err))
        raise
    run.finish()
    with open(Path(cfg.data.path) / cfg.mlflow.run_name, "a") as f:
        f.write("ran\n")
    return {"iod": iod, "mlflow_run_id": run.run_id}


@pytest.fixture
def toy_job(monkeypatch):
    """Register `toy`; Ray workers unpickle run_toy by value (this module is not importable there)."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    monkeypatch.setitem(registry.JOBS, "toy", ("landmarks.config:RegressConfig", f"{__name__}:run_toy"))
    yield "toy"
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def _toy(marks: Path, grid: dict, **kw) -> SweepConfig:
    marks.mkdir(exist_ok=True)
    return SweepConfig(job="toy", grid=grid, name=kw.pop("name", "toy"), mlflow={"experiment": "sweeps"},
                       overrides={"data.path": str(marks), "train.epochs": 1, **kw.pop("overrides", {})},
                       resources_per_trial={"cpu": 0.5}, **kw)


def _children(parent_id: str) -> list:
    return tracking.find_runs("sweeps", parent=parent_id)


def _marks(marks: Path) -> dict[str, int]:
    return {p.name: len(p.read_text().splitlines()) for p in marks.iterdir()}


# ----------------------------------------------------------------------------- before any trial


def test_bad_grids_fail_before_any_trial(toy_job, in_tmp_cwd):
    with pytest.raises(ConfigError, match="grid is empty"):
        load_sweep(None, ["job=toy", "grid={}"])
    with pytest.raises(ConfigError, match=r"grid.train.lr must be a non-empty list"):
        load_sweep(None, ["job=toy", "grid={train.lr: 0.1}"])
    with pytest.raises(ConfigError) as err:
        plan_sweep(SweepConfig(job="toy", grid={"train.learning_rate": [0.1]}))
    assert "train.learning_rate" in str(err.value) and "train.lr" in str(err.value) and "valid keys" in str(err.value)
    with pytest.raises(ConfigError, match="annotations"):
        plan_sweep(SweepConfig(job="toy", grid={"annotations": [10, 0]}))
    with pytest.raises(ConfigError, match="unknown job 'regresss'"):
        load_sweep(None, ["job=regresss", "grid={repeat: [0]}"])
    with pytest.raises(ConfigError, match="set by the sweep"):
        plan_sweep(SweepConfig(job="toy", grid={"mlflow.run_name": ["a"]}))
    with pytest.raises(ConfigError, match="no default mode"):
        load_sweep(None, ["job=toy", "grid={repeat: [0]}", "metric=accuracy"])


def test_cli_errors_exit_2_without_starting_ray(toy_job, in_tmp_cwd, capsys):
    import ray

    was_up = ray.is_initialized()
    assert sweep_main(None, ["job=toy", "grid={repeat: [0, 1]}", "train.lr_typo=1"]) == 2
    err = capsys.readouterr().err
    assert "train.lr_typo" in err and "valid keys" in err and "Traceback" not in err
    assert sweep_main(None, ["job=toy", "grid={}"]) == 2
    assert ray.is_initialized() == was_up


def test_cli_routes_keys_to_sweep_grid_and_job(in_tmp_cwd):
    cfg = load_sweep(CONFIGS / "sweep_synthetic_cpu.yaml",
                     ["data.path=/tmp/faces", "grid.repeat=[0, 1, 2]", "max_concurrent=3", "overrides.train.epochs=2"])
    assert cfg.overrides["data.path"] == "/tmp/faces" and cfg.overrides["train.epochs"] == 2
    assert cfg.grid["repeat"] == [0, 1, 2] and cfg.max_concurrent == 3 and cfg.name == "sweep_synthetic_cpu"
    assert Path(cfg.base_config).is_file()  # found next to the sweep preset
    assert trial_run_name("s", {"train.lr": 0.01, "annotations": "all"}) == "s_lr=0.01_annotations=all"


@pytest.mark.parametrize("preset", sorted(p.name for p in CONFIGS.glob("sweep_*.yaml")))
def test_presets_load_and_plan(preset, in_tmp_cwd):
    cfg = load_sweep(CONFIGS / preset)
    assert cfg.job in registry.JOBS and cfg.grid
    if not Path(cfg.base_config).is_file():
        pytest.skip(f"{cfg.base_config} (preset of job {cfg.job}) is not written yet")
    try:
        plan = plan_sweep(cfg)
    except UserError as err:
        if "cannot be loaded" in str(err):
            pytest.skip(str(err))
        raise
    assert len(plan.points) == len(set(plan.run_names.values())) > 1


# ----------------------------------------------------------------------------- with Ray


def test_2x2x2_nested_runs_and_mean_std(toy_job, in_tmp_cwd, ray_local):
    marks = in_tmp_cwd / "marks"
    cfg = _toy(marks, {"train.lr": [0.1, 0.2], "annotations": [10, 20], "repeat": [0, 1]}, max_concurrent=2)
    metrics = run_sweep(cfg, JobArgs(None, None, False))

    parent = tracking.get_run(metrics["mlflow_run_id"])
    children = _children(parent.info.run_id)
    assert len(children) == 8 and all(c.info.status == "FINISHED" for c in children)
    assert {c.info.run_name for c in children} == {
        f"toy_lr={lr}_annotations={a}_repeat={r}" for lr in (0.1, 0.2) for a in (10, 20) for r in (0, 1)}
    assert all(v == 1 for v in _marks(marks).values()) and len(_marks(marks)) == 8

    cells: dict[tuple, list[float]] = {}  # recomputed from the child runs
    for c in children:
        cells.setdefault((c.data.params["train.lr"], c.data.params["annotations"]), []).append(c.data.metrics["iod"])
    assert len(cells) == 4
    logged = parent.data.metrics
    for (lr, ann), values in cells.items():
        label = cell_label({"train.lr": float(lr), "annotations": int(ann)})
        assert logged[f"cell/{label}/iod_mean"] == pytest.approx(statistics.fmean(values))
        assert logged[f"cell/{label}/iod_std"] == pytest.approx(statistics.stdev(values))
        assert logged[f"cell/{label}/n"] == 2
    best = min(cells, key=lambda k: statistics.fmean(cells[k]))
    assert metrics["iod"] == pytest.approx(statistics.fmean(cells[best])) == pytest.approx(11.25)
    assert parent.data.tags["best.train.lr"] == "0.1" and parent.data.tags["best.annotations"] == "10"
    assert metrics["best_cell"] == {"train.lr": 0.1, "annotations": 10} and metrics["failed"] == 0
    table = tracking.download_artifact(parent.info.run_id, "sweep/cells.csv", in_tmp_cwd / "downloaded").read_text()
    assert "iod_mean" in table and len(table.strip().splitlines()) == 5

    # The same command again restores the finished experiment: nothing reruns, same parent run.
    again = run_sweep(cfg, JobArgs(None, None, False))
    assert again["mlflow_run_id"] == metrics["mlflow_run_id"] and again["iod"] == pytest.approx(metrics["iod"])
    assert all(v == 1 for v in _marks(marks).values())
    assert len(tracking.find_runs("sweeps", tags={"sweep_role": "parent"})) == 1


def test_failing_trial_leaves_the_others_and_all_failing_exits_nonzero(toy_job, in_tmp_cwd, ray_local, capsys):
    marks = in_tmp_cwd / "marks"
    cfg = _toy(marks, {"train.lr": [0.1, 0.666], "repeat": [0, 1]}, name="partly", overrides={"train.seed": 1})
    metrics = run_sweep(cfg, JobArgs(None, None, False))
    assert metrics["failed"] == 1 and metrics["failed_trials"] == ["partly_lr=0.666_repeat=1"]
    assert metrics["finished"] == 3 and metrics["iod"] == pytest.approx(20.25)
    assert "FAILED partly_lr=0.666_repeat=1: " in capsys.readouterr().out
    children = {c.info.run_name: c for c in _children(metrics["mlflow_run_id"])}
    assert children["partly_lr=0.666_repeat=1"].info.status == "FAILED"
    assert "always fails" in children["partly_lr=0.666_repeat=1"].data.tags["error"]
    assert sum(c.info.status == "FINISHED" for c in children.values()) == 3

    cfg = _toy(marks, {"train.lr": [0.666], "repeat": [0, 1]}, name="broken")
    assert sweep_main(None, [f"{k}={json.dumps(v)}" for k, v in {
        "job": "toy", "name": "broken", "grid": cfg.grid, "mlflow.experiment": "sweeps",
        "resources_per_trial.cpu": 0.5, "data.path": str(marks), "train.epochs": 1}.items()]) == 1
    err = capsys.readouterr().err
    assert "all 2 trials failed" in err and "always fails" in err
    parent = tracking.find_runs("sweeps", tags={"sweep": "broken", "sweep_role": "parent"})[0]
    assert parent.info.status == "FAILED"


INTERRUPTED = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    import ray.cloudpickle
    import test_sweep
    from landmarks import registry
    from landmarks.sweep import sweep_main

    ray.cloudpickle.register_pickle_by_value(test_sweep)  # the trials cannot import it
    registry.JOBS["toy"] = ("landmarks.config:RegressConfig", "test_sweep:run_toy")
    sys.exit(sweep_main(None, sys.argv[1:]))
""")


@pytest.mark.slow
def test_interrupted_sweep_resumes_without_rerunning_finished_trials(tmp_path, ray_address):
    """Ctrl-C (SIGINT) after two trials, then the same command: every trial ran exactly once."""
    marks = tmp_path / "marks"
    marks.mkdir()
    script = tmp_path / "sweep_toy.py"
    script.write_text(INTERRUPTED.format(tests=str(ROOT / "tests")))
    args = [sys.executable, str(script), "job=toy", "name=resumable", "mlflow.experiment=sweeps",
            "grid={train.lr: [0.1, 0.2, 0.3], repeat: [0, 1]}", "max_concurrent=2", "resources_per_trial.cpu=0.5",
            f"data.path={marks}", "train.epochs=30"]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = job_env(uri, RAY_ADDRESS=ray_address)  # both drivers join the session's Ray (no start-up each)
    first = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while len(list(marks.iterdir())) < 2 and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.5)
    first.send_signal(signal.SIGINT)
    out, _ = first.communicate(timeout=120)
    assert first.returncode == 130, out[-3000:]
    done_before = _marks(marks)
    assert 2 <= len(done_before) < 6, out[-3000:]

    second = subprocess.run(args, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert _marks(marks) == {f"resumable_lr={lr}_repeat={r}": 1 for lr in (0.1, 0.2, 0.3) for r in (0, 1)}
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        parents = tracking.find_runs("sweeps", tags={"sweep_role": "parent"})
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        children = _children(parents[0].info.run_id)
        assert sum(c.info.status == "FINISHED" for c in children) == 6
        assert all(c.info.status in ("FINISHED", "KILLED") for c in children)
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
