"""MLflow models and datasets of the platform: a trained `LandmarkModel` logged as an MLflow pyfunc model
(loadable with `mlflow.pyfunc.load_model`, and by `fetch_landmark_model` + `LandmarkModel.load`), the
Model Registry (`register_model`, `registered_versions`), and a dataset as a run input (`dataset_input`).

    logger.log_landmark_model(model)                      # in a run: "regress-mafl-resnet50-hypercolumn"
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
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from ..errors import UserError
from .base import source_tags

MODEL_NAME = "model"  # the run's artifact path that loads its landmark model
MODEL_ARTIFACT = "landmark_model"  # its key in the pyfunc's artifacts: our model directory
MODEL_URI_KEY = "landmark_model_uri"  # in the run's "model" pyfunc config: the logged model it stands for
MODEL_ID_TAG = "landmark_model_id"  # run tag: the logged model's id (models:/<id>)
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
    """The pyfunc face of a `LandmarkModel`: a DataFrame of encoded images (column ``image``: bytes of any
    format PIL reads, any size; read as `predict.photo.read_photo` reads a file: EXIF orientation applied,
    16 bits scaled) in, their predictions out, each image prepared as the model's dataset prepared its
    images: ``landmarks`` (x0, y0, x1, ... in pixels of the image as shown), ``mask`` (PNG bytes at the
    network input) or ``descriptors`` (flattened)."""

    def load_context(self, context: Any) -> None:
        from ..predict.model import LandmarkModel

        if MODEL_ARTIFACT in (context.artifacts or {}):
            self.model = LandmarkModel.load(context.artifacts[MODEL_ARTIFACT])
            return
        with tempfile.TemporaryDirectory(prefix="landmarks-model-") as tmp:  # the run's "model": fetch the named one
            self.model = LandmarkModel.load(fetch_landmark_model(context.model_config[MODEL_URI_KEY], Path(tmp)))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from ..predict.model import mask_png
        from ..predict.photo import read_photo

        images = model_input["image"] if isinstance(model_input, pd.DataFrame) else model_input
        pre, rows = self.model.preprocessing, []
        for i, data in enumerate(images):
            try:
                image = read_photo(bytes(data))
            except Exception as err:  # noqa: BLE001 (any decoder's error, said with the row it came from)
                raise ValueError(f"image {i}: cannot read it ({type(err).__name__}: {err})") from None
            x, box = pre.image_to_input(image)
            out = self.model.predict(x[None])
            if "landmarks" in out:
                rows.append({"landmarks": pre.input_to_original(out["landmarks"][0], box).reshape(-1).tolist()})
            elif "mask" in out:
                rows.append({"mask": mask_png(out["mask"][0])})
            else:
                rows.append({"descriptors": out["descriptors"][0].reshape(-1).tolist()})
        return pd.DataFrame(rows)


def _signature(task: str):
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Schema

    outputs = {"landmarks": ColSpec(Array(DataType.double), "landmarks"), "mask": ColSpec(DataType.binary, "mask"),
               "descriptors": ColSpec(Array(DataType.double), "descriptors")}
    return ModelSignature(inputs=Schema([ColSpec(DataType.binary, "image")]), outputs=Schema([outputs[task]]))


def log_landmark_model(model: Any, requirements: list[str], run_id: str) -> str:
    """Log `model` (a `LandmarkModel`) in the active MLflow run `run_id`: the logged model `model_name(meta)`
    and the run's "model" that loads it (module docstring) -> the name."""
    name = model_name(model.meta)
    entry = str(Path(__file__).with_name("pyfunc_entry.py"))
    common = {"python_model": entry, "signature": _signature(model.task), "pip_requirements": requirements,
              "metadata": {"landmarks_task": model.task, "dataset": model.meta.get("dataset"),
                           "preprocessing": model.meta["preprocessing"]}}
    with tempfile.TemporaryDirectory(prefix="landmarks-model-") as tmp, warnings.catch_warnings():
        # "no input example": the signature says it all (image bytes in)
        warnings.filterwarnings("ignore", message=".*input example", category=UserWarning)
        directory = model.save(Path(tmp) / MODEL_ARTIFACT)
        info = mlflow.pyfunc.log_model(name=name, artifacts={MODEL_ARTIFACT: str(directory)},
                                       tags={**source_tags(model.meta.get("job")), "landmarks_task": model.task},
                                       **common)
        pointer = Path(tmp) / MODEL_NAME
        mlflow.pyfunc.save_model(str(pointer), model_config={MODEL_URI_KEY: f"models:/{info.model_id}"}, **common)
        client = mlflow.MlflowClient()
        client.log_artifacts(run_id, str(pointer), MODEL_NAME)
        client.set_tag(run_id, MODEL_ID_TAG, info.model_id)
    return name


def fetch_landmark_model(source: str, dst: Path) -> Path:
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
        if (candidate / "meta.json").is_file():
            return candidate
    target = _points_to(root)
    if target and target != source:  # a run's "model": the logged model it stands for
        return fetch_landmark_model(target, dst / "named")
    raise UserError(f"model.source {source}: not a landmark model (no {MODEL_ARTIFACT} with a meta.json; log one "
                    "with a regress, segment, train_projector or finetune run)")


def _points_to(root: Path) -> str | None:
    """The models:/ URI a run's "model" pyfunc stands for (`MODEL_URI_KEY` in its config), or None."""
    if not (root / "MLmodel").is_file():
        return None
    from mlflow.models import Model

    config = Model.load(str(root)).flavors.get("python_function", {}).get(mlflow.pyfunc.MODEL_CONFIG) or {}
    return config.get(MODEL_URI_KEY)


def register_model(run_id: str, name: str, alias: str | None = "best") -> str:
    """Register the model of `run_id` (the logged model its "model" stands for) under `name` (a new version)
    and point `alias` at it -> the version."""
    from mlflow.tracking import MlflowClient

    model_id = MlflowClient().get_run(run_id).data.tags.get(MODEL_ID_TAG)
    version = mlflow.register_model(f"models:/{model_id}" if model_id else f"runs:/{run_id}/{MODEL_NAME}", name)
    if alias:
        MlflowClient().set_registered_model_alias(name, alias, version.version)
    return str(version.version)


def registered_versions(run_ids: set[str]) -> list[dict[str, Any]]:
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
