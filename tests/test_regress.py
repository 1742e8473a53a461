"""Landmark regression on frozen representations: jobs/regress.py end to end, its rules and its errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient

import _eval_data
from landmarks.cli import JobArgs, job_main
from landmarks.cluster import in_ray_worker
from landmarks.config import RegressConfig, Resolved, load_config, paper_lr_wd
from landmarks.data.budgets import budget_indices
from landmarks.errors import UserError
from landmarks.evaluate.regress import check_regression, run_regress
from landmarks.metrics import inter_ocular_error
from landmarks.models import LandmarkRegressor, Projector, build_backbone
from landmarks.models.formats import save_backbone
from landmarks.models.representation import Representation, assemble, linear_over_blocks
from landmarks.sources import load_backbone

PRESET = str(_eval_data.ROOT / "jobs" / "configs" / "regress_synthetic_cpu.yaml")


def _cfg(data: str, *overrides: str) -> RegressConfig:
    return load_config(RegressConfig, PRESET, [f"data.path={data}", "data.image_size=32", *overrides])


@pytest.mark.parametrize("kind", ["hypercolumn", "conv4", "projected"])
def test_blockwise_prediction_equals_regressor_on_dense_map(kind):
    torch.manual_seed(0)
    backbone = build_backbone("resnet18").eval()
    projector = Projector(960, 16) if kind == "projected" else None
    rep = Representation(kind, backbone, {}, projector, 4, [0.5] * 3, [0.25] * 3)
    regressor = LandmarkRegressor(rep.channels, 5)
    with torch.no_grad():
        stages = backbone.stages(torch.randn(2, 3, 32, 32))
        dense = assemble(stages, rep.kind, 4, (16, 16))
        expected = regressor(projector(dense) if projector else dense)
        torch.testing.assert_close(rep.dense(stages, (16, 16)), projector(dense) if projector else dense)
        torch.testing.assert_close(rep.landmarks(regressor, stages, (16, 16)), expected, atol=1e-5, rtol=1e-4)



@pytest.mark.parametrize("size, with_bias", [((12, 12), False), ((10, 14), True), ((5, 5), True)])
def test_linear_over_blocks_matches_conv_after_interpolate_with_gradients(size, with_bias):
    # (12, 12): one block already at the output size; (10, 14): every block resized, non-square;
    # (5, 5): blocks both up- and down-sized.
    torch.manual_seed(0)
    blocks = [torch.randn(2, c, s, s, requires_grad=True) for c, s in ((8, 3), (4, 6), (2, 12))]
    weight = torch.randn(5, 14, 1, 1, requires_grad=True)
    bias = torch.randn(5, requires_grad=True) if with_bias else None
    got = linear_over_blocks(blocks, weight, bias, size)
    dense = torch.cat([F.interpolate(b, size=size, mode="bilinear", align_corners=False) for b in blocks], 1)
    expected = F.conv2d(dense, weight, bias)
    assert got.shape == (2, 5, *size)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    params = [*blocks, weight] + ([bias] if with_bias else [])
    grads = torch.autograd.grad(got.square().sum(), params)
    expected_grads = torch.autograd.grad(expected.square().sum(), params)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)

def test_paper_learning_rates():
    assert paper_lr_wd(False, "all") == (1e-3, 5e-4)
    assert paper_lr_wd(False, 10) == (1e-2, 5e-2)
    assert paper_lr_wd(True, 100) == (1e-2, 5e-2)
    assert paper_lr_wd(True, 250) == (1e-2, 5e-3)
    assert paper_lr_wd(True, "all") == (1e-2, 5e-3)


def test_budget_settings_resolve_before_training(eval_data):
    faces = str(eval_data["faces"])
    full = check_regression(_cfg(faces))
    n = full.manifest.splits["train"].rows
    assert full.settings == Resolved(lr=1e-3, weight_decay=5e-4, samples_per_epoch=n, epochs=10, schedule_epochs=10,
                                     tps_augment=False, track_test=False)  # the CPU preset's epochs; auto below
    assert list(full.rows) == list(range(n)) and full.metric == "iod" and full.tags["init"] == "random"
    limited = check_regression(_cfg(faces, "annotations=5", "train.seed=3", "repeat=1", "train.epochs=auto",
                                    "train.schedule_epochs=auto"))
    # the 5 images tiled min(1000, n) // 5 times an epoch, 1000 epochs of the 1000-epoch cosine
    assert limited.settings == Resolved(lr=1e-2, weight_decay=5e-2, samples_per_epoch=5 * (n // 5), epochs=1000,
                                        schedule_epochs=1000, tps_augment=True, track_test=True)
    assert list(limited.rows) == sorted(budget_indices(n, 5, seed=4))
    manual = check_regression(_cfg(faces, "annotations=5", "tps_augment=false", "train.lr=0.5"))
    assert (manual.settings.lr, manual.settings.tps_augment) == (0.5, False)


def test_in_ray_worker_is_detected(ray_local):
    assert not in_ray_worker()
    assert ray_local.get(ray_local.remote(in_ray_worker).remote())


def test_an_evaluation_task_looks_up_runs_in_the_jobs_store(ray_local, tmp_path, monkeypatch):
    """The task of an evaluation job runs on a worker the cluster started without the driver's
    environment: its MLflow lookups (a `backbone.source` run id) still go to the job's store."""
    from landmarks import tracking
    from landmarks.evaluate.runner import run_logged

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")  # the driver's alone
    uri = tracking.tracking_uri()

    def evaluate(cfg, logger):
        from landmarks import tracking

        return {"lookup_uri": tracking.tracking_uri(), "run_uri": logger.uri}

    metrics = run_logged("probe", _cfg(str(tmp_path), "ray.cpus_per_worker=1"), {}, "probe", evaluate, verbose=False)
    assert (metrics["lookup_uri"], metrics["run_uri"]) == (uri, uri)


