"""Smoke test of benchmarks/: each runs in --quick mode through its command line and writes its JSON.

The benchmarks are not tests (their numbers depend on the machine); this only checks that each one
runs end to end, prints its table and writes well-formed results with sane values.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, job_env

pytestmark = pytest.mark.slow


def run_bench(script: str, tmp_path: Path, *args: str, env: dict | None = None, ray_address: str | None = None) -> dict:
    """`benchmarks/SCRIPT --quick`; with `ray_address` it joins the session's Ray instead of starting one."""
    out = tmp_path / f"{Path(script).stem}.json"
    extra = {"RAY_ADDRESS": ray_address} if ray_address else {}
    env = env or job_env(f"sqlite:///{tmp_path}/mlflow.db", LANDMARKS_BENCH_DATA=str(tmp_path / "bench-data"), **extra)
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--out", str(out), *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, f"{script} exited {proc.returncode}\n{proc.stderr[-5000:]}\n{proc.stdout[-3000:]}"
    assert f"== {Path(script).stem} ==" in proc.stdout  # the table was printed
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == Path(script).stem and doc["rows"] and doc["machine"]["cpus"] >= 1
    return doc


def test_data_quick(tmp_path, ray_address):
    doc = run_bench("data.py", tmp_path, ray_address=ray_address)
    rows = doc["rows"]
    assert {r["pipeline"] for r in rows} == {"dataloader", "ray", "ray-rows"}
    assert {r["workload"] for r in rows} == {"decode", "decode+views"}
    for r in rows:
        assert r["images"] > 0 and r["startup_s"] > 0 and r["e2e_images_per_s"] > 0
    assert all(r["ratio_e2e"] > 0 for r in rows if r["pipeline"] != "dataloader")
    assert doc["summary"]["ray_startup_s"] > 0


def test_train_quick(tmp_path, ray_address):
    doc = run_bench("train.py", tmp_path, "--views", "off,ahead", ray_address=ray_address)
    rows = {(r["mode"], r["workers"], r["views"]): r for r in doc["rows"]}
    assert set(rows) == {("plain", 1, "off"), ("plain", 1, "ahead"), ("ray", 1, "ahead")}  # Ray runs what pretraining runs
    for r in rows.values():
        assert r["images_per_s"] > 0 and r["gflops_per_image"] > 0 and r["tflops"] > 0
        # 2 timed steps: their median is their mean (CPU images/s comes from the median step).
        assert r["mean_images_per_s"] == pytest.approx(r["images_per_s"], rel=0.02)
    assert rows[("ray", 1, "ahead")]["ratio"] > 0
    summary = doc["summary"]
    assert summary["resnet18.ahead_over_network"] == pytest.approx(
        rows[("plain", 1, "ahead")]["images_per_s"] / rows[("plain", 1, "off")]["images_per_s"], rel=0.01)
    # ResNet18 MoCo step at 64 px: query fwd+bwd + key fwd = 4x the forward, about 1.2 GFLOPs an image.
    assert 0.8 < rows[("plain", 1, "off")]["gflops_per_image"] < 1.6



def test_views_quick(tmp_path):
    doc = run_bench("views.py", tmp_path, "--compare")
    stages = {r["stage"] for r in doc["rows"] if r["row"] == "stage"}
    assert stages == {"draw", "jpeg", "crop+jitter", "lighting"}
    compare = {r["backend"]: r for r in doc["rows"] if r["row"] == "compare"}
    assert set(compare) == {"torch", "kornia"}  # the batched codecs against libjpeg, in 8-bit levels
    assert 0 < compare["torch"]["mean_levels"] < compare["kornia"]["mean_levels"] < 10
    assert {r["backend"] for r in doc["rows"] if r["row"] == "total"} == {"pil", "torch"}  # the CPU default
    assert all(r["ms"] > 0 and r["images_per_s"] > 0 for r in doc["rows"] if r["row"] != "compare")


