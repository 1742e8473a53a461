"""Using what was trained: the model a regress run logs (pyfunc + our loader), jobs/predict.py on Ray Data
over a dataset split and over a folder of images, registering the best model of a sweep, dataset inputs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

import _eval_data
from landmarks.cli import JobArgs
from landmarks.config import RegressConfig, load_config
from landmarks.data.reader import load_split
from landmarks.evaluate.regress import run_regress
from landmarks.predict.job import main as predict_main

PRESET = str(_eval_data.ROOT / "jobs" / "configs" / "regress_synthetic_cpu.yaml")


@pytest.fixture(scope="module")
def trained(eval_data, tmp_path_factory):
    """A regress run on the tiny faces (in process, as a Tune trial runs it) and its MLflow store."""
    tmp = tmp_path_factory.mktemp("predict")
    uri = f"sqlite:///{tmp}/mlflow.db"
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mp.setenv("LANDMARKS_IN_PROCESS", "1")
    mp.chdir(tmp)
    # features.enabled=false: the stage outputs are computed in float32 as the predictions will be
    # (the cache stores float16), so the two metrics agree to float rounding.
    cfg = load_config(RegressConfig, PRESET, [f"data.path={eval_data['faces']}", "data.image_size=32",
                                              "train.epochs=3", "train.batch_size=8", "features.enabled=false"])
    metrics = run_regress(cfg, JobArgs(None, None, False))
    yield {"tmp": tmp, "uri": uri, "metrics": metrics, "run_id": metrics["mlflow_run_id"], "faces": eval_data["faces"]}
    mp.undo()


ORIENTATION = 0x0112  # the EXIF tag
BIG = (400, 300)  # a blank PNG over the test's lowered Image.MAX_IMAGE_PIXELS (100k): a 196 MP photo here


@pytest.fixture(scope="module")
def photos(trained):
    """A folder of PNG and JPEG files (the test faces as stored, i.e. before the eval border crop), a corrupt
    one, and photos as cameras and editors write them (each with a twin the model must see the same):
    phone.jpg stored portrait with EXIF orientation 6 (phone_upright.png: its pixels turned upright),
    grey16.png in 16 bits (grey8.png), takeo.ppm (upright.png), big.png, and notes.txt (not an image)."""
    folder = trained["tmp"] / "photos"
    folder.mkdir()
    split = load_split(str(trained["faces"]), "test", 32, rows=range(4), stored=True)
    for i, image in enumerate(split["image"]):
        Image.fromarray(image).save(folder / (f"face{i}.png" if i % 2 else f"face{i}.jpg"), quality=95)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    wide = Image.fromarray(split["image"][0]).resize((92, 46), Image.Resampling.BILINEAR)  # shown 92 x 46
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # "turn 90 degrees clockwise to show"
    wide.transpose(Image.Transpose.ROTATE_90).save(folder / "phone.jpg", exif=exif.tobytes(), quality=95)
    with Image.open(folder / "phone.jpg") as stored:
        assert stored.size == (46, 92)
        stored.transpose(Image.Transpose.ROTATE_270).save(folder / "phone_upright.png")
    grey = np.asarray(wide.convert("L"))
    Image.fromarray(grey).save(folder / "grey8.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(folder / "grey16.png")
    assert Image.open(folder / "grey16.png").mode == "I;16"
    wide.save(folder / "upright.png")
    wide.save(folder / "takeo.ppm")
    Image.new("RGB", BIG).save(folder / "big.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_logged_model_loads_with_pyfunc_and_our_loader(trained, photos):
    import mlflow.pyfunc

    from landmarks.data.preprocessing import Preprocessing
    from landmarks.models.artifact import load_model
    from landmarks.tracking.models import fetch_landmark_model

    pyfunc = mlflow.pyfunc.load_model(f"runs:/{trained['run_id']}/model")  # the run's "model"
    data = [(photos / name).read_bytes() for name in ("face0.jpg", "face1.png")]
    out = pyfunc.predict(pd.DataFrame({"image": data}))
    assert list(out.columns) == ["landmarks"] and len(out) == 2 and len(out["landmarks"][0]) == 10  # 5 (x, y)
    # Photos are read as shown: EXIF orientation applied, 16 bits scaled (each as its twin).
    twins = ("phone.jpg", "phone_upright.png", "grey16.png", "grey8.png")
    got = pyfunc.predict(pd.DataFrame({"image": [(photos / name).read_bytes() for name in twins]}))["landmarks"]
    np.testing.assert_allclose(got[0], got[1], atol=1e-3)
    np.testing.assert_allclose(got[2], got[3], atol=1e-3)
    assert np.asarray(got[0]).reshape(-1, 2).max(0).tolist() < [92, 46]  # in the 92 x 46 frame shown

    model = load_model(fetch_landmark_model(trained["run_id"], trained["tmp"] / "fetched"))
    pre = Preprocessing.from_dict(model.meta["preprocessing"])
    assert model.task == "landmarks" and model.meta["dataset"] == "synthetic-faces" and model.meta["K"] == 5
    for raw, pyfunc_landmarks in zip(data, out["landmarks"]):
        image = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))
        x, box = pre.image_to_input(image)
        ours = pre.input_to_original(model.predict(x[None])["landmarks"][0], box)
        np.testing.assert_allclose(np.asarray(pyfunc_landmarks).reshape(-1, 2), ours, atol=1e-4)


def test_models_are_named_by_what_they_are_and_runs_by_their_script(trained):
    """The UI lists the logged model as regress-<dataset>-<backbone>-<representation> from jobs/regress.py
    (not "model" from default_worker.py); the run's Source column shows the job script."""
    client = MlflowClient(trained["uri"])
    run = client.get_run(trained["run_id"])
    models = client.search_logged_models([run.info.experiment_id])
    ours = [m for m in models if m.source_run_id == trained["run_id"]]
    assert [m.name for m in ours] == [f"regress-synthetic-faces-{run.data.tags['backbone']}-hypercolumn"]
    assert ours[0].tags["mlflow.source.name"] == "jobs/regress.py" and run.data.tags["mlflow.source.name"] == (
        "jobs/regress.py")
    assert run.data.tags["landmark_model_id"] == ours[0].model_id
    # The run's "model" is a few-kB pointer to it (no second copy of the weights).
    files = client.list_artifacts(trained["run_id"], "model")
    assert sum(f.file_size or 0 for f in files) < 20_000, [(f.path, f.file_size) for f in files]


