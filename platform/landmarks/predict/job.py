"""Batch landmark prediction with a trained model, on Ray Data (jobs/predict.py).

    python jobs/predict.py --config jobs/configs/predict.yaml model.source=<run id | models:/NAME/1 | models:/NAME@best> \\
        input.path=<dataset dir or s3:// | a folder of photos> [--overlays N] [--skip-bad]

The output folder (it must not hold anything) and the model (what a regress, segment, train_projector or
finetune run logged, `models.artifact`) are checked before any work. In a folder, every file of a format PIL
decodes is a photo (`photo.read_photo`: EXIF orientation applied, 16 bits scaled, at most PIL's
Image.MAX_IMAGE_PIXELS of the driver); the other files are ignored and named. Images stream through Ray
Data: decoded and prepared on CPU tasks the way the model's training dataset prepared its images
(`Preprocessing`: an ingested dataset's stored images lose the eval border; a photo is cropped and resized
as its dataset's converter did), then a pool of
`ray.num_workers` actors, each holding the model once (on a GPU share when the cluster has GPUs:
`ray.gpus_per_worker` may be a fraction), predicts batches of `batch_size`.

Output, written to a temp directory and renamed into `output.path` (nothing half-written):
``predictions.parquet`` (image_id; landmarks, x0, y0, x1, ... in pixels of the image as given: the
photo as shown, or the dataset's stored image; landmarks_input in network-input pixels; a PNG mask for
segmentation models), ``predictions.json`` (the manifest: model, input, rows, skipped files and why,
ignored files, metric),
and ``overlays/*.png`` with `output.overlays` > 0. On a dataset with landmarks the job also reports
the metric the training job reported (IOD or the official PCK) over the same split.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import storage, tracking
from ..cli import JobArgs, Shorthand, job_main, print_summary
from ..cluster import join_cluster
from ..config import PredictConfig, absolute_paths
from ..data.manifest import MANIFEST_NAME, Manifest, open_manifest
from ..data.preprocessing import Preprocessing
from ..errors import UserError
from ..models.artifact import LandmarkModel, load_model, model_from_state
from .photo import photo_suffixes, read_photo
from .serving import in_photo

OUTPUT_FILE, MANIFEST_FILE, OVERLAYS = "predictions.parquet", "predictions.json", "overlays"


# ----------------------------------------------------------------------------- Ray Data stages


def prepare_files(batch: dict[str, np.ndarray], preprocessing: dict, max_pixels: int) -> dict[str, np.ndarray]:
    """Image files -> network inputs (a CPU task): read upright as RGB (`photo.read_photo`), crop and resize
    as the model's dataset did. An unreadable file becomes a row with its error (and a blank image)
    instead of failing the job."""
    from PIL import Image

    pre = Preprocessing.from_dict(preprocessing)
    side = pre.input_size
    out: dict[str, list] = {"image_id": [], "image": [], "box": [], "error": []}
    worker_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, max_pixels  # PIL's own refusal: twice it
    try:
        for image_id, path in zip(batch["image_id"], batch["path"]):  # one full-size photo in memory at a time
            image, error = _read(path, max_pixels)
            x, box = (np.zeros((side, side, 3), np.uint8), (0.0, 0.0, 1.0, 1.0)) if error else pre.image_to_input(image)
            out["image_id"].append(str(image_id))
            out["image"].append(x)
            out["box"].append(np.asarray(box, np.float64))
            out["error"].append(error)
    finally:
        Image.MAX_IMAGE_PIXELS = worker_limit  # the worker process runs other tasks after this one
    return {"image_id": np.array(out["image_id"], dtype=object), "image": np.stack(out["image"]),
            "box": np.stack(out["box"]), "error": np.array(out["error"], dtype=object)}


def _read(path: str, max_pixels: int) -> tuple[np.ndarray | None, str]:
    """(the photo, "") or (None, the reason it cannot be read)."""
    try:
        return read_photo(path, max_pixels), ""
    except Exception as err:  # noqa: BLE001 (any decoder's error: the file is named and counted, not fatal)
        return None, f"{type(err).__name__}: {err}"


def prepare_stored(batch: dict[str, np.ndarray], preprocessing: dict) -> dict[str, np.ndarray]:
    """Rows of an ingested dataset -> network inputs (and ground truth in input pixels, for the metric)
    exactly as the evaluation jobs read them (`eval_geometry`); boxes: the whole stored image."""
    from ..data.reader import eval_geometry

    pre = Preprocessing.from_dict(preprocessing)
    n, side = len(batch["image"]), batch["image"].shape[1]
    columns = [k for k in ("image", "keypoints", "visible") if k in batch]
    out = eval_geometry({k: batch[k] for k in columns}, pre.border, pre.input_size)
    return {**out, "image_id": batch["image_id"], "box": np.tile(np.array([0.0, 0.0, side, side]), (n, 1)),
            "error": np.array([""] * n, dtype=object)}


class Predictor:
    """A Ray Data actor: loads the model once (from the object store), predicts batches of inputs."""

    def __init__(self, model_ref: Any) -> None:
        import ray

        from ..precision import pick_device

        meta, state = ray.get(model_ref)
        self.model = model_from_state(meta, state).to(pick_device())
        self.preprocessing = Preprocessing.from_dict(meta["preprocessing"])

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {k: v for k, v in batch.items() if k != "image"}
        predicted = self.model.predict(np.require(batch["image"], requirements="W"))  # Arrow's arrays are read-only
        served = in_photo(predicted, self.preprocessing, batch["box"])
        if "landmarks" in predicted:
            out["landmarks_input"] = predicted["landmarks"].astype(np.float32)
            out["landmarks"] = np.stack(served["landmarks"]).astype(np.float32)
        if "mask" in predicted:
            out["mask"] = np.array(served["mask"], dtype=object)
        return out


# ----------------------------------------------------------------------------- the job


def _input(cfg: PredictConfig) -> tuple[str, Manifest | None, list[tuple[str, str]], list[str]]:
    """("dataset", manifest, [], []) or ("folder", None, [(image_id, path), ...], [ignored files]): in a folder,
    every file of a format PIL decodes is an image (`photo.photo_suffixes`), the others are ignored and
    named; bad input is a UserError."""
    path = cfg.input.path
    if not path:
        raise UserError("input.path is not set: a dataset written by jobs/ingest.py, or a folder of images")
    if storage.exists(storage.join(path, MANIFEST_NAME)):
        return "dataset", open_manifest(path, cfg.input.split, need_landmarks=False), [], []
    if storage.is_s3(path) or not Path(path).is_dir():
        raise UserError(f"input.path {storage.redact(path)}: neither a dataset (no {MANIFEST_NAME}) nor a local "
                        "folder of images")
    suffixes = photo_suffixes()
    files = sorted(p for p in Path(path).rglob("*") if p.is_file())
    images = [(str(p.relative_to(path)), str(p)) for p in files if p.suffix.lower() in suffixes]
    ignored = [str(p.relative_to(path)) for p in files if p.suffix.lower() not in suffixes]
    if not images:
        raise UserError(f"input.path {path}: no images in this folder ({len(ignored)} other file(s); images are "
                        "files of a format PIL reads: .jpg, .png, .ppm, .tif, .bmp, .webp, ...)")
    return "folder", None, images, ignored


def _check_output(cfg: PredictConfig) -> None:
    out = Path(cfg.output.path)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"output.path {cfg.output.path} exists and is not an empty directory; choose another or "
                        "remove it")


def run_predict(cfg: PredictConfig, args: JobArgs) -> dict:
    cfg = absolute_paths(cfg)
    _check_output(cfg)  # before any work (and again when the results are moved there)
    with tempfile.TemporaryDirectory(prefix="landmarks-predict-") as tmp:
        model_dir = tracking.fetch_landmark_model(cfg.model.source, Path(tmp))  # UserError: not a model
        model = load_model(model_dir)
    kind, manifest, files, ignored = _input(cfg)
    use_gpu = join_cluster(cfg.ray, "prediction", args.verbose)
    actors = _actor_count(cfg, args.verbose)
    tags = {"job": "predict", "model_source": cfg.model.source, "task": model.task, "input": kind,
            "dataset": manifest.name if manifest else "images", "model_dataset": model.meta.get("dataset")}
    logger = tracking.start_run(cfg.mlflow.experiment, cfg.mlflow.run_name or f"predict-{tags['dataset']}", tags=tags)
    logger.log_params(tracking.flatten(cfg.model_dump(mode="json")))
    if manifest is not None:
        logger.log_dataset(manifest, cfg.input.path, cfg.input.split, context="prediction")
    with logger.ending("prediction"):
        t0 = time.perf_counter()
        rows = _predict(cfg, model, kind, files, use_gpu, actors)
        metrics = _finish(cfg, model, manifest, rows, ignored, logger, time.perf_counter() - t0)
    logger.finish()
    metrics["mlflow_run_id"] = logger.run_id
    print_summary("predict", metrics)
    return metrics


def _actor_count(cfg: PredictConfig, verbose: bool) -> int:
    """`ray.num_workers`, or fewer so that one CPU stays free for the read and prepare tasks (actors
    holding every CPU would wait forever for batches that no task can produce)."""
    import ray

    cpus = ray.cluster_resources().get("CPU", 0.0)
    fit = int((cpus - 1) // cfg.ray.cpus_per_worker) if cfg.ray.cpus_per_worker > 0 else cfg.ray.num_workers
    if fit < 1:
        raise UserError(f"ray.cpus_per_worker={cfg.ray.cpus_per_worker}: the cluster has {cpus:g} CPUs and "
                        "prediction needs one more than a prediction actor takes (for reading the images)")
    if fit < cfg.ray.num_workers and verbose:
        print(f"predict: {fit} prediction actor(s) instead of ray.num_workers={cfg.ray.num_workers}: "
              f"one of the cluster's {cpus:g} CPUs stays free for reading the images")
    return min(fit, cfg.ray.num_workers)


def _predict(cfg: PredictConfig, model: LandmarkModel, kind: str, files: list[tuple[str, str]],
             use_gpu: bool, actors: int) -> dict[str, np.ndarray]:
    import ray

    from ..data.reader import read_dataset

    pre = dict(model.meta["preprocessing"])
    if kind == "dataset":
        ds = read_dataset(cfg.input.path, cfg.input.split).map_batches(
            prepare_stored, fn_kwargs={"preprocessing": pre}, batch_format="numpy", batch_size=cfg.batch_size)
    else:  # the size limit of this process's PIL (Image.MAX_IMAGE_PIXELS) holds in every task
        from PIL import Image

        ds = ray.data.from_items([{"image_id": i, "path": p} for i, p in files]).map_batches(
            prepare_files, fn_kwargs={"preprocessing": pre, "max_pixels": Image.MAX_IMAGE_PIXELS},
            batch_format="numpy", batch_size=cfg.batch_size)
    model_ref = ray.put((model.meta, model.state()))
    ds = ds.map_batches(Predictor, fn_constructor_kwargs={"model_ref": model_ref}, batch_format="numpy",
                        batch_size=cfg.batch_size, concurrency=(1, actors),
                        num_cpus=cfg.ray.cpus_per_worker, num_gpus=cfg.ray.gpus_per_worker if use_gpu else 0)
    parts = list(ds.iter_batches(batch_size=None, batch_format="numpy"))
    if not parts:
        raise UserError(f"input.path {cfg.input.path}: nothing to predict")
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _finish(cfg: PredictConfig, model: LandmarkModel, manifest: Manifest | None, rows: dict[str, np.ndarray],
            ignored: list[str], logger: tracking.RunLogger, seconds: float) -> dict:
    bad = rows["error"] != ""
    if bad.any() and not cfg.input.skip_bad:
        first = int(np.flatnonzero(bad)[np.argmin(rows["image_id"][bad])])  # the first by name
        raise UserError(f"{cfg.input.path}/{rows['image_id'][first]}: cannot read this image ({rows['error'][first]}); "
                        f"{int(bad.sum())} unreadable file(s) in all; pass --skip-bad to predict the others")
    skipped = dict(sorted((str(i), str(e)) for i, e in zip(rows["image_id"][bad], rows["error"][bad])))
    rows = {k: v[~bad] for k, v in rows.items()}
    if manifest is not None:  # the split's order (the official PCK is taken per batch of 32 in that order)
        from ..data.reader import split_image_ids

        where = {image_id: i for i, image_id in enumerate(split_image_ids(cfg.input.path, cfg.input.split))}
        order = np.argsort([where[str(i)] for i in rows["image_id"]], kind="stable")
        rows = {k: v[order] for k, v in rows.items()}
    metrics: dict[str, Any] = {"images": len(rows["image_id"]), "skipped": len(skipped), "ignored": len(ignored),
                               "images_per_sec": len(rows["image_id"]) / max(seconds, 1e-9)}
    if manifest is not None and "landmarks_input" in rows and "keypoints" in rows and manifest.K:
        metrics.update(_score(model, manifest, rows))
    _write(cfg, model, rows, skipped, ignored, metrics, logger)
    logger.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    return metrics


def _score(model: LandmarkModel, manifest: Manifest, rows: dict[str, np.ndarray]) -> dict[str, float]:
    """The training job's metric on these rows: IOD for faces, the official PCK (and the float one) for CUB."""
    from ..metrics import landmark_scores

    return landmark_scores(rows["landmarks_input"], rows["keypoints"], rows["visible"],
                           model.input_size, manifest.eye_indices)