def test_decode_quick(tmp_path):
    doc = run_bench("decode.py", tmp_path, "--target", "10000")
    rows = {(r["decoder"], r["format"]): r for r in doc["rows"]}
    assert set(rows) == {("pil", "png"), ("pil", "jpeg"), ("torchvision", "jpeg")}  # + cuda on a GPU machine
    assert all(r["images_per_s"] > 0 and r["per"] == "core" for r in rows.values())
    assert rows[("pil", "png")]["max_abs_diff_vs_source"] == 0  # lossless: the stored pixels are the source's
    jpeg, tv = rows[("pil", "jpeg")], rows[("torchvision", "jpeg")]
    assert jpeg["mean_abs_diff_vs_source"] > 0.5 and jpeg["bytes_per_image"] < rows[("pil", "png")]["bytes_per_image"]
    assert tv["max_abs_diff_vs_source"] == jpeg["max_abs_diff_vs_source"]  # both libjpeg-turbo: the same pixels
    best = max(r["images_per_s"] for r in rows.values())
    assert doc["summary"]["cpu_cores_per_gpu"] == pytest.approx(10000 / best, abs=0.05)
    assert doc["params"]["stored_shape"] == [136, 136, 3]


def test_memory_quick_reproduces_table2_and_logs_to_mlflow(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    doc = run_bench("memory.py", tmp_path, "--mlflow", "bench-test",
                    env=job_env(uri, LANDMARKS_BENCH_DATA=str(tmp_path / "bench-data")))
    r18 = next(r for r in doc["rows"] if r["backbone"] == "resnet18")
    assert r18["params_m"] == pytest.approx(11.24, abs=0.01)
    assert r18["summary_fwd_bwd_mb"] == pytest.approx(11.54, abs=0.01)  # Table 2, computed as the paper did
    assert 0 < r18["saved_mb"] < r18["summary_fwd_bwd_mb"] < r18["peak_mb"]
    assert any(r["backbone"] == "dve_hourglass" for r in doc["rows"])

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("bench-test").experiment_id])
    assert len(runs) == 1 and runs[0].data.metrics["resnet18.summary_fwd_bwd_mb"] == pytest.approx(11.54, abs=0.01)


def test_sweep_quick(tmp_path, ray_address):
    doc = run_bench("sweep.py", tmp_path, ray_address=ray_address)
    rows = {r["mode"]: r for r in doc["rows"]}
    assert set(rows) == {"cache", "no-cache"}
    assert all(r["trials"] == 2 and r["trials_per_hour"] > 0 and r["iod_mean"] > 0 for r in rows.values())
    assert doc["summary"]["speedup_trials_per_hour"] > 0


def test_sweep_bound_quick(tmp_path, ray_address):
    doc = run_bench("sweep.py", tmp_path, "--bound", "resnet18@32,resnet18@64", ray_address=ray_address)
    rows = doc["rows"]
    assert [(r["backbone"], r["image_size"]) for r in rows] == [("resnet18", 32), ("resnet18", 64)]
    for r in rows:
        assert min(r["backbone_fwd_ms"], r["head_fwd_ms"], r["head_step_ms"]) > 0
        assert r["max_speedup_train"] == pytest.approx((r["backbone_fwd_ms"] + r["head_step_ms"]) / r["head_step_ms"],
                                                       abs=0.01)
        assert r["max_speedup_eval"] > 1 and r["max_speedup_train"] > 1


def test_demo_study_tools_quick(tmp_path, tiny_faces):
    """The study's two tools (docs/demo_study.md): the regressor head's curve per init, MoCo's probe curve."""
    head = run_bench("regressor_head.py", tmp_path, "--data", str(tiny_faces), "--image-size", "32",
                     "--backbone", "resnet18_quarter", "--cache-dir", str(tmp_path / "cache"))
    assert [(r["init_std"], r["lr"]) for r in head["rows"]] == [(1.0, 1e-3), (0.01, 1e-3)]
    assert all(0 < r["iod@10"] < 200 for r in head["rows"])
    curve = run_bench("moco_curve.py", tmp_path, "--data", str(tiny_faces), "--image-size", "32",
                      "--save-dir", str(tmp_path / "bb"), "--save-at", "4")
    assert [r["step"] for r in curve["rows"]] == [0, 2, 4] and all(r["probe_iod"] > 0 for r in curve["rows"])
    assert (tmp_path / "bb" / "step_4" / "backbone.pt").is_file()