def test_runs_log_their_dataset_inputs(trained):
    run = MlflowClient(trained["uri"]).get_run(trained["run_id"])
    inputs = {i.dataset.name: {t.key: t.value for t in i.tags} for i in run.inputs.dataset_inputs}
    test_rows = json.loads((trained["faces"] / "dataset.json").read_text())["splits"]["test"]["rows"]
    assert inputs["synthetic-faces/test"]["split"] == "test" and inputs["synthetic-faces/test"]["rows"] == str(test_rows)
    assert inputs["synthetic-faces/train"]["mlflow.data.context"] == "training"
    digests = {i.dataset.name: i.dataset.digest for i in run.inputs.dataset_inputs}
    assert len(set(digests.values())) == 2  # each split its own content digest


@pytest.mark.slow
def test_predict_job_reproduces_the_regress_metric_through_ray_data(trained, ray_address, tmp_path):
    out = tmp_path / "pred"
    args = ["--config", str(_eval_data.ROOT / "jobs" / "configs" / "predict.yaml"), f"model.source={trained['run_id']}",
            f"input.path={trained['faces']}", "input.split=test", f"output.path={out}", "--overlays", "2",
            "--metrics-out", str(tmp_path / "m.json")]
    env_tmp = trained["tmp"]  # the regress run's MLflow store
    proc = _eval_data.run_job("predict", args, env_tmp, ray_address)
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["iod"] == pytest.approx(trained["metrics"]["iod"], abs=1e-4)
    table = pq.read_table(out / "predictions.parquet").to_pydict()
    manifest = json.loads((out / "predictions.json").read_text())
    test_rows = json.loads((trained["faces"] / "dataset.json").read_text())["splits"]["test"]["rows"]
    assert len(table["image_id"]) == manifest["rows"] == test_rows and len(table["landmarks"][0]) == 10
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["0000.png", "0001.png"]
    run = MlflowClient(f"sqlite:///{env_tmp}/mlflow.db").get_run(metrics["mlflow_run_id"])
    assert run.data.tags["job"] == "predict" and run.inputs.dataset_inputs[0].dataset.name == "synthetic-faces/test"


