"""MLflow models and datasets of the platform: a trained model directory (`models.artifact.save_model`)
logged as an MLflow pyfunc model (loadable with `mlflow.pyfunc.load_model`, and by `fetch_landmark_model`
+ `models.artifact.load_model`), the Model Registry (`register_model`, `registered_versions`), and a
dataset as a run input (`dataset_input`).

    logger.log_landmark_model(directory)                  # in a run: "regress-mafl-resnet50-hypercolumn"
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")   # also the run's "model"
    pyfunc.predict(pd.DataFrame({"image": [jpeg_bytes]}))  # -> landmarks in pixels of each image
    register_model(run_id, "mafl-regressor", alias="best")  # models:/mafl-regressor@best

A model is logged once, as an MLflow logged model named by what it is (`model_name`: job, dataset,
backbone, representation), its source the job's script. The run also gets a few-kB pyfunc under its
artifact path "model" whose config points at that logged model (``models:/<model id>``): MLflow resolves
``runs:/<run id>/model`` to the run's own artifacts first, so the run's model keeps that name without a
second copy of the weights; loading it fetches the named model (`LandmarkPyfunc.load_context`).
"""

from __future__ import annotations

import hashlib
import importlib
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from ..errors import UserError
from ..models.formats import META_FILE, MODEL_DIR, read_meta
from .base import fluent_tracking_uri, source_tags, tracking_uri

MODEL_NAME = "model"  # the run's artifact path that loads its landmark model
MODEL_ARTIFACT = MODEL_DIR  # its key in the pyfunc's artifacts: our model directory
MODEL_URI_KEY = "landmark_model_uri"  # in the run's "model" pyfunc config: the logged model it stands for
MODEL_ID_TAG = "landmark_model_id"  # run tag: the logged model's id (models:/<id>)
SERVING = "landmarks.predict.serving"  # the module whose `load(directory)` serves a model directory
RUN_ID = re.compile(r"[0-9a-f]{32}")


def model_name(meta: dict) -> str:
    """What a model is, as its MLflow name: "<job>-<dataset>-<backbone>-<representation>", e.g.
    regress-mafl-resnet50-hypercolumn; a projector alone "train_projector-<dataset>-<backbone>-d<dim>"."""
    arch = meta.get("architecture", {})
    parts = [meta.get("job") or meta.get("task", "model"), meta.get("dataset"), arch.get("backbone")]
    if meta.get("task") != "descriptors":
        parts.append(arch.get("representation"))
    if arch.get("projector"):
        parts.append(f"d{arch['projector']['dim']}")
    return "-".join(str(p) for p in parts if p)


class LandmarkPyfunc(mlflow.pyfunc.PythonModel):
    """The pyfunc face of a trained landmark model: a DataFrame of encoded images (column ``image``: bytes
    of any format PIL reads, any size) in, their predictions out (``landmarks``: x0, y0, x1, ... in pixels
    of the image as shown; ``mask``: PNG bytes at the network input; ``descriptors``: flattened). The
    model directory is loaded and served by the module `SERVING` names (`load(directory)` ->
    `.predict_images(images)`)."""

    def load_context(self, context: Any) -> None:
        serving = importlib.import_module(SERVING)
        if MODEL_ARTIFACT in (context.artifacts or {}):
            self.served = serving.load(context.artifacts[MODEL_ARTIFACT])
            return
        with tempfile.TemporaryDirectory(prefix="landmarks-model-") as tmp:  # the run's "model": fetch the named one
            self.served = serving.load(_fetch_landmark_model(context.model_config[MODEL_URI_KEY], Path(tmp)))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        images = model_input["image"] if isinstance(model_input, pd.DataFrame) else model_input
        return pd.DataFrame(self.served.predict_images(images))


def _signature(task: str):
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Schema

    from ..models.artifact import TASKS

    output = TASKS[task]
    types = {"double_array": Array(DataType.double), "binary": DataType.binary}
    return ModelSignature(inputs=Schema([ColSpec(DataType.binary, "image")]),
                          outputs=Schema([ColSpec(types[output.output_type], output.output)]))


def log_landmark_model(directory: Path, requirements: list[str], run_id: str) -> str:
    """Log the model saved in `directory` (`models.artifact.save_model`: model.pt + meta.json) in the
    active MLflow run `run_id`: the logged model `model_name(meta)` and the run's "model" that loads it
    (module docstring) -> the name."""
    meta = read_meta(directory)
    task = meta["task"]
    name = model_name(meta)
    entry = str(Path(__file__).with_name("pyfunc_entry.py"))
    common = {"python_model": entry, "signature": _signature(task), "pip_requirements": requirements,
              "metadata": {"landmarks_task": task, "dataset": meta.get("dataset"),
                           "preprocessing": meta["preprocessing"]}}
    with tempfile.TemporaryDirectory(prefix="landmarks-model-") as tmp, warnings.catch_warnings():
        # "no input example": the signature says it all (image bytes in)
        warnings.filterwarnings("ignore", message=".*input example", category=UserWarning)
        if Path(directory).name != MODEL_ARTIFACT:  # MLflow keeps an artifact under its directory's name
            directory = Path(shutil.copytree(directory, Path(tmp) / MODEL_ARTIFACT))
        info = mlflow.pyfunc.log_model(name=name, artifacts={MODEL_ARTIFACT: str(directory)},
                                       tags={**source_tags(meta.get("job")), "landmarks_task": task},
                                       **common)
        pointer = Path(tmp) / MODEL_NAME
        mlflow.pyfunc.save_model(str(pointer), model_config={MODEL_URI_KEY: f"models:/{info.model_id}"}, **common)
        client = mlflow.MlflowClient()
        client.log_artifacts(run_id, str(pointer), MODEL_NAME)
        client.set_tag(run_id, MODEL_ID_TAG, info.model_id)
    return name


