"""Datasets: raw files -> Parquet shards + dataset.json (ingest) -> Ray Data / numpy (reader).

    from landmarks.data import ingest, read_dataset, load_manifest
    ingest("synthetic-faces", None, "/tmp/faces", options={"num_images": 200, "seed": 0})
    ds = read_dataset("/tmp/faces", "train")        # ray.data.Dataset of decoded rows

Importing this package imports pyarrow but not Ray (Ray is imported when a function
needs it); `device_batches` (Ray Train workers) is resolved on first use.
"""

from __future__ import annotations

# `from .ingest import ingest` binds the function over the submodule of the same name.
from .ingest import IngestError, ingest, verify_dataset
from .manifest import Manifest, ManifestError
from .reader import (
    iter_split,
    load_manifest,
    load_split,
    read_dataset,
    read_split_numpy,
    split_image_ids,
)

__all__ = [
    "IngestError", "Manifest", "ManifestError", "device_batches", "ingest", "iter_split", "load_manifest",
    "load_split", "read_dataset", "read_split_numpy", "split_image_ids", "verify_dataset",
]


def __getattr__(name: str):
    if name == "device_batches":
        from .loader import device_batches

        return device_batches
    raise AttributeError(f"module 'landmarks.data' has no attribute {name!r}")
