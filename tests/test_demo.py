"""`make demo` with the tiny preset, end to end: report, MLflow runs and the comparison exist."""

import subprocess
import sys

import pytest

from conftest import ROOT, job_env


@pytest.mark.slow
def test_tiny_demo_end_to_end(tmp_path, ray_address):
    out = subprocess.run([sys.executable, str(ROOT / "jobs" / "demo.py"), "--preset", "tiny", "--out",
                          str(tmp_path / "demo_output"), "--metrics-out", str(tmp_path / "demo.json")],
                         check=False, cwd=tmp_path,
                         env=job_env(RAY_ADDRESS=ray_address),  # the session's Ray: no start-up of its own
                         capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-6000:] + out.stdout[-3000:]
    text = out.stdout
    for stage in ("1/6", "2/6", "3/6", "4/6", "5/6", "6/6", "=== summary ==="):
        assert stage in text
    assert "MoCo pretrained beats random init at" in text and "mlflow ui" in text
    assert "mean shape" in text and "supervised" in text and "landmark probe" in text
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
    assert {r.data.params["resolved.lr"] for r in regress} == {"0.001"}  # the demo's rate at every budget
    head = {(r.data.params["regressor.init_std"], r.data.params["regressor.points_per_landmark"]) for r in regress}
    assert head == {("0.001", "10")}
    # The sweeps of the real regress and baseline jobs: every grid point a finished child of its parent.
    parents = {r.data.tags["sweep_job"]: r for r in runs if r.data.tags.get("sweep_role") == "parent"}
    assert set(parents) == {"regress", "baseline"} and all(p.info.status == "FINISHED" for p in parents.values())
    assert {r.data.tags.get("mlflow.parentRunId") for r in regress} == {parents["regress"].info.run_id}
    assert sorted({r.data.tags["budget"] for r in regress}) == ["5", "all"] and len(regress) == 4
    baselines = [r for r in runs if r.data.tags.get("job") == "baseline" and r.info.status == "FINISHED"]
    assert sorted((r.data.tags["method"], r.data.tags["budget"]) for r in baselines) == [
        ("mean_shape", "5"), ("mean_shape", "all"), ("supervised", "5"), ("supervised", "all")]

    import json

    summary = json.loads((tmp_path / "demo.json").read_text())
    for budget in ("5", "all"):
        assert set(summary["iod_by_budget"][budget]) == {"pretrained", "random", "mean_shape", "supervised"}
        assert set(summary["iod_spread_by_budget"][budget]) == set(summary["iod_by_budget"][budget])
    assert set(summary["match_same_px"]) == set(summary["match_diff_px"]) == {"pretrained", "random"}
    assert 0 <= summary["segment_iou"] <= 1 and summary["minutes"] > 0
    assert summary["probe"]["epoch"] == [0, 1, 2] and len(summary["probe"]["iod"]) == 3


def test_budget_table_averages_this_demos_sweeps_only(tmp_path, monkeypatch):
    """The summary's table: per budget and method, the mean and spread of the IOD over the finished runs of this
    demo's sweeps (regress: pretrained or random by backbone.source; baseline: its method); runs of an earlier
    demo (another sweep) in the same experiment stay out. The JSON the demo writes with --metrics-out."""
    from mlflow.tracking import MlflowClient

    from landmarks.demo_summary import budget_values, summarize, worth

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    exp = client.create_experiment("demo", artifact_location=str(tmp_path / "artifacts"))
    backbone, older = "a" * 32, "b" * 32
    sweeps = [f"demo-regress-{backbone[:8]}", f"demo-baseline-{backbone[:8]}"]

    def job_run(job, budget, iod, sweep, status="FINISHED", source=None, method=None):
        run = client.create_run(exp, tags={"job": job, "sweep": sweep, **({"method": method} if method else {})})
        if source:
            client.log_param(run.info.run_id, "backbone.source", source)
        client.log_param(run.info.run_id, "annotations", budget)
        client.log_metric(run.info.run_id, "iod", iod)
        client.set_terminated(run.info.run_id, status)

    for source, budget, iod in ((backbone, "10", 40.0), (backbone, "10", 42.0), ("random", "10", 45.0),
                                (backbone, "all", 30.0), ("random", "all", 33.0), ("random", "all", 34.0)):
        job_run("regress", budget, iod, sweeps[0], source=source)
    for method, budget, iod in (("mean_shape", "10", 50.0), ("mean_shape", "10", 52.0), ("supervised", "all", 12.0)):
        job_run("baseline", budget, iod, sweeps[1], method=method)
    job_run("regress", "all", 10.0, f"demo-regress-{older[:8]}", source="random")  # an earlier demo's random init
    job_run("regress", "10", 1.0, sweeps[0], status="FAILED", source="random")

    values = budget_values("demo", sweeps, backbone)
    summary = summarize(values, minutes=1.0)
    assert summary["iod_by_budget"] == {
        "10": {"pretrained": 41.0, "random": 45.0, "mean_shape": 51.0},
        "all": {"pretrained": 30.0, "random": 33.5, "supervised": 12.0}}
    assert list(summary["iod_by_budget"]) == ["10", "all"]  # budgets in order, "all" last
    assert summary["iod_spread_by_budget"]["10"]["pretrained"] == pytest.approx(2 ** 0.5)  # stdev of 40, 42
    assert summary["iod_spread_by_budget"]["all"]["supervised"] == 0.0  # one repeat
    assert summary["repeats_by_budget"]["all"]["random"] == 2 and summary["minutes"] == 1.0
    assert worth(summary) == ["MoCo pretrained beats random init at 2/2 budgets",
                              "MoCo pretrained below the mean shape by 10: 20 %"]
