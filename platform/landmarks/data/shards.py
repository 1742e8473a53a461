"""The Parquet row format (SPEC "Parquet shards"): encode records, decode batches.

One row per image:

    image_id  string            image      binary (PNG, or JPEG q95 with --image-format jpeg)
    height    int32             width      int32
    keypoints list<float32> 2K  x0, y0, x1, y1, ... stored-image pixels, 0-based
    visible   list<bool> K      identity   string, nullable
    mask      binary, nullable  PNG foreground mask, same size as image

Ingest calls `records_to_table`; the reader calls `decode_batch`, which turns a
batch of rows into arrays: image (B, H, W, 3) uint8, keypoints (B, K, 2) float32,
visible (B, K) bool, mask (B, H, W) uint8.
"""

from __future__ import annotations

import io
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
from PIL import Image

from .converters.base import Record

SCHEMA = pa.schema([
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("image", pa.binary(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("keypoints", pa.list_(pa.float32()), nullable=False),
    pa.field("visible", pa.list_(pa.bool_()), nullable=False),
    pa.field("identity", pa.string(), nullable=True),
    pa.field("mask", pa.binary(), nullable=True),
])
JPEG_QUALITY = 95  # --image-format jpeg: the stored image is decoded many times; keep it close to lossless
IMAGE_FORMATS = ("png", "jpeg")  # png: lossless, the default of every real dataset


def encode_image(image: np.ndarray, fmt: str) -> bytes:
    """(H, W, 3) uint8 -> JPEG (q95) or PNG bytes."""
    buf = io.BytesIO()
    pil = Image.fromarray(np.ascontiguousarray(image))
    if fmt == "jpeg":
        pil.save(buf, format="JPEG", quality=JPEG_QUALITY)
    elif fmt == "png":
        pil.save(buf, format="PNG")
    else:
        raise ValueError(f"unknown image_format {fmt!r}; valid: jpeg, png")
    return buf.getvalue()


def encode_mask(mask: np.ndarray) -> bytes:
    """(H, W) uint8 -> PNG bytes (lossless: masks are labels)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(mask)).save(buf, format="PNG")
    return buf.getvalue()


def check_record(rec: Record, k: int) -> None:
    """Raise ValueError naming the image when a converter returns arrays of the wrong shape."""
    img, kps, vis = rec.image, np.asarray(rec.keypoints), np.asarray(rec.visible)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"{rec.image_id}: image must be (H, W, 3) uint8, got {img.shape} {img.dtype}")
    if kps.shape != (k, 2) or vis.shape != (k,):
        raise ValueError(f"{rec.image_id}: expected keypoints ({k}, 2) and visible ({k},), "
                         f"got {kps.shape} and {vis.shape}")
    if rec.mask is not None and (rec.mask.shape != img.shape[:2] or rec.mask.dtype != np.uint8):
        raise ValueError(f"{rec.image_id}: mask must be (H, W) uint8 like the image, got "
                         f"{rec.mask.shape} {rec.mask.dtype}")


def records_to_table(records: Iterable[Record], fmt: str, k: int) -> pa.Table:
    """Encode records into a table with exactly `SCHEMA`."""
    cols: dict[str, list] = {name: [] for name in SCHEMA.names}
    for rec in records:
        check_record(rec, k)
        cols["image_id"].append(rec.image_id)
        cols["image"].append(encode_image(rec.image, fmt))
        cols["height"].append(rec.image.shape[0])
        cols["width"].append(rec.image.shape[1])
        cols["keypoints"].append(np.asarray(rec.keypoints, np.float32).reshape(-1))
        cols["visible"].append(np.asarray(rec.visible, bool))
        cols["identity"].append(None if rec.identity is None else str(rec.identity))
        cols["mask"].append(None if rec.mask is None else encode_mask(rec.mask))
    arrays = [
        pa.array(cols["image_id"], pa.string()),
        pa.array(cols["image"], pa.binary()),
        pa.array(cols["height"], pa.int32()),
        pa.array(cols["width"], pa.int32()),
        _list_array(cols["keypoints"], pa.float32()),
        _list_array(cols["visible"], pa.bool_()),
        pa.array(cols["identity"], pa.string()),
        pa.array(cols["mask"], pa.binary()),
    ]
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def _list_array(rows: list[np.ndarray], value_type: pa.DataType) -> pa.ListArray:
    offsets = np.zeros(len(rows) + 1, np.int32)
    np.cumsum([len(r) for r in rows], out=offsets[1:])
    values = np.concatenate(rows) if rows else np.zeros(0)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, value_type))


def pixel_sums(image: np.ndarray) -> tuple[list[int], list[int], int]:
    """Per-channel sum and sum of squares of uint8 values, and the pixel count: exact integers
    that add up across images and shards into the dataset's mean/std."""
    flat = image.reshape(-1, 3).astype(np.int64)
    return flat.sum(axis=0).tolist(), (flat * flat).sum(axis=0).tolist(), int(flat.shape[0])


def mean_std(total: list[int], total_sq: list[int], count: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units from summed `pixel_sums`."""
    if count == 0:
        return [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    mean = np.asarray(total, np.float64) / (255.0 * count)
    var = np.asarray(total_sq, np.float64) / (255.0**2 * count) - mean**2
    return mean.tolist(), np.sqrt(np.maximum(var, 0.0)).tolist()


def decode_image(data: bytes) -> np.ndarray:
    """Encoded JPEG/PNG -> (H, W, 3) uint8."""
    with Image.open(io.BytesIO(data)) as pil:
        if pil.mode != "RGB":
            pil = pil.convert("RGB")
        return np.asarray(pil, dtype=np.uint8)


def decode_mask(data: bytes) -> np.ndarray:
    """PNG -> (H, W) uint8."""
    with Image.open(io.BytesIO(data)) as pil:
        if pil.mode != "L":
            pil = pil.convert("L")
        return np.asarray(pil, dtype=np.uint8)


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    """Stack same-shaped arrays; ragged ones become an object array (variable-shaped tensors)."""
    if arrays and all(a.shape == arrays[0].shape for a in arrays):
        return np.stack(arrays)
    out = np.empty(len(arrays), dtype=object)
    out[:] = arrays
    return out


def decode_jpeg_images(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A binary column of JPEGs -> (B, H, W, 3) uint8 (an object array when sizes differ).

    torchvision's decoder (libjpeg-turbo, as PIL's, same pixels) reads straight from the Arrow
    buffer: no Python bytes object or PIL image per row. About twice PIL's rate on 136 px faces.
    """
    import warnings

    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(column)
    if n == 0:
        return np.zeros((0, 0, 0, 3), np.uint8)
    if column.null_count:
        raise ValueError("image column has null rows")
    offset_type = np.int64 if pa.types.is_large_binary(column.type) else np.int32
    offsets = np.frombuffer(column.buffers()[1], offset_type)[column.offset:column.offset + n + 1]
    with warnings.catch_warnings():  # Arrow buffers are read-only; the decoder only reads them
        warnings.simplefilter("ignore", UserWarning)
        data = torch.frombuffer(column.buffers()[2], dtype=torch.uint8)
    images = decode_jpeg([data[int(offsets[i]):int(offsets[i + 1])] for i in range(n)], mode=ImageReadMode.RGB)
    return _stack([img.permute(1, 2, 0).numpy() for img in images])


def decode_images(column: pa.Array | pa.ChunkedArray, decoder: str = "pil") -> np.ndarray:
    """An image column -> (B, H, W, 3) uint8. decoder "torchvision" (JPEG only) decodes about
    twice as fast as "pil" but costs a process ~5 s of imports (torch, torchvision) first."""
    if decoder == "torchvision":
        return decode_jpeg_images(column)
    return _stack([decode_image(b) for b in column.to_pylist()])


def decode_batch(table: pa.Table, k: int, has_masks: bool) -> dict[str, np.ndarray]:
    """Rows of the Parquet schema -> the reader's arrays (SPEC "Public functions").

    Returns image_id (B,) object, image (B, H, W, 3) uint8, keypoints (B, K, 2) float32,
    visible (B, K) bool, identity (B,) object (str or None), and mask (B, H, W) uint8
    when `has_masks`.
    """
    n = table.num_rows
    ids = table.column("image_id").to_pylist()
    out: dict[str, np.ndarray] = {"image_id": np.array(ids, dtype=object)}
    out["image"] = decode_images(table.column("image"))
    kps = table.column("keypoints").combine_chunks()
    vis = table.column("visible").combine_chunks()
    if len(kps.flatten()) != 2 * k * n or len(vis.flatten()) != k * n:
        raise ValueError(f"rows {ids[:3]}...: expected {2 * k} keypoint numbers and {k} flags per row")
    out["keypoints"] = kps.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(n, k, 2)
    out["visible"] = vis.flatten().to_numpy(zero_copy_only=False).astype(bool).reshape(n, k)
    out["identity"] = np.array(table.column("identity").to_pylist(), dtype=object)
    if has_masks:
        masks = table.column("mask").to_pylist()
        missing = [i for i, m in zip(ids, masks) if m is None]
        if missing:
            raise ValueError(f"dataset has masks but row {missing[0]!r} has none")
        out["mask"] = _stack([decode_mask(b) for b in masks])
    return out