def _write(cfg: PredictConfig, model: LandmarkModel, rows: dict[str, np.ndarray], skipped: dict[str, str],
           ignored: list[str], metrics: dict, logger: tracking.RunLogger) -> None:
    """predictions.parquet + predictions.json (+ overlays) into a temp directory, renamed into place."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {"image_id": pa.array([str(i) for i in rows["image_id"]], pa.string())}
    for name in ("landmarks", "landmarks_input"):
        if name in rows:
            columns[name] = pa.array([r.reshape(-1).tolist() for r in rows[name]], pa.list_(pa.float32()))
    if "mask" in rows:
        columns["mask"] = pa.array(list(rows["mask"]), pa.binary())
    _check_output(cfg)  # something may have been written there while this job ran
    final = Path(cfg.output.path)
    tmp = final.parent / storage.tmp_name(final.name)
    tmp.mkdir(parents=True)
    try:
        pq.write_table(pa.table(columns), tmp / OUTPUT_FILE)
        manifest = {"model_source": cfg.model.source, "task": model.task, "model_dataset": model.meta.get("dataset"),
                    "landmark_names": model.meta.get("landmark_names"), "input": cfg.input.path,
                    "split": cfg.input.split, "rows": len(rows["image_id"]), "skipped": list(skipped),
                    "skipped_errors": skipped, "ignored": ignored,
                    "metrics": {k: v for k, v in metrics.items() if k != "mlflow_run_id"},
                    "mlflow_run_id": logger.run_id, "coordinates": "pixels of the image as given, x0, y0, x1, ..."}
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        if cfg.output.overlays:
            _overlays(cfg, model, rows, tmp / OVERLAYS)
        if final.exists():
            final.rmdir()
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.log_artifact(final / MANIFEST_FILE, "predictions")


def _overlays(cfg: PredictConfig, model: LandmarkModel, rows: dict[str, np.ndarray], directory: Path) -> None:
    """The first `output.overlays` images with their predicted landmarks drawn on them: the photos of a
    folder (landmarks in their pixels), or a dataset's network inputs (landmarks in input pixels)."""
    from PIL import Image, ImageDraw

    from ..data.reader import load_split

    directory.mkdir()
    n = min(cfg.output.overlays, len(rows["image_id"]))
    if "landmarks" not in rows:  # a segmentation or projector model: nothing to draw
        return
    if Path(cfg.input.path, str(rows["image_id"][0])).is_file():
        images = [Image.fromarray(read_photo(Path(cfg.input.path, str(i)), max_pixels=0)) for i in rows["image_id"][:n]]
        points = rows["landmarks"][:n]
    else:  # rows are in split order: the split's first n rows at the input size
        split = load_split(cfg.input.path, cfg.input.split, model.input_size, rows=range(n))
        images, points = [Image.fromarray(x) for x in split["image"]], rows["landmarks_input"][:n]
    for i, (image, pts) in enumerate(zip(images, points)):
        draw, r = ImageDraw.Draw(image), max(1.5, image.width / 80)
        for x, y in np.asarray(pts).reshape(-1, 2):
            draw.ellipse([x - r, y - r, x + r, y + r], outline=(255, 40, 40), width=max(1, round(r / 2)))
        image.save(directory / f"{i:04d}.png")


SHORTHANDS = (Shorthand("--overlays", "output.overlays", "draw the predictions on the first N images",
                        metavar="N"),
              Shorthand("--skip-bad", "input.skip_bad", "skip and count unreadable images instead of stopping"))


def main(argv: list[str] | None = None) -> int:
    """jobs/predict.py: the shared job command line, plus `--overlays N` and `--skip-bad` as shorthands."""
    return job_main(PredictConfig, run_predict, __doc__, argv, SHORTHANDS)