def _fetch_landmark_model(source: str, dst: Path) -> Path:
    """The directory of the landmark model named by `source`, downloaded into `dst`: an MLflow run id
    (its "model"), ``runs:/...``, ``models:/NAME/VERSION``, ``models:/NAME@ALIAS`` or ``models:/<model id>``,
    or a local directory (our model directory, or an MLflow model directory). Raises a one-line UserError
    when there is none."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    source = (source or "").strip()
    if not source:
        raise UserError("model.source is empty: an MLflow run id, models:/NAME/VERSION, models:/NAME@ALIAS, or a "
                        "model directory")
    local = Path(source)
    if local.is_dir():
        root = local
    else:
        uri = f"runs:/{source}/{MODEL_NAME}" if RUN_ID.fullmatch(source) else source
        if not uri.startswith(("runs:/", "models:/")):
            raise UserError(f"model.source {source}: not a run id, a runs:/ or models:/ URI, or a local directory")
        try:
            root = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
        except MlflowException as err:
            message = str(err).strip().splitlines()[0]
            raise UserError(f"model.source {source}: no such model ({message})") from None
        except OSError as err:
            raise UserError(f"model.source {source}: cannot download it ({err})") from None
    for candidate in (root, root / "artifacts" / MODEL_ARTIFACT):
        if (candidate / META_FILE).is_file():
            return candidate
    target = _points_to(root)
    if target and target != source:  # a run's "model": the logged model it stands for
        return _fetch_landmark_model(target, dst / "named")
    raise UserError(f"model.source {source}: not a landmark model (no {MODEL_ARTIFACT} with a meta.json; log one "
                    "with a regress, segment, train_projector or finetune run)")


def _points_to(root: Path) -> str | None:
    """The models:/ URI a run's "model" pyfunc stands for (`MODEL_URI_KEY` in its config), or None."""
    if not (root / "MLmodel").is_file():
        return None
    from mlflow.models import Model

    config = Model.load(str(root)).flavors.get("python_function", {}).get(mlflow.pyfunc.MODEL_CONFIG) or {}
    return config.get(MODEL_URI_KEY)


def _register_model(run_id: str, name: str, alias: str | None = "best") -> str:
    """Register the model of `run_id` (the logged model its "model" stands for) under `name` (a new version)
    and point `alias` at it -> the version."""
    from mlflow.tracking import MlflowClient

    model_id = MlflowClient().get_run(run_id).data.tags.get(MODEL_ID_TAG)
    version = mlflow.register_model(f"models:/{model_id}" if model_id else f"runs:/{run_id}/{MODEL_NAME}", name)
    if alias:
        MlflowClient().set_registered_model_alias(name, alias, version.version)
    return str(version.version)


def _registered_versions(run_ids: set[str]) -> list[dict[str, Any]]:
    """Registered model versions whose source run is one of `run_ids`: name, version, aliases, run id."""
    from mlflow.tracking import MlflowClient

    client, found = MlflowClient(), []
    for model in client.search_registered_models():
        for version in client.search_model_versions(f"name = '{model.name}'"):
            if version.run_id in run_ids:
                aliases = [a for a, v in (model.aliases or {}).items() if str(v) == str(version.version)]
                found.append({"name": model.name, "version": str(version.version), "aliases": aliases,
                              "run_id": version.run_id})
    return found


def dataset_input(manifest: Any, path: str, split: str, context: str) -> Any:
    """An MLflow `DatasetInput` of one split of an ingested dataset: named "<dataset>/<split>", its digest
    the SHA-256 of the split's shard hashes (a changed dataset shows a new digest), tags split and rows."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    shards = manifest.split(split).shards
    digest = hashlib.sha256("".join(s.sha256 for s in shards).encode()).hexdigest()[:16]
    if "://" not in path:
        path = str(Path(path).expanduser().resolve())
    with warnings.catch_warnings():  # MLflow registers its local-file source twice and warns about the tie
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(path)
    dataset = MetaDataset(source=source, name=f"{manifest.name}/{split}", digest=digest)
    tags = [InputTag("mlflow.data.context", context), InputTag("split", split),
            InputTag("rows", str(manifest.split(split).rows))]
    return DatasetInput(dataset._to_mlflow_entity(), tags=tags)


# The public calls: MLflow's fluent API pointed at this process's tracking URI (or `uri`) for each.


def fetch_landmark_model(source: str, dst: Path, uri: str | None = None) -> Path:
    """The local directory of the landmark model `source` names (run id, runs:/, models:/, a directory),
    downloaded into `dst` from the tracking server `uri` (default: this process's)."""
    with fluent_tracking_uri(uri or tracking_uri()):
        return _fetch_landmark_model(source, dst)


def register_model(run_id: str, name: str, alias: str | None = "best") -> str:
    """Register the "model" of `run_id` as a new version of `name`, with `alias` -> the version."""
    with fluent_tracking_uri(tracking_uri()):
        return _register_model(run_id, name, alias)


def registered_versions(run_ids: set[str]) -> list[dict[str, Any]]:
    """The registered model versions made from the runs `run_ids` (name, version, aliases, run_id)."""
    with fluent_tracking_uri(tracking_uri()):
        return _registered_versions(run_ids)
