"""Raw dataset -> Parquet shards + dataset.json, one Ray task per shard, resumable.

    manifest = ingest("mafl", "/data/celeba", "s3://bucket/mafl", image_size=96)

The converter parses the annotations on the driver (bad lines fail here, before
any work); the items of each split are cut into shards of `rows_per_shard`, and a
Ray task per shard (`cluster.map_tasks`) loads, encodes and writes it (`shards.records_to_table`). The
driver records each finished shard (path, rows, SHA-256, pixel sums) in
`OUT/_ingest_state.json`, so a rerun of an interrupted ingest only does the
shards that are missing. Files appear under their final name only when complete
(`storage.write_atomic`) and `dataset.json` is written last: a directory with a
dataset.json is a finished dataset.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime as _dt
import hashlib
import importlib
import json
import os
import sys
from dataclasses import dataclass
from typing import Any

from .. import storage
from ..errors import UserError
from .converters import BadItem, Converter, get_converter
from .manifest import GEOMETRY_VERSION, MANIFEST_NAME, Manifest, Shard, Split, remember_hash
from .shards import IMAGE_FORMATS

INGEST_VERSION = 1
STATE_NAME = "_ingest_state.json"
# Images and masks are JPEG/PNG already: compressing them again costs CPU for nothing.
_PARQUET_COMPRESSION = {"image": "none", "mask": "none"}


class IngestError(UserError):
    """An ingest that cannot start or finish for a reason the user can fix."""


@dataclass(frozen=True)
class ShardTask:
    """Rows [start, stop) of one split's items, written to `path`."""

    split: str
    index: int
    start: int
    stop: int

    @property
    def path(self) -> str:
        return f"{self.split}/part-{self.index:05d}.parquet"


def plan_shards(counts: dict[str, int], rows_per_shard: int) -> list[ShardTask]:
    """Cut each split's item range into shards of at most `rows_per_shard` rows."""
    plan = []
    for split, n in counts.items():
        for index, start in enumerate(range(0, n, rows_per_shard)):
            plan.append(ShardTask(split, index, start, min(start + rows_per_shard, n)))
    return plan


def converter_class(dataset: str) -> type[Converter]:
    """A registered DATASET name, or `package.module:Class` for a converter of your own."""
    if ":" in dataset:
        module, _, cls = dataset.partition(":")
        try:
            return getattr(importlib.import_module(module), cls)
        except (ImportError, AttributeError) as err:
            raise IngestError(f"cannot load converter {dataset!r}: {err}") from None
    try:
        return get_converter(dataset)
    except KeyError as err:
        raise IngestError(str(err.args[0])) from None


