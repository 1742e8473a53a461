"""Landmark matching (jobs/match.py): end to end, per representation, and its errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from mlflow.tracking import MlflowClient

import _eval_data
from landmarks.cli import JobArgs, job_main
from landmarks.config import MatchConfig, absolute_paths, load_config
from landmarks.errors import UserError
from landmarks.evaluate.match import check_matching, run_match
from landmarks.matching import describer
from landmarks.models import Projector, build_backbone
from landmarks.models.representation import Representation
from landmarks.sources import load_backbone

PRESET = str(_eval_data.ROOT / "jobs" / "configs" / "match_synthetic_cpu.yaml")


def test_descriptors_are_normalized_per_stage_block():
    torch.manual_seed(0)
    rep = Representation("hypercolumn", build_backbone("resnet18").eval(), {}, None, 4, [0.5] * 3, [0.25] * 3)
    desc = describer(rep, (32, 32))(torch.rand(2, 3, 32, 32))
    assert desc.shape == (2, 960, 32, 32)
    for block in desc.split([512, 256, 128, 64], dim=1):
        torch.testing.assert_close(block.norm(dim=1), torch.ones(2, 32, 32))


@pytest.mark.slow
def test_match_job_end_to_end(eval_data, ray_address, tmp_path):
    args = ["--config", PRESET, f"data.path={eval_data['faces']}", "data.image_size=32", "ray.cpus_per_worker=1",
            "--metrics-out", "m.json"]
    proc = _eval_data.run_job("match", args, tmp_path, ray_address)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "m.json").read_text())
    run = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db").get_run(metrics["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    for key in ("match_same_px", "match_diff_px"):
        assert run.data.metrics[key] == pytest.approx(metrics[key]) and 0 <= metrics[key] < 70 * math.sqrt(2)
    # A warped copy of the same face is easier to match than another face.
    assert metrics["match_same_px"] < metrics["match_diff_px"]
    assert run.data.tags["job"] == "match" and run.data.tags["representation"] == "hypercolumn"
    test_rows = json.loads((eval_data["faces"] / "dataset.json").read_text())["splits"]["test"]["rows"]
    assert metrics["pairs"] == test_rows // 2  # consecutive pairs (0, 1), (2, 3), ...


@pytest.mark.parametrize("representation", ["conv4", "projected"])
def test_match_other_representations_in_process(eval_data, tmp_path, monkeypatch, representation):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("LANDMARKS_IN_PROCESS", "1")  # what a Ray Tune trial does
    overrides = [f"data.path={eval_data['faces']}", "data.image_size=32", "descriptor_size=16"]
    if representation == "projected":
        fingerprint = load_backbone("random", "resnet18")[1]["fingerprint"]
        (tmp_path / "proj").mkdir()
        torch.save(Projector(960, 16).state_dict(), tmp_path / "proj" / "projector.pt")
        (tmp_path / "proj" / "meta.json").write_text(json.dumps(
            {"backbone_fingerprint": fingerprint, "backbone": "resnet18", "dim": 16, "in_channels": 960, "layers": 4}))
        overrides += [f"projector.source={tmp_path / 'proj'}"]  # projector.dim: auto, read from the source
        wrong = load_config(MatchConfig, PRESET, ["representation=projected", *overrides, "projector.dim=64"])
        with pytest.raises(UserError, match=r"projector.dim=64 but projector.source .*proj projects to 16 dimensions; "
                                            r"set projector.dim=16 or projector.dim=auto"):
            check_matching(absolute_paths(wrong))
        assert check_matching(absolute_paths(load_config(MatchConfig, PRESET, [
            "representation=projected", *overrides, "projector.dim=16"]))).rep.projector.dim == 16
    cfg = load_config(MatchConfig, PRESET, [f"representation={representation}", *overrides])
    metrics = run_match(cfg, JobArgs(None, None, False))
    run = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db").get_run(metrics["mlflow_run_id"])
    assert math.isfinite(metrics["match_same_px"]) and math.isfinite(metrics["match_diff_px"])
    assert run.data.tags["representation"] == representation
    if representation == "projected":
        assert run.data.tags["projector_dim"] == "16"


BAD_INPUTS = {
    "unknown_run_id": (["backbone.source=0123456789abcdef0123456789abcdef"], ["MLflow run", "does not exist"]),
    "projected_without_projector": (["representation=projected"], ["projector.source"]),
    "odd_batch": (["batch_size=3"], ["batch_size=3", "even"]),
    "no_split": (["split=nosuch"], ["no split 'nosuch'"]),
    "no_landmarks": (["data.path={blank}", "split=test"], ["no landmarks"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_fail_in_one_line(case, eval_data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    client.search_experiments()  # create the store now: a fresh one logs its own set-up lines,
    capsys.readouterr()  # which are not the job's (they reach capsys when MLflow's log handler is made here)
    overrides, needles = BAD_INPUTS[case]
    argv = ["--config", PRESET, "data.image_size=32", f"data.path={eval_data['faces']}",
            *(a.format(blank=eval_data["blank"]) for a in overrides)]
    code = job_main(MatchConfig, run_match, argv=argv)
    _eval_data.assert_one_line_error((code, capsys.readouterr().err), *needles)
    assert client.get_experiment_by_name("match-synthetic") is None


def test_one_line_error_check_drops_only_lines_ray_forwards():
    # Seen in CI on a nearly full disk: the raylet's warning reaches the driver's stderr mid-test.
    raylet = ("\x1b[33m(raylet)\x1b[0m [2026-11-26 08:17:22,018 E 1373 1384] (raylet) file_system_monitor.cc:116: "
              "/tmp/ray/session_x is over 95% full, available space: 8.27762 GB; capacity: 251.972 GB.")
    worker = "\x1b[36m(RayTrainWorker pid=4242, ip=127.0.0.1)\x1b[0m a worker's print"
    err = f"{raylet}\n{worker}\n(pid=77) spilled\nerror: batch_size=3 must be even\n"
    assert _eval_data.job_stderr_lines(err) == ["error: batch_size=3 must be even"]
    assert _eval_data.assert_one_line_error((2, err), "batch_size=3") == "error: batch_size=3 must be even"
    with pytest.raises(AssertionError):  # a second line of the job's own still fails the check
        _eval_data.assert_one_line_error((2, err + "warning: something else\n"), "batch_size=3")
    with pytest.raises(AssertionError):  # a line that merely mentions a pid in parentheses is the job's
        _eval_data.assert_one_line_error((2, "error: (pid=1) x\nerror: y\n"))


def test_cli_bad_input_exits_without_traceback(eval_data, tmp_path):
    MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db").search_experiments()
    proc = _eval_data.run_job("match", ["--config", PRESET, f"data.path={eval_data['faces']}", "batch_size=3"],
                              tmp_path)
    _eval_data.assert_one_line_error(proc, "batch_size=3", "even")
