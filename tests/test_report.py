"""jobs/report.py: our runs beside the paper's numbers (tables), PNG figures, the report run.

The fast tests log runs by hand with the tags, params, metrics and artifacts the jobs log
(landmarks.evaluate.regress, pretrain); the slow one computes the hypercolumn PCA from a
backbone file and a tiny ingested dataset (Ray).
"""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import job_env, run_job
from landmarks import tracking
from landmarks.errors import UserError
from landmarks.report import PCA_ARTIFACT, run_report
from landmarks.report.tables import TABLES, read_paper

K = 5


def _run(experiment: str, name: str, tags: dict, params: dict, metrics: dict, artifacts: dict | None = None,
         status: str = "FINISHED") -> str:
    run = tracking.start_run(experiment, name, tags=tags)
    run.log_params(params)
    run.log_metrics(metrics)
    with tempfile.TemporaryDirectory() as tmp:
        for path, arrays in (artifacts or {}).items():
            file = Path(tmp) / Path(path).name
            np.savez_compressed(file, **arrays)
            run.log_artifact(file, str(Path(path).parent))
    run.finish(status)
    return run.run_id


def _regress(experiment, dataset, budget, iod=None, pck=None, repeat=0, backbone="resnet50", rep="hypercolumn",
             init="pretrained", source="/ckpt/backbone.pt", **kw):
    tags = {"job": "regress", "dataset": dataset, "backbone": backbone, "representation": rep, "budget": budget,
            "repeat": repeat, "init": init, "backbone_source": source, "image_size": 96, "seed": 0}
    params = {"data": {"path": "/nonexistent/data", "image_size": 96}, "annotations": budget, "repeat": repeat,
              "model": {"backbone": backbone}, "backbone": {"source": source}, "representation": rep}
    metrics = {"iod": iod} if iod is not None else {"pck": pck}
    return _run(experiment, f"regress-{dataset}-{budget}-{repeat}", tags, params, metrics, **kw)


