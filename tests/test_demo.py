"""`make demo` with the tiny preset, end to end: report, MLflow runs and the comparison exist."""

import subprocess
import sys

import pytest

from conftest import ROOT, job_env


@pytest.mark.slow
def test_tiny_demo_end_to_end(tmp_path, ray_address):
    out = subprocess.run([sys.executable, str(ROOT / "jobs" / "demo.py"), "--preset", "tiny", "--out",
                          str(tmp_path / "demo_output")], check=False, cwd=tmp_path,
                         env=job_env(RAY_ADDRESS=ray_address),  # the session's Ray: no start-up of its own
                         capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-6000:] + out.stdout[-3000:]
    text = out.stdout
    for stage in ("1/6", "2/6", "3/6", "4/6", "5/6", "6/6", "=== summary ==="):
        assert stage in text
    assert "pretrained beats random init at" in text and "mlflow ui" in text
    assert text.rstrip().splitlines()[-1].startswith("total time: ")  # the summary ends the output

    report = tmp_path / "demo_output" / "report"
    assert (report / "summary.md").is_file()
    assert list((report / "tables").glob("*.md")) and list((report / "figures").glob("*.png"))

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("demo")
    runs = client.search_runs([exp.experiment_id], max_results=500)
    jobs = [r.data.tags.get("job") for r in runs]
    for job in ("pretrain", "train_projector", "match", "segment", "report"):
        assert job in jobs, jobs
    regress = [r for r in runs if r.data.tags.get("job") == "regress" and r.info.status == "FINISHED"]
    sources = {r.data.params["backbone.source"] for r in regress}
    assert "random" in sources and len(sources) == 2  # pretrained vs random, compared
    assert all("iod" in r.data.metrics for r in regress)
    assert {r.data.params["resolved.lr"] for r in regress} == {"0.01"}  # the demo's rate at every budget
    # The sweep of the real regress job: every grid point (budgets x inits) a finished child of its parent.
    parents = [r for r in runs if r.data.tags.get("sweep_role") == "parent"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert {r.data.tags.get("mlflow.parentRunId") for r in regress} == {parents[0].info.run_id}
    assert sorted({r.data.tags["budget"] for r in regress}) == ["5", "all"] and len(regress) == 4


def test_budget_table_averages_this_demos_sweep_only(tmp_path, monkeypatch):
    """The summary's table: mean IOD per budget and init over the finished regress runs of this
    demo's sweep; runs of an earlier demo (another sweep) in the same experiment stay out."""
    from mlflow.tracking import MlflowClient

    from landmarks.demo import budget_table, sweep_name

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    exp = client.create_experiment("demo", artifact_location=str(tmp_path / "artifacts"))
    backbone, older = "a" * 32, "b" * 32

    def regress_run(source, budget, iod, sweep, status="FINISHED"):
        run = client.create_run(exp, tags={"job": "regress", "sweep": sweep})
        client.log_param(run.info.run_id, "backbone.source", source)
        client.log_param(run.info.run_id, "annotations", budget)
        client.log_metric(run.info.run_id, "iod", iod)
        client.set_terminated(run.info.run_id, status)

    for source, budget, iod in ((backbone, "10", 40.0), (backbone, "10", 42.0), ("random", "10", 45.0),
                                (backbone, "all", 30.0), ("random", "all", 33.0), ("random", "all", 34.0)):
        regress_run(source, budget, iod, sweep_name(backbone))
    regress_run("random", "all", 10.0, sweep_name(older))  # an earlier demo's random init
    regress_run("random", "10", 1.0, sweep_name(backbone), status="FAILED")

    assert budget_table("demo", backbone) == {"10": {"pretrained": 41.0, "random": 45.0},
                                              "all": {"pretrained": 30.0, "random": 33.5}}
