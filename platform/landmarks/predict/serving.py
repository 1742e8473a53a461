"""A trained model served on photos: what MLflow's pyfunc runs (`tracking.models.LandmarkPyfunc` loads it
by this module's path) and what the batch job's actors use.

    served = load("model_dir")                          # `models.artifact.load_model` + its preprocessing
    served.predict_images([jpeg_bytes, ...])            # -> [{"landmarks": [x0, y0, ...]}, ...]

Each image is prepared as the model's dataset prepared its images (`data.preprocessing.Preprocessing`);
the outputs are said in the photo's terms (`in_photo`): landmarks in pixels of the image as shown, a
mask as PNG bytes at the network input, descriptors flattened.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ..data.preprocessing import Preprocessing
from ..models.artifact import TASKS, LandmarkModel, load_model
from .photo import read_photo


def mask_png(mask_hw: np.ndarray) -> bytes:
    """A predicted mask (H, W) bool -> PNG bytes (0 / 255)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(mask_hw.astype(np.uint8) * 255).save(buf, format="PNG")
    return buf.getvalue()


def in_photo(predicted: dict[str, np.ndarray], pre: Preprocessing,
             boxes: Sequence[Sequence[float]]) -> dict[str, list]:
    """A batch's outputs (`LandmarkModel.predict`) in the terms of its photos, one entry per image:
    ``landmarks`` (K, 2) in pixels of each photo (cropped by its box, (left, top, width, height)),
    ``mask`` PNG bytes, ``descriptors`` (dim, S, S) as predicted."""
    out: dict[str, list] = {}
    if "landmarks" in predicted:
        out["landmarks"] = [pre.input_to_original(k, tuple(b)) for k, b in zip(predicted["landmarks"], boxes)]
    if "mask" in predicted:
        out["mask"] = [mask_png(m) for m in predicted["mask"]]
    if "descriptors" in predicted:
        out["descriptors"] = list(predicted["descriptors"])
    return out


class ServedModel:
    """A `LandmarkModel` with its `Preprocessing`: encoded images in, one row of output per image."""

    def __init__(self, model: LandmarkModel) -> None:
        self.model = model
        self.preprocessing = Preprocessing.from_dict(model.meta["preprocessing"])
        self.output = TASKS[model.task].output

    def predict_images(self, images: Iterable[bytes]) -> list[dict]:
        """Encoded images (bytes of any format PIL reads, any size; read as `photo.read_photo` reads a
        file) -> [{output column: landmarks x0, y0, x1, ... | mask PNG bytes | descriptors, flattened}]."""
        rows = []
        for i, data in enumerate(images):
            try:
                image = read_photo(bytes(data))
            except Exception as err:  # noqa: BLE001 (any decoder's error, said with the row it came from)
                raise ValueError(f"image {i}: cannot read it ({type(err).__name__}: {err})") from None
            x, box = self.preprocessing.image_to_input(image)
            value = in_photo(self.model.predict(x[None]), self.preprocessing, [box])[self.output][0]
            rows.append({self.output: value if isinstance(value, bytes) else np.asarray(value).reshape(-1).tolist()})
        return rows


def load(directory: str | Path) -> ServedModel:
    """The model saved in `directory` (`models.artifact.save_model`), ready to serve."""
    return ServedModel(load_model(directory))


__all__ = ["ServedModel", "in_photo", "load", "mask_png"]