def write_shard(converter: Converter, items: list, task: ShardTask, fs, base: str,
                skip_bad: bool) -> dict[str, Any]:
    """Load, encode and write one shard (runs in a Ray task). Returns what the manifest needs.

    A `BadItem` is returned (not raised) as {"bad": [source, line, message]} unless
    `skip_bad`, in which case it is listed under "skipped" and the row left out.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .shards import pixel_sums, records_to_table

    records, skipped = [], []
    total, total_sq, count = [0, 0, 0], [0, 0, 0], 0
    for item in items:
        try:
            try:
                rec = converter.load(item)
            except OSError as err:  # an unreadable or undecodable file the converter did not name
                raise BadItem(f"{task.split} item {item!r:.160}", None, f"{type(err).__name__}: {err}") from None
        except BadItem as err:
            if not skip_bad:
                return {"path": task.path, "bad": [err.source, err.line, err.message]}
            skipped.append(str(err))
            continue
        records.append(rec)
        s, sq, n = pixel_sums(rec.image)
        total = [a + b for a, b in zip(total, s)]
        total_sq = [a + b for a, b in zip(total_sq, sq)]
        count += n
    table = records_to_table(records, converter.info.image_format, converter.info.num_landmarks)
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf, compression=_PARQUET_COMPRESSION)
    data = buf.getvalue().to_pybytes()
    storage.write_atomic(fs, storage.join(base, task.path), data, display=task.path)
    return {"path": task.path, "rows": table.num_rows, "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data), "sum": total, "sumsq": total_sq, "pixels": count, "skipped": skipped}


def ingest(dataset: str, root: str | None, out: str, image_size: int = 96, rows_per_shard: int = 1000,
           skip_bad: bool = False, options: dict[str, Any] | None = None, progress: bool = True,
           overwrite: bool = False, verbose: bool = False, image_format: str | None = None) -> Manifest:
    """Convert DATASET under `root` into Parquet shards + dataset.json under `out` (local or s3://).

    image_format: how the `image` column is encoded, "png" (lossless: the pixels the official loaders
    compute, every real dataset's default) or "jpeg" (quality 95: 3-4x smaller and faster to decode, a
    few levels off; the synthetic faces' default); None: the converter's default.

    Raises BadItem (file and line) on bad input unless `skip_bad`; IngestError when `out`
    holds a different ingest (use a new `out` or `overwrite=True`). No dataset.json is
    written unless every shard was.
    """
    if rows_per_shard < 1 or image_size < 1:
        raise IngestError("rows_per_shard and image_size must be positive")
    options = dict(options or {})
    cls = converter_class(dataset)
    if root is not None and "://" not in str(root) and not os.path.exists(root):
        raise IngestError(f"raw dataset root {root} does not exist")
    conv = cls(root=root, image_size=image_size, skip_bad=skip_bad, options=options)
    if image_format is not None:
        if image_format not in IMAGE_FORMATS:
            raise IngestError(f"image format must be one of {', '.join(IMAGE_FORMATS)}, got {image_format!r}")
        conv.info = dataclasses.replace(conv.info, image_format=image_format)
    items = conv.splits()
    for err in conv.skipped:
        _say(f"skipped: {storage.redact(str(err))}")
    counts = {split: len(v) for split, v in items.items()}
    params = _jsonable({
        "dataset": dataset, "root": _display_root(root), "image_size": image_size,
        "rows_per_shard": rows_per_shard, "skip_bad": skip_bad, "options": options,
        "image_format": conv.info.image_format,
        "ingest_version": INGEST_VERSION, "geometry_version": GEOMETRY_VERSION,
    })
    done = _prepare_out(out, params, counts, overwrite)
    if isinstance(done, Manifest):
        _say(f"{storage.redact(out)} already holds this dataset; nothing to do")
        return done
    state = {"params": params, "counts": counts, "done": done}
    storage.write_json_atomic(storage.join(out, STATE_NAME), state)

    plan = plan_shards(counts, rows_per_shard)
    files = storage.list_files(out)
    todo = [t for t in plan if not (t.path in done and files.get(t.path) == done[t.path]["bytes"])]
    for rel in files:  # temp files of an interrupted local run
        if storage.is_tmp_name(rel):
            storage.delete(storage.join(out, rel))
    if done and todo:
        _say(f"resuming: {len(plan) - len(todo)} of {len(plan)} shards already written")
    if todo:
        _run_tasks(conv, items, todo, out, skip_bad, state, progress, verbose)

    manifest = _manifest(conv.info, plan, state, conv.skipped, dataset, root, params)
    manifest.save(out)
    storage.delete(storage.join(out, STATE_NAME))
    return manifest


def verify_dataset(out: str, split: str | None = None, check_hashes: bool = True) -> Manifest:
    """Check every shard of the dataset at `out` against its dataset.json (raises ManifestError)."""
    manifest = Manifest.load(out)
    manifest.verify(out, split=split, check_hashes=check_hashes)
    return manifest


def _run_tasks(conv: Converter, items: dict[str, list], todo: list[ShardTask], out: str,
               skip_bad: bool, state: dict, progress: bool, verbose: bool) -> None:
    from ..cluster import map_tasks
    from ..progress import Progress

    fs, base = storage.resolve(out)
    shipped = copy.copy(conv)
    shipped.skipped = []  # the driver reports these; BadItem instances do not unpickle
    calls = ((t, (items[t.split][t.start:t.stop], t, fs, base, skip_bad)) for t in todo)
    bar = Progress(len(todo), "ingest", every=2.0, enabled=progress)
    rows = skipped = 0
    with contextlib.closing(map_tasks(write_shard, calls, shared=(shipped,), passthrough=(UserError, BadItem),
                                      verbose=verbose)) as results:
        for task, result in results:
            if "bad" in result:
                raise BadItem(*result["bad"])
            for msg in result["skipped"]:
                _say(f"skipped: {storage.redact(msg)}")
            skipped += len(result["skipped"])
            state["done"][task.path] = result
            storage.write_json_atomic(storage.join(out, STATE_NAME), state)
            remember_hash(storage.join(out, task.path), result["sha256"])
            rows += result["rows"]
            bar.update(1, rows=rows, skipped=skipped)


def _prepare_out(out: str, params: dict, counts: dict, overwrite: bool) -> dict | Manifest:
    """The finished shards to keep ({} for a fresh start), or the finished Manifest."""
    state_uri, manifest_uri = storage.join(out, STATE_NAME), storage.join(out, MANIFEST_NAME)
    if overwrite:
        splits = set(counts)
        for uri in (state_uri, manifest_uri):
            if storage.exists(uri):
                old = storage.read_json(uri)
                splits |= set(old.get("splits") or old.get("counts") or {})
                storage.delete(uri)
        for split in sorted(splits):
            storage.delete(storage.join(out, split))
        return {}
    if storage.exists(manifest_uri):
        manifest = Manifest.load(out)
        old = manifest.extra.get("ingest_params")
        if old != params:
            raise IngestError(_mismatch(out, "a finished dataset", old, params))
        manifest.verify(out, check_hashes=False)
        return manifest
    if storage.exists(state_uri):
        state = storage.read_json(state_uri)
        if state.get("params") != params or state.get("counts") != counts:
            raise IngestError(_mismatch(out, "an unfinished ingest", state.get("params"), params))
        return dict(state.get("done") or {})
    if storage.list_files(out):
        raise IngestError(f"{storage.redact(out)} is not empty and holds no ingest; "
                          "use a new --out or --overwrite")
    return {}


def _mismatch(out: str, what: str, old: dict | None, new: dict) -> str:
    keys = sorted(k for k in set(old or {}) | set(new) if (old or {}).get(k) != new.get(k))
    return (f"{storage.redact(out)} holds {what} with different parameters "
            f"({', '.join(keys) or 'unknown'}); use a new --out or --overwrite")


def _manifest(info, plan: list[ShardTask], state: dict, parse_skipped: list, dataset: str,
              root: str | None, params: dict) -> Manifest:
    from .shards import mean_std

    done = state["done"]
    splits: dict[str, Split] = {}
    for split in state["counts"]:
        shards = [Shard(t.path, done[t.path]["rows"], done[t.path]["sha256"], done[t.path]["bytes"])
                  for t in plan if t.split == split]
        splits[split] = Split(sum(s.rows for s in shards), shards)
    stats_split = "train" if "train" in splits else None
    stat_shards = [done[t.path] for t in plan if stats_split is None or t.split == stats_split]
    total = [sum(r["sum"][c] for r in stat_shards) for c in range(3)]
    total_sq = [sum(r["sumsq"][c] for r in stat_shards) for c in range(3)]
    mean, std = mean_std(total, total_sq, sum(r["pixels"] for r in stat_shards))
    skipped = [str(e) for e in parse_skipped] + [m for t in plan for m in done[t.path].get("skipped", [])]
    return Manifest(
        name=info.name, K=info.num_landmarks, landmark_names=list(info.landmark_names),
        eye_indices=None if info.eye_indices is None else list(info.eye_indices),
        stored_size=info.stored_size, input_size=info.input_size, border=info.border,
        mean=mean, std=std, has_masks=info.has_masks, image_format=info.image_format, splits=splits,
        extra={
            "source": {"dataset": dataset, "root": _display_root(root)},
            "options": params["options"],
            "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "ingest_version": INGEST_VERSION,
            "geometry_version": GEOMETRY_VERSION,
            "ingest_params": params,
            "stats_split": stats_split or "all",
            "skipped": len(skipped),
            "skipped_items": [storage.redact(s) for s in skipped[:100]],
        },
    )


def _display_root(root: str | None) -> str | None:
    if root is None:
        return None
    root = str(root)
    return storage.redact(root) if "://" in root else os.path.abspath(root)


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str, sort_keys=True))


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
