"""`make demo` with the tiny preset, end to end: report, MLflow runs and the comparison exist."""

import subprocess
import sys

import pytest

from conftest import ROOT, job_env


@pytest.mark.slow
def test_tiny_demo_end_to_end(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "jobs" / "demo.py"), "--preset", "tiny", "--out",
                          str(tmp_path / "demo_output")], check=False, cwd=tmp_path, env=job_env(),
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
