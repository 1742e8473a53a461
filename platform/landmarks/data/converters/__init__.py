"""Registry of dataset converters, by the DATASET name `jobs/ingest.py` takes.

Imported lazily so that `landmarks.data` does not pay for every converter.
"""

from __future__ import annotations

import importlib

from .base import BadItem, Converter, DatasetInfo, Record

_REGISTRY = {
    "synthetic-faces": "landmarks.data.converters.synthetic:SyntheticFaces",
    "celeba": "landmarks.data.converters.celeba:CelebA",
    "celeba-wild": "landmarks.data.converters.celeba:CelebAWild",
    "mafl": "landmarks.data.converters.celeba:MAFL",
    "aflw-mtfl": "landmarks.data.converters.aflw:AFLWMTFL",
    "aflw": "landmarks.data.converters.aflw:AFLW",
    "300w": "landmarks.data.converters.w300:W300",
    "cub": "landmarks.data.converters.cub:CUB",
    "inat-aves": "landmarks.data.converters.inat:INatAves",
}

DATASETS = tuple(_REGISTRY)


def get_converter(name: str) -> type[Converter]:
    if name not in _REGISTRY:
        raise KeyError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    module, cls = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


__all__ = ["DATASETS", "BadItem", "Converter", "DatasetInfo", "Record", "get_converter"]