def test_ctrl_c_on_an_evaluation_job_cancels_its_task_and_kills_its_run(ray_local, tmp_path, monkeypatch, capsys):
    """regress / segment / match run their evaluation as one Ray task (`evaluate.runner`): Ctrl-C stops the
    task, marks the MLflow run KILLED and exits 130 with one line saying so."""
    from landmarks.evaluate.runner import run_logged

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    beat = tmp_path / "beat"

    def evaluate(cfg, logger):  # logs, then beats (appends to a file) for a minute: long enough to be stopped
        import time

        logger.log_metrics({"started": 1.0})
        for _ in range(300):
            with beat.open("a") as f:
                f.write(".")
            time.sleep(0.2)
        return {"iod": 1.0}

    def run(cfg, args):
        return run_logged("regress", cfg, {}, "sleepy", evaluate, verbose=False)

    _eval_data.interrupt_when(lambda: beat.exists() and beat.stat().st_size > 2)
    code = job_main(RegressConfig, run, argv=["--config", PRESET, f"data.path={tmp_path}", "ray.cpus_per_worker=0.5"])
    lines = _eval_data.job_stderr_lines(capsys.readouterr().err)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run_id = client.search_runs([client.get_experiment_by_name("regress-synthetic").experiment_id])[0].info.run_id
    assert code == 130 and lines == [f"interrupted: regress stopped; MLflow run {run_id} marked KILLED"], lines
    assert client.get_run(run_id).info.status == "KILLED"
    assert not _eval_data.keeps_growing(beat)  # the task is gone, not left running on the cluster