def _predictions(n=10, size=96, seed=0):
    rng = np.random.default_rng(seed)
    gt = rng.uniform(10, size - 10, (n, K, 2)).astype(np.float32)
    return {"image_id": np.array([f"img{i:03d}.jpg" for i in range(n)]), "pred": gt + rng.normal(0, 2, gt.shape),
            "gt": gt, "visible": np.ones((n, K), bool), "image_size": np.array(size)}


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A small 'experiment' of runs in the settings of Tables 3-9, plus a failed one and a PCA artifact,
    in a local store of its own; yields (experiment, directory)."""
    root = tmp_path_factory.mktemp("report-runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        yield _log_runs("paper-runs"), root


def _log_runs(exp: str) -> str:
    for repeat, iod in enumerate((17.0, 18.0, 19.0)):  # Table 7, ours ResNet50 hypercolumn, 10 annotations
        _regress(exp, "aflw-mtfl", 10, iod, repeat=repeat)
    _regress(exp, "mafl", "all", 2.50, artifacts={"predictions/predictions.npz": _predictions()})
    _regress(exp, "synthetic-faces", 5, 30.0, backbone="resnet18", init="random", source="random")
    _regress(exp, "synthetic-faces", "all", 12.0, backbone="resnet18", init="random", source="random")
    _regress(exp, "cub", 10, pck=15.0)
    pca = {"images": np.zeros((2, 32, 32, 3), np.uint8), "pretrained": np.random.rand(2, 16, 16, 3),
           "random": np.random.rand(2, 16, 16, 3)}
    pretrain = _run(exp, "pretrain-quarter", {"job": "pretrain", "dataset": "celeba", "backbone": "resnet50",
                                              "data_fraction": 0.25, "pca_artifact": PCA_ARTIFACT},
                    {"data": {"fraction": 0.25}}, {"final_loss": 4.0}, artifacts={PCA_ARTIFACT: pca})
    _regress(exp, "aflw-mtfl", "all", 7.90, source=pretrain)  # Table 9 via the pretraining run
    _run(exp, "match-mafl-128", {"job": "match", "dataset": "mafl", "backbone": "resnet50", "init": "pretrained",
                                 "representation": "projected", "projector_dim": 128},
         {"representation": "projected"}, {"match_same_px": 1.0, "match_diff_px": 2.5})
    masks = {"image_id": np.array(["a", "b"]), "pred": np.random.rand(2, 32, 32).astype(np.float32),
             "gt": (np.random.rand(2, 32, 32) > 0.5).astype(np.uint8), "image_size": np.array(32)}
    _run(exp, "segment-cub-10", {"job": "segment", "dataset": "cub", "backbone": "resnet50", "init": "pretrained",
                                 "representation": "hypercolumn", "budget": 10},
         {"finetune": False, "annotations": 10}, {"iou": 0.40}, artifacts={"predictions/masks.npz": masks})
    segment = tracking.start_run(exp, "segment-synthetic", tags={"job": "segment", "dataset": "synthetic-faces",
                                                                 "backbone": "resnet18", "budget": "all",
                                                                 "init": "random", "finetuned": 0})
    segment.log_metrics({"iou": 0.7})
    with tempfile.TemporaryDirectory() as tmp:  # the figure landmarks.evaluate.segment logs itself
        Image.new("RGB", (300, 200), (10, 200, 30)).save(Path(tmp) / "masks.png")
        segment.log_artifact(Path(tmp) / "masks.png", "segmentation")
    segment.finish()
    _regress(exp, "mafl", "all", 99.0, status="FAILED")  # not reported
    return exp


def _table(out: Path, name: str) -> list[dict]:
    with open(out / "tables" / f"{name}.csv") as f:
        return list(csv.DictReader(f))


def _row(rows: list[dict], **want) -> dict:
    hits = [r for r in rows if all(r[k] == str(v) for k, v in want.items())]
    assert len(hits) == 1, (want, hits)
    return hits[0]


def test_report_tables_figures_and_run(logged, tmp_path):
    experiment, root = logged
    out = root / "report"
    result = run_job("report.py", "--experiment", experiment, "--out", str(out), cwd=root,
                     env=job_env(tracking.tracking_uri()), timeout=300)
    assert "beside the paper's" in result.stdout

    t7 = _table(out, "table7_aflw_m_budget")
    ours = _row(t7, init="ours", backbone="resnet50", representation="hypercolumn", budget=10)
    assert (float(ours["ours"]), float(ours["ours_std"]), ours["n"]) == (18.0, 1.0, "3")  # mean, sample std
    assert (ours["paper"], ours["paper_std"], float(ours["diff"])) == ("17.61", "0.75", pytest.approx(0.39))
    assert _row(t7, init="dve", budget=5)["paper"] == "12.04" and _row(t7, init="dve", budget=5)["ours"] == ""
    alone = _row(t7, init="random", backbone="resnet18", budget=5)  # synthetic faces: no paper counterpart
    assert alone["dataset"] == "synthetic-faces" and alone["ours"] == "30" and alone["paper"] == ""
    assert len([r for r in t7 if r["paper"] != ""]) == len(read_paper("table7_aflw_m_budget"))

    t5 = _table(out, "table5_regression")
    mafl = _row(t5, init="ours", backbone="resnet50", in_the_wild=0, projected=0, dim=3840, dataset="mafl")
    assert (mafl["ours"], mafl["paper"], float(mafl["diff"])) == ("2.5", "2.44", pytest.approx(0.06))
    assert _row(t5, init="random", projected=0, dataset="300w")["paper"] == "11.7"
    t9 = _table(out, "table9_pretrain_fraction")
    assert _row(t9, init="ours", fraction="0.25", projected=0)["ours"] == "7.9"
    t4 = _table(out, "table4_matching")
    assert float(_row(t4, init="ours", backbone="resnet50", in_the_wild=0, dim=128, metric="match_diff_px")["diff"]) \
        == pytest.approx(0.31)
    assert _row(_table(out, "table6_segmentation"), init="ours", representation="hypercolumn", finetuned=0,
                budget=10, backbone="resnet50")["paper"] == "0.36"
    assert _row(_table(out, "table8_cub_budget"), init="ours", backbone="resnet50", representation="hypercolumn",
                budget=10)["diff"] == "1.13"

    md = (out / "tables" / "table7_aflw_m_budget.md").read_text()
    assert "aflw_m IOD % paper" in md and "18.00 ± 1.00 (n=3)" in md and "17.61 ± 0.75" in md and "+0.39" in md
    assert "| mafl IOD % ours | mafl IOD % paper |" in (out / "tables" / "table5_regression.md").read_text()
    for spec in TABLES:
        assert (out / "tables" / f"{spec.name}.csv").is_file() and (out / "tables" / f"{spec.name}.md").is_file()

    summary = (out / "summary.md").read_text()
    assert "vs paper 17.61 (+0.39)" in summary and "figures/budget_aflw_m_budget.png" in summary
    sizes = {"budget_aflw_m_budget.png": (800, 500), "budget_cub_budget.png": (800, 500),
             "landmarks_mafl.png": (1000, 500), "masks_cub.png": (1000, 750), "pca_hypercolumns.png": (750, 500),
             "masks_synthetic-faces.png": (300, 200)}
    for name, size in sizes.items():
        with Image.open(out / "figures" / name) as img:
            img.load()
            assert img.size == size and img.format == "PNG", name

    report = tracking.find_runs("reports", tags={"job": "report"})
    assert len(report) == 1 and report[0].info.status == "FINISHED"
    assert tracking.download_artifact(report[0].info.run_id, "tables/table7_aflw_m_budget.csv", tmp_path).is_file()
    assert tracking.download_artifact(report[0].info.run_id, "figures/landmarks_mafl.png", tmp_path).is_file()
    assert "17.61" in tracking.download_artifact(report[0].info.run_id, "summary.md", tmp_path).read_text()


def test_empty_or_missing_experiment_is_a_clear_error(in_tmp_cwd):
    tracking.get_or_create_experiment("empty")
    out = run_job("report.py", "--experiment", "empty", "--out", str(in_tmp_cwd / "r"), cwd=in_tmp_cwd,
                  env=job_env(tracking.tracking_uri()), check=False, timeout=120)
    assert out.returncode == 1 and "experiment 'empty' has no runs" in out.stderr and "Traceback" not in out.stderr
    with pytest.raises(UserError, match="experiment 'no-such-experiment' has no runs"):
        run_report(["no-such-experiment"], in_tmp_cwd / "r")


def test_only_files_without_logging(logged):
    experiment, root = logged
    before = len(tracking.find_runs("reports"))
    metrics = run_report([experiment], root / "files-only", mlflow_experiment=None)
    assert "mlflow_run_id" not in metrics and metrics["matched"] == 11
    assert len(tracking.find_runs("reports")) == before
    assert (root / "files-only" / "tables" / "table9_pretrain_fraction.md").is_file()


@pytest.mark.slow
def test_pca_from_a_backbone_file_and_dataset(tiny_faces, in_tmp_cwd):
    """PCA of hypercolumns of real (tiny) test images, a saved backbone vs random init; and the
    landmark figure draws on the dataset's images once the run's data.path is readable."""
    import torch

    from landmarks.models import build_backbone

    torch.manual_seed(1)
    weights = in_tmp_cwd / "backbone.pt"
    torch.save(build_backbone("resnet18").state_dict(), weights)
    ids = np.array(_test_ids(tiny_faces)[:3])
    preds = {**_predictions(3, 32), "image_id": ids}
    run = tracking.start_run("tiny", "regress-tiny", tags={"job": "regress", "dataset": "synthetic-faces",
                                                            "backbone": "resnet18", "representation": "hypercolumn",
                                                            "budget": "all", "init": "random"})
    run.log_params({"data": {"path": str(tiny_faces)}})
    run.log_metrics({"iod": 10.0})
    with tempfile.TemporaryDirectory() as tmp:
        np.savez_compressed(Path(tmp) / "predictions.npz", **preds)
        run.log_artifact(Path(tmp) / "predictions.npz", "predictions")
    run.finish()
    out = in_tmp_cwd / "report"
    run_job("report.py", "--experiment", "tiny", "--out", str(out), "--pca-backbone", str(weights),
            "--pca-arch", "resnet18", "--data", str(tiny_faces), "--pca-images", "3", cwd=in_tmp_cwd,
            env=job_env(tracking.tracking_uri()), timeout=300)
    with Image.open(out / "figures" / "pca_hypercolumns.png") as img:
        assert img.size == (750, 750)
        pixels = np.asarray(img.convert("RGB"))
    assert pixels.std() > 10  # the maps are not blank
    assert "blank canvas" not in (out / "summary.md").read_text()
    logged_pca = tracking.download_artifact(tracking.find_runs("reports")[0].info.run_id, PCA_ARTIFACT,
                                            in_tmp_cwd / "downloaded")
    with np.load(logged_pca) as arrays:
        assert arrays["pretrained"].shape == (3, 16, 16, 3) and arrays["images"].shape == (3, 32, 32, 3)
        assert not np.allclose(arrays["pretrained"], arrays["random"])


def _test_ids(data: Path) -> list[str]:
    from landmarks.data.reader import load_split

    return [str(i) for i in load_split(str(data), "test", 32)["image_id"]]


def test_representation_dims_cover_every_registered_backbone():
    """report.runs keeps its own channel tables (the report imports no torch); they must agree with
    the models for every backbone in the registry, so that a new backbone gets its Table 5 `dim`."""
    import torch

    from landmarks.models import block_channels, build_backbone
    from landmarks.registry import ARCHITECTURES
    from landmarks.report.runs import CONV4_DIMS, HYPERCOLUMN_DIMS

    with torch.device("meta"):
        models = {name: build_backbone(name) for name in ARCHITECTURES}
    assert HYPERCOLUMN_DIMS == {n: sum(block_channels(m.stage_channels, "hypercolumn")) for n, m in models.items()}
    assert CONV4_DIMS == {n: sum(block_channels(m.stage_channels, "conv4")) for n, m in models.items()}
