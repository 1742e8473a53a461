"""Reading an ingested dataset, the one place that reads its Parquet shards: `read_dataset` (Ray Data),
`read_split_numpy` (a small split without Ray), and the evaluation reads (`iter_split` /
`load_split`: numpy batches after the eval border crop, `split_image_ids`).

    ds = read_dataset("s3://bucket/mafl", "train", fraction=0.1, seed=0)   # after connecting to Ray
    # rows: image_id, image (H, W, 3) uint8, keypoints (K, 2) float32, visible (K,) bool,
    #       identity (str or None), mask (H, W) uint8 where the dataset has masks

Both check the split against dataset.json first (missing, extra or altered shard ->
ManifestError naming it), then read the Parquet shards through the same pyarrow
filesystem ingest wrote with, and decode images with PIL (Ray Data `map_batches` on
CPU workers for `read_dataset`; `images_only=True` reads just the image column, decoded by
torchvision for JPEG splits of 20k rows and more).

`fraction` keeps exactly round(fraction * rows) rows (at least one): those whose
seeded 64-bit hash of image_id is smallest. The subset depends only on (seed,
image ids), and a smaller fraction is a subset of a larger one with the same seed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .. import storage
from ..errors import UserError
from .manifest import Manifest, ManifestError, dataset_dir
from .shards import decode_batch, decode_images

_READ_COLUMNS = ["image_id", "image", "keypoints", "visible", "identity"]
# From this many rows an images_only read decodes JPEG with torchvision (~2x PIL's rate): a decode
# worker's ~5 s of torch + torchvision imports costs as much as ~10k PIL decodes.
TORCHVISION_DECODE_MIN_ROWS = 20_000


def load_manifest(path: str) -> Manifest:
    """The dataset.json of the dataset directory (or s3:// URI) `path`."""
    return Manifest.load(path)


def read_dataset(path: str, split: str, fraction: float | None = None, seed: int = 0,
                 verify: bool = True, images_only: bool = False, shuffle_seed: int | None = None) -> Any:
    """A `ray.data.Dataset` over one split of an ingested dataset (rows as in the module doc).

    images_only: rows hold only "image", what pretraining and the projector read: ids,
    keypoints and masks are neither read nor decoded; JPEG splits of at least
    `TORCHVISION_DECODE_MIN_ROWS` rows are decoded by torchvision straight from the Arrow
    buffer (`shards.decode_jpeg_images`), smaller ones by PIL.

    shuffle_seed: the training jobs' order, the official DataLoader(shuffle=True)'s: every execution
    of the dataset (every epoch of a Ray Train job) is a fresh random permutation of all its rows,
    reproducible from the seed (Ray Data's `random_shuffle` with `RandomSeedConfig(seed,
    reseed_after_execution=True)`), so batches, shuffle-BN groups and queue contents change
    composition every epoch. The encoded rows are shuffled, before decoding (a JPEG or PNG row is 3-10x
    smaller than its pixels); the first batch of an epoch waits for its split to be read.

    Connecting to Ray is the caller's job (`landmarks.cluster.connect`). Raises ManifestError (naming
    the shard) before any work if the split's shards do not match dataset.json; with `verify=False`
    only their presence is checked by Ray.
    """
    from ray.data import RandomSeedConfig

    manifest, fs, paths = _prepare(path, split, verify)
    threshold = fraction_threshold(_image_ids(fs, paths), fraction, seed) if _partial(fraction) else None
    columns, decoder = _columns(manifest), None
    if images_only:
        columns = ["image_id", "image"] if threshold is not None else ["image"]
        big = manifest.split(split).rows >= TORCHVISION_DECODE_MIN_ROWS
        decoder = "torchvision" if manifest.image_format == "jpeg" and big else "pil"
    # batch_size=None: each decode call takes a whole shard, which lets Ray Data fuse it with the
    # shard's read into one task (a map with a batch size is not fused with a read in Ray 2.60).
    rows = _read_parquet_per_file(paths, fs, columns)
    if shuffle_seed is not None:
        if threshold is not None:  # the fraction is kept before the shuffle: fewer rows move
            rows = rows.map_batches(_keep_fraction, batch_format="pyarrow", batch_size=None, zero_copy_batch=True,
                                    fn_kwargs={"seed": seed, "threshold": threshold})
            threshold = None
        rows = rows.random_shuffle(seed=RandomSeedConfig(seed=shuffle_seed, reseed_after_execution=True))
    return rows.map_batches(
        _decode, batch_format="pyarrow", batch_size=None, zero_copy_batch=True,
        fn_kwargs={"k": manifest.K, "has_masks": manifest.has_masks, "size": manifest.stored_size,
                   "seed": seed, "threshold": threshold,
                   "images": decoder},
    )


def _read_parquet_per_file(paths: list[str], fs: Any, columns: list[str]) -> Any:
    """`ray.data.read_parquet` with one read task per shard file, each yielding one block.

    Ray 2.60's default (V2) Parquet datasource packs row groups into ~128 MiB read tasks by
    their compressed size: a split of JPEG bytes is then a single read task, so decoding runs
    in one task and nothing streams until it ends (5-14 s before the first batch of a
    2,000-image split; benchmarks/README.md). The V1 datasource reads file by file.
    override_num_blocks = one per file stops Ray Data from splitting the read's blocks to reach
    its target parallelism: a split read cannot be fused with the decode that follows, and an
    unfused read and decode are two operators that share the CPU budget (half each).
    """
    import ray
    from ray.data import DataContext

    ctx = DataContext.get_current()
    previous, ctx.use_datasource_v2 = ctx.use_datasource_v2, False
    try:
        return ray.data.read_parquet(paths, filesystem=fs, columns=columns, partitioning=None,
                                     file_extensions=None, override_num_blocks=len(paths))
    finally:
        ctx.use_datasource_v2 = previous


def read_split_numpy(path: str, split: str, fraction: float | None = None, seed: int = 0,
                     verify: bool = True, max_workers: int = 8) -> dict[str, np.ndarray]:
    """A whole split as numpy arrays, in ingest order, without Ray (for small eval splits).

    Returns image_id (N,) object, image (N, H, W, 3) uint8, keypoints (N, K, 2) float32,
    visible (N, K) bool, identity (N,) object, and mask (N, H, W) uint8 where the
    dataset has masks. `fraction` keeps the same rows as `read_dataset` does.
    """
    import pyarrow.parquet as pq

    manifest, fs, paths = _prepare(path, split, verify)
    threshold = fraction_threshold(_image_ids(fs, paths), fraction, seed) if _partial(fraction) else None

    def read_one(p: str) -> dict[str, np.ndarray]:
        table = pq.read_table(p, filesystem=fs, columns=_columns(manifest))
        return _decode(table, manifest.K, manifest.has_masks, manifest.stored_size, seed, threshold)

    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(paths)))) as pool:
        parts = list(pool.map(read_one, paths))
    if not parts:
        return _decode_empty(manifest.K, manifest.has_masks, manifest.stored_size)
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def fraction_threshold(image_ids: list[str], fraction: float, seed: int) -> int | None:
    """The hash bound that keeps round(fraction * N) of `image_ids` (None: keep all)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    keep = max(1, round(fraction * len(image_ids)))
    if keep >= len(image_ids):
        return None
    keys = np.sort(row_keys(image_ids, seed))
    return int(keys[keep])


def row_keys(image_ids, seed: int) -> np.ndarray:
    """(N,) uint64: a seeded hash of each image_id (the order `fraction` takes rows in)."""
    return np.array(
        [int.from_bytes(hashlib.blake2b(f"{seed}\0{i}".encode(), digest_size=8).digest(), "big")
         for i in image_ids], dtype=np.uint64)


def _partial(fraction: float | None) -> bool:
    if fraction is None:
        return False
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return fraction < 1.0


def _prepare(path: str, split: str, verify: bool) -> tuple[Manifest, Any, list[str]]:
    manifest = Manifest.load(path)
    shards = manifest.split(split).shards
    if verify:
        manifest.verify(path, split=split, check_hashes=True)
    if not shards:
        raise ManifestError(f"{storage.redact(path)}: split {split!r} has no rows")
    fs, base = storage.resolve(dataset_dir(path))
    return manifest, fs, [storage.join(base, sh.path) for sh in shards]


def _columns(manifest: Manifest) -> list[str]:
    return _READ_COLUMNS + (["mask"] if manifest.has_masks else [])


def _image_ids(fs, paths: list[str]) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(paths, filesystem=fs, columns=["image_id"]).column("image_id").to_pylist()


def _decode(table, k: int, has_masks: bool, size: int, seed: int, threshold: int | None,
            images: str | None = None):
    """Parquet rows -> decoded arrays, dropping rows outside the `fraction` before decoding.
    images: the decoder ("pil" | "torchvision") when only the image column is wanted."""
    if threshold is not None:
        table = _keep_fraction(table, seed, threshold)
    if images is not None:
        if table.num_rows == 0:
            return {"image": np.zeros((0, size, size, 3), np.uint8)}
        return {"image": decode_images(table.column("image"), images)}
    if table.num_rows == 0:
        return _decode_empty(k, has_masks, size)
    return decode_batch(table, k, has_masks)


def _keep_fraction(table, seed: int, threshold: int):
    """The rows of a `fraction` (`fraction_threshold`): those whose seeded image_id hash is below it."""
    import pyarrow as pa

    keep = row_keys(table.column("image_id").to_pylist(), seed) < np.uint64(threshold)
    return table.filter(pa.array(keep, pa.bool_()))


def _decode_empty(k: int, has_masks: bool, size: int) -> dict[str, np.ndarray]:
    out = {
        "image_id": np.zeros(0, object), "image": np.zeros((0, size, size, 3), np.uint8),
        "keypoints": np.zeros((0, k, 2), np.float32), "visible": np.zeros((0, k), bool),
        "identity": np.zeros(0, object),
    }
    if has_masks:
        out["mask"] = np.zeros((0, size, size), np.uint8)
    return out


# ----------------------------------------------------------------------------- evaluation reads


def eval_geometry(batch: dict[str, np.ndarray], border: int, image_size: int) -> dict[str, np.ndarray]:
    """Decoded rows at the stored size -> the network input: eval border crop, then (only when the
    dataset was ingested for another input size) a resize to `image_size`. Keypoints and masks, where
    the batch has them, move along."""
    images = batch["image"]
    if images.dtype == object:
        raise UserError("dataset images differ in size; evaluation needs the square images ingest writes")
    out = dict(batch)
    stored = images.shape[1]
    side = stored - 2 * border
    if side < 1:
        raise UserError(f"eval border {border} does not fit images of {stored} px")
    out["image"] = images[:, border:stored - border, border:stored - border]
    if "keypoints" in batch:
        out["keypoints"] = batch["keypoints"] - np.float32(border)
    if "mask" in batch:
        out["mask"] = batch["mask"][:, border:stored - border, border:stored - border]
    if side != image_size:
        import torch
        import torch.nn.functional as F

        from ..coords import resize_with_keypoints

        x = torch.from_numpy(np.ascontiguousarray(out["image"])).permute(0, 3, 1, 2).float()
        x, kps = resize_with_keypoints(x, image_size, out.get("keypoints"))
        out["image"] = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        if kps is not None:
            out["keypoints"] = kps.astype(np.float32)
        if "mask" in out:
            m = torch.from_numpy(np.ascontiguousarray(out["mask"]))[:, None].float()
            out["mask"] = F.interpolate(m, size=(image_size, image_size), mode="nearest")[:, 0].to(torch.uint8).numpy()
    out["image"] = np.ascontiguousarray(out["image"])
    return out


def iter_split(data_path: str, split: str, image_size: int, batch_size: int = 64,
               rows: Sequence[int] | None = None, stored: bool = False) -> Iterator[dict[str, np.ndarray]]:
    """Batches of a split after `eval_geometry`, shard by shard (never the whole split in RAM).

    rows: row indices (in ingest order) to keep; batches then hold them in ascending order.
    Each batch also has "row" (B,) int64, the rows it holds. stored: the images and keypoints as
    stored, before the eval border crop (for augmentations the official code applies first).
    """
    import pyarrow.parquet as pq

    manifest = Manifest.load(data_path)
    fs, base = storage.resolve(dataset_dir(data_path))
    columns = _columns(manifest)
    wanted = None if rows is None else np.unique(np.asarray(rows, dtype=np.int64))
    offset = 0
    for shard in manifest.split(split).shards:
        lo, offset = offset, offset + shard.rows
        positions = np.arange(shard.rows) if wanted is None else wanted[(wanted >= lo) & (wanted < offset)] - lo
        if len(positions) == 0:
            continue
        table = pq.read_table(storage.join(base, shard.path), filesystem=fs, columns=columns)
        if wanted is not None:
            table = table.take(positions)
        for start in range(0, table.num_rows, batch_size):
            decoded = decode_batch(table.slice(start, batch_size), manifest.K, manifest.has_masks)
            decoded["row"] = positions[start:start + batch_size] + lo
            yield decoded if stored else eval_geometry(decoded, manifest.border, image_size)


def load_split(data_path: str, split: str, image_size: int, rows: Sequence[int] | None = None,
               stored: bool = False) -> dict[str, np.ndarray]:
    """`iter_split` concatenated: for small selections (an annotation budget, a test split)."""
    parts = list(iter_split(data_path, split, image_size, rows=rows, stored=stored))
    if not parts:
        raise UserError(f"{data_path}: split {split!r} has no rows to load")
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def split_image_ids(data_path: str, split: str) -> list[str]:
    """image_id of every row of a split, in ingest order (reads one column only)."""
    _, fs, paths = _prepare(data_path, split, verify=False)
    return _image_ids(fs, paths)