def test_predict_on_a_folder_reads_photos_as_shown_and_names_what_it_skips_or_ignores(
        trained, photos, ray_local, tmp_path, monkeypatch, capsys):
    from PIL import Image as PILImage

    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained["uri"])
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 100_000)  # the driver's limit holds in every task
    base = ["--config", str(_eval_data.ROOT / "jobs" / "configs" / "predict.yaml"), f"model.source={trained['run_id']}",
            f"input.path={photos}", "ray.cpus_per_worker=0.5"]
    assert predict_main([*base, f"output.path={tmp_path / 'refused'}"]) == 1
    line = _eval_data.assert_one_line_error((1, capsys.readouterr().err), "big.png", "400 x 300 pixels",
                                            "MAX_IMAGE_PIXELS", "2 unreadable file(s)", "--skip-bad")
    assert "broken.jpg" not in line
    assert not (tmp_path / "refused").exists()  # nothing half-written

    out = tmp_path / "out"
    assert predict_main([*base, f"output.path={out}", "--skip-bad", "--overlays", "20", "--metrics-out",
                         str(tmp_path / "m.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert (metrics["images"], metrics["skipped"], metrics["ignored"]) == (10, 2, 1)
    table = pq.read_table(out / "predictions.parquet").to_pydict()
    assert sorted(table["image_id"]) == ["face0.jpg", "face1.png", "face2.jpg", "face3.png", "grey16.png", "grey8.png",
                                         "phone.jpg", "phone_upright.png", "takeo.ppm", "upright.png"]
    manifest = json.loads((out / "predictions.json").read_text())
    assert manifest["skipped"] == ["big.png", "broken.jpg"] and manifest["ignored"] == ["notes.txt"]
    assert "megapixels" in manifest["skipped_errors"]["big.png"]
    points = {i: np.asarray(p).reshape(-1, 2) for i, p in zip(table["image_id"], table["landmarks"])}
    for photo, twin in (("phone.jpg", "phone_upright.png"), ("grey16.png", "grey8.png"), ("takeo.ppm", "upright.png")):
        np.testing.assert_allclose(points[photo], points[twin], atol=1e-3, err_msg=photo)
    assert points["phone.jpg"].max(0).tolist() < [92, 46]  # pixels of the photo as shown, not as stored (46 x 92)
    # Overlays in the same order, drawn on the photo as shown.
    sizes = {i: PILImage.open(out / "overlays" / f"{k:04d}.png").size for k, i in enumerate(table["image_id"])}
    assert sizes["phone.jpg"] == sizes["grey16.png"] == (92, 46) and sizes["face1.png"] == (46, 46)
    # The PNG files are the stored test images: a photo's landmarks, in its own pixels, are the dataset row's.
    model_input = load_split(str(trained["faces"]), "test", 32, rows=range(4))
    from landmarks.data.preprocessing import Preprocessing
    from landmarks.models.artifact import load_model
    from landmarks.tracking.models import fetch_landmark_model

    model = load_model(fetch_landmark_model(trained["run_id"], tmp_path / "m"))
    expected = Preprocessing.from_dict(model.meta["preprocessing"]).input_to_stored(model.predict(model_input["image"][1:2])["landmarks"][0])
    np.testing.assert_allclose(points["face1.png"], expected, atol=1e-3)


def test_an_output_folder_in_use_is_refused_before_any_work(trained, photos, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained["uri"])
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "predictions.json").write_text("{}")
    runs_before = len(tracking_runs(trained["uri"], "predict"))
    argv = ["--config", str(_eval_data.ROOT / "jobs" / "configs" / "predict.yaml"), f"model.source={trained['run_id']}",
            f"input.path={photos}", f"output.path={tmp_path / 'taken'}"]
    _eval_data.assert_one_line_error((predict_main(argv), capsys.readouterr().err), "output.path", "taken",
                                     "is not an empty directory")
    assert len(tracking_runs(trained["uri"], "predict")) == runs_before  # no run, no model fetched, no Ray
    assert (tmp_path / "taken" / "predictions.json").read_text() == "{}"


def tracking_runs(uri: str, experiment: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id])


BAD = {
    "no_such_run": (["model.source=0123456789abcdef0123456789abcdef"], ["model.source", "no such model"]),
    "not_a_model": (["model.source={tmp}"], ["not a landmark model"]),
    "empty_folder": (["input.path={empty}"], ["no images"]),
    "no_input": (["input.path="], ["input.path is not set"]),
    "no_preprocessing": (["model.source={tmp}/nopre"], ["no preprocessing metadata"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_inputs_fail_in_one_line_before_work(case, trained, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained["uri"])
    (tmp_path / "empty").mkdir()
    (tmp_path / "nopre").mkdir()  # a model directory from before the preprocessing metadata
    (tmp_path / "nopre" / "meta.json").write_text(json.dumps({"task": "landmarks", "architecture": {}}))
    (tmp_path / "nopre" / "model.pt").write_bytes(b"")
    overrides, needles = BAD[case]
    argv = ["--config", str(_eval_data.ROOT / "jobs" / "configs" / "predict.yaml"),
            f"model.source={trained['run_id']}", f"input.path={trained['faces']}", f"output.path={tmp_path / 'o'}",
            *(o.format(tmp=tmp_path, empty=tmp_path / "empty") for o in overrides)]
    code = predict_main(argv)
    _eval_data.assert_one_line_error((code, capsys.readouterr().err), *needles)
    assert not Path(tmp_path / "o").exists()


def test_sweep_registers_its_best_trial(trained, tmp_path, monkeypatch):
    from landmarks.sweep import sweep_main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained["uri"])
    monkeypatch.chdir(trained["tmp"])
    code = sweep_main(None, ["--config", str(_eval_data.ROOT / "jobs" / "configs" / "sweep_synthetic_cpu.yaml"),
                             f"data.path={trained['faces']}", "data.image_size=32", "grid={train.lr: [0.01, 0.001]}",
                             "train.epochs=1", f"storage_path={tmp_path}/tune", "--register", "faces-regressor",
                             "--metrics-out", str(tmp_path / "m.json")])
    assert code == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    client = MlflowClient(trained["uri"])
    best = client.get_model_version_by_alias("faces-regressor", "best")
    children = [r for r in client.search_runs([client.get_experiment_by_name("sweep-synthetic").experiment_id])
                if r.data.tags.get("mlflow.parentRunId") == metrics["mlflow_run_id"]]
    iods = {r.info.run_id: r.data.metrics["iod"] for r in children}
    assert best.run_id == min(iods, key=iods.get) and metrics["registered"] == f"faces-regressor/{best.version}"

    from landmarks.report import run_report

    report = run_report(["sweep-synthetic"], tmp_path / "report", mlflow_experiment=None)
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert report["registered_models"] == 1
    assert f"- models:/faces-regressor/{best.version} @best: regress run " in summary and best.run_id[:8] in summary


def test_only_jobs_that_log_a_model_can_register_one():
    from pydantic import ValidationError

    from landmarks.sweep import SweepConfig

    assert SweepConfig(job="segment", grid={"seed": [0]}, register_model="masks").register_model == "masks"
    with pytest.raises(ValidationError, match=r"register_model='m': a match run logs no model; jobs that do: regress"):
        SweepConfig(job="match", grid={"seed": [0]}, register_model="m")


def test_a_dataset_ingested_for_another_size_maps_both_ways_as_the_evaluation_reads_it():
    """Stored 40 px, border 4, a 16 px model: predict's inputs and ground truth are eval_geometry's, and
    landmarks go back to stored pixels by its exact inverse (pixel centres at integers)."""
    from landmarks.data.preprocessing import Preprocessing
    from landmarks.data.reader import eval_geometry
    from landmarks.predict.job import prepare_stored

    rng = np.random.default_rng(0)
    batch = {"image_id": np.array(["a", "b"], dtype=object), "visible": np.ones((2, 3), bool),
             "image": rng.integers(0, 256, (2, 40, 40, 3), dtype=np.uint8),
             "keypoints": rng.uniform(4, 35, (2, 3, 2)).astype(np.float32)}
    pre = Preprocessing(crop=(0.0, 0.0, 1.0, 1.0), stored_size=40, border=4, input_size=16,
                        mean=(0.5,) * 3, std=(0.25,) * 3)
    out = prepare_stored(batch, {"crop": pre.crop, "stored_size": 40, "border": 4, "input_size": 16,
                                 "mean": pre.mean, "std": pre.std})
    expected = eval_geometry({k: batch[k] for k in ("image", "keypoints", "visible")}, 4, 16)
    np.testing.assert_array_equal(out["image"], expected["image"])
    np.testing.assert_array_equal(pre.stored_to_input(batch["image"]), expected["image"])
    np.testing.assert_allclose(out["keypoints"], (batch["keypoints"] - 4 + 0.5) * 0.5 - 0.5, atol=1e-6)
    np.testing.assert_allclose(pre.input_to_stored(out["keypoints"]), batch["keypoints"], atol=1e-5)
    assert out["box"].tolist() == [[0.0, 0.0, 40.0, 40.0]] * 2 and list(out["error"]) == ["", ""]
