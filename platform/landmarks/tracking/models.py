"""MLflow models and datasets of the platform: a trained `LandmarkModel` logged as an MLflow pyfunc model
(loadable with `mlflow.pyfunc.load_model`, and by `fetch_landmark_model` + `LandmarkModel.load`), the
Model Registry (`register_model`, `registered_versions`), and a dataset as a run input (`dataset_input`).

    logger.log_landmark_model(model)                      # in a run: the "model" artifact, a pyfunc
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    pyfunc.predict(pd.DataFrame({"image": [jpeg_bytes]}))  # -> landmarks in pixels of each image
    register_model(run_id, "mafl-regressor", alias="best")  # models:/mafl-regressor@best
"""

from __future__ import annotations

import hashlib
import io
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from ..errors import UserError

MODEL_NAME = "model"  # the artifact path of every logged landmark model
MODEL_ARTIFACT = "landmark_model"  # its key in the pyfunc's artifacts: our model directory
RUN_ID = re.compile(r"[0-9a-f]{32}")


class LandmarkPyfunc(mlflow.pyfunc.PythonModel):
    """The pyfunc face of a `LandmarkModel`: a DataFrame of encoded images (column ``image``: JPEG or PNG
    bytes, any size) in, their predictions out, each image prepared as the model's dataset prepared its
    images: ``landmarks`` (x0, y0, x1, ... in pixels of the image), ``mask`` (PNG bytes at the network
    input) or ``descriptors`` (flattened)."""

    def load_context(self, context: Any) -> None:
        from ..predict.model import LandmarkModel

        self.model = LandmarkModel.load(context.artifacts[MODEL_ARTIFACT])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from PIL import Image

        from ..predict.model import mask_png

        images = model_input["image"] if isinstance(model_input, pd.DataFrame) else model_input
        pre, rows = self.model.preprocessing, []
        for data in images:
            with Image.open(io.BytesIO(bytes(data))) as im:
                x, box = pre.image_to_input(np.asarray(im.convert("RGB")))
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


def log_landmark_model(model: Any, requirements: list[str]) -> None:
    """Log `model` (a `LandmarkModel`) in the active MLflow run as the pyfunc model "model"."""
    with tempfile.TemporaryDirectory(prefix="landmarks-model-") as tmp:
        directory = model.save(Path(tmp) / MODEL_ARTIFACT)
        with warnings.catch_warnings():  # "no input example": the signature says it all (image bytes in)
            warnings.filterwarnings("ignore", message=".*input example", category=UserWarning)
            mlflow.pyfunc.log_model(name=MODEL_NAME, python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
                                    artifacts={MODEL_ARTIFACT: str(directory)}, signature=_signature(model.task),
                                    pip_requirements=requirements,
                                    metadata={"landmarks_task": model.task, "dataset": model.meta.get("dataset"),
                                              "preprocessing": model.meta["preprocessing"]})


def fetch_landmark_model(source: str, dst: Path) -> Path:
    """The directory of the landmark model named by `source`, downloaded into `dst`: an MLflow run id
    (its "model"), ``runs:/...``, ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``, or a local directory
    (our model directory, or an MLflow model directory). Raises a one-line UserError when there is none."""
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
    raise UserError(f"model.source {source}: not a landmark model (no {MODEL_ARTIFACT} with a meta.json; log one "
                    "with a regress, segment, train_projector or finetune run)")


def register_model(run_id: str, name: str, alias: str | None = "best") -> str:
    """Register the "model" of `run_id` under `name` (a new version) and point `alias` at it -> the version."""
    from mlflow.tracking import MlflowClient

    version = mlflow.register_model(f"runs:/{run_id}/{MODEL_NAME}", name)
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