@pytest.mark.slow
def test_regression_learns_logs_and_reuses_the_cache(eval_data, ray_address, tmp_path):
    # The official regressor (N(0, 1) heatmap weights) needs ~30 epochs of the 192 training dots to learn.
    args = ["--config", PRESET, f"data.path={eval_data['dots']}", "data.image_size=32", "train.epochs=30",
            "train.schedule_epochs=30", "train.batch_size=8", "train.lr=0.02", "ray.cpus_per_worker=1", f"features.dir={tmp_path}/features",
            "--metrics-out", "m.json"]  # its own feature cache: other tests fill the dataset's
    proc = _eval_data.run_job("regress", args, tmp_path, ray_address)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "m.json").read_text())
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(metrics["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["iod"] == pytest.approx(metrics["iod"])
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 30
    tags = run.data.tags
    assert {k: tags[k] for k in ("job", "dataset", "backbone", "representation", "budget", "seed", "repeat", "init")} \
        == {"job": "regress", "dataset": "dots", "backbone": "resnet18", "representation": "hypercolumn",
            "budget": "all", "seed": "0", "repeat": "0", "init": "random"}
    assert (tags["features.train"], tags["features.test"]) == ("miss", "miss")
    assert run.data.params["resolved.lr"] == "0.02"

    # It learned: far better than predicting the mean landmark positions (about 14 %).
    pred = np.load(client.download_artifacts(run.info.run_id, "predictions/predictions.npz", str(tmp_path)))
    baseline = inter_ocular_error(np.broadcast_to(pred["gt"].mean(0), pred["gt"].shape), pred["gt"], (0, 1))
    assert metrics["iod"] < 10.0 and metrics["iod"] < 0.6 * baseline, (metrics["iod"], baseline)
    assert inter_ocular_error(pred["pred"], pred["gt"], (0, 1)) == pytest.approx(metrics["iod"], rel=1e-5)

    # A second run with the same backbone and data reads the cached features.
    args = ["train.epochs=1" if a.startswith("train.epochs") else a for a in args]
    again = _eval_data.run_job("regress", args, tmp_path, ray_address)
    assert again.returncode == 0, again.stderr[-3000:]
    tags = client.get_run(json.loads((tmp_path / "m.json").read_text())["mlflow_run_id"]).data.tags
    assert (tags["features.train"], tags["features.test"]) == ("hit", "hit")


@pytest.fixture
def in_trial(tmp_path, monkeypatch):
    """In-process, as inside a Ray Tune trial, with MLflow in sqlite under tmp_path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("LANDMARKS_IN_PROCESS", "1")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    client.search_experiments()  # create the store now: a fresh one logs its own set-up lines
    return client


def test_limited_budget_trains_on_warped_images(eval_data, in_trial):
    """TPS-warped training; the test split scored every epoch, its best epoch reported beside the last."""
    cfg = _cfg(str(eval_data["faces"]), "annotations=4", "train.epochs=3", "train.samples_per_epoch=16",
               "train.batch_size=8")
    metrics = run_regress(cfg, JobArgs(None, None, False))
    assert np.isfinite(metrics["iod"])
    run = in_trial.get_run(metrics["mlflow_run_id"])
    assert run.data.tags["features.train"] == "off" and run.data.tags["features.test"] in ("hit", "miss")
    assert run.data.tags["budget"] == "4" and run.data.params["resolved.tps_augment"] == "True"
    per_epoch = [m.value for m in sorted(in_trial.get_metric_history(run.info.run_id, "test_iod"), key=lambda m: m.step)]
    assert len(per_epoch) == 3 and per_epoch[-1] == pytest.approx(metrics["iod"])  # the last epoch is the result
    assert metrics["iod_best_on_test"] == pytest.approx(min(per_epoch))
    assert metrics["best_test_epoch"] == int(np.argmin(per_epoch))


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    """A resnet50_half weights file, a backbone.pt whose meta.json says resnet50, and a projector of other weights."""
    tmp = tmp_path_factory.mktemp("bad-files")
    torch.save(build_backbone("resnet50_half").state_dict(), tmp / "half.pth")
    save_backbone(build_backbone("resnet18"), {"backbone": "resnet50"}, tmp / "r50meta")
    (tmp / "proj").mkdir()
    torch.save({"proj.weight": torch.zeros(8, 960, 1, 1), "proj.bias": torch.zeros(8)}, tmp / "proj/projector.pt")
    (tmp / "proj/meta.json").write_text(json.dumps({"backbone_fingerprint": "f" * 24, "backbone": "resnet18"}))
    return tmp


BAD_INPUTS = {
    "budget": (["annotations=100000"], ["annotations=100000", "train split"]),
    "projected_without_projector": (["representation=projected"], ["projector.source"]),
    "projector_of_other_backbone": (["representation=projected", "projector.source={files}/proj", "projector.dim=8"],
                                    ["another backbone", "{fp}"]),
    "unknown_run_id": (["backbone.source=0123456789abcdef0123456789abcdef"], ["MLflow run", "does not exist"]),
    "checkpoint_of_other_backbone": (["backbone.source={files}/half.pth"], ["resnet50_half", "resnet18"]),
    "meta_of_other_backbone": (["backbone.source={files}/r50meta/backbone.pt"], ["'resnet50'", "resnet18"]),
    "no_landmarks": (["data.path={blank}"], ["no landmarks"]),
    "no_dataset": (["data.path={files}/nowhere"], ["dataset.json"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_fail_in_one_line(case, eval_data, bad_files, in_trial, capsys):
    fp = load_backbone("random", "resnet18")[1]["fingerprint"][:12]
    fill = {"files": bad_files, "blank": eval_data["blank"], "fp": fp}
    overrides, needles = ([a.format(**fill) for a in part] for part in BAD_INPUTS[case])
    argv = ["--config", PRESET, "data.image_size=32", f"data.path={eval_data['faces']}", *overrides]
    code = job_main(RegressConfig, run_regress, argv=argv)
    _eval_data.assert_one_line_error((code, capsys.readouterr().err), *needles)
    assert in_trial.get_experiment_by_name("regress-synthetic") is None, "no MLflow run before the checks pass"


def test_cli_bad_input_exits_without_traceback(eval_data, tmp_path):
    MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db").search_experiments()
    proc = _eval_data.run_job("regress", ["--config", PRESET, f"data.path={eval_data['faces']}",
                                          "backbone.source=0123456789abcdef0123456789abcdef"], tmp_path)
    _eval_data.assert_one_line_error(proc, "MLflow run", "does not exist")


def test_cub_picks_the_epoch_on_val_in_process(eval_data, in_trial):
    cfg = _cfg(str(eval_data["cub"]), "train.epochs=3", "train.batch_size=8", "features.enabled=false")
    metrics = run_regress(cfg, JobArgs(None, None, False))
    client = in_trial
    run = client.get_run(metrics["mlflow_run_id"])
    assert set(metrics) >= {"pck", "val_pck", "best_epoch", "mlflow_run_id"} and "iod" not in metrics
    by_epoch = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_pck")}
    history = [by_epoch[epoch] for epoch in range(3)]
    assert metrics["val_pck"] == max(history) == history[metrics["best_epoch"]]
    assert run.data.params["resolved.weight_decay"] == "0.005" and run.data.params["resolved.tps_augment"] == "False"
    assert run.data.tags["dataset"] == "cub" and 0 <= metrics["pck"] <= 100
    assert run.data.tags["features.train"] == run.data.tags["features.val"] == "off"
    with pytest.raises(UserError, match="train_10 list"):  # CUB budgets are the official fixed subsets
        check_regression(_cfg(str(eval_data["cub"]), "annotations=10"))
