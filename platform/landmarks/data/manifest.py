"""`dataset.json`: what a dataset directory holds, and the check that it still does.

    {"name": "mafl", "K": 5, "landmark_names": [...], "eye_indices": [0, 1],
     "stored_size": 136, "input_size": 96, "border": 20,
     "mean": [r, g, b], "std": [r, g, b],          # over the train split, [0, 1] units
     "has_masks": false, "image_format": "jpeg",
     "splits": {"train": {"rows": 19000, "shards": [
         {"path": "train/part-00000.parquet", "rows": 1000, "sha256": "...", "bytes": 1234}, ...]}},
     "geometry_version": 2,
     ... free keys: source, options, created_at, ingest_version, skipped ...}

`stored_size` is the side of the stored images (not the network input, `input_size`). Datasets
ingested before it had that name hold it under "image_size"; `Manifest.from_dict` still reads them.

`Manifest.verify` compares a dataset directory (local or s3://) with it: a missing,
extra or altered shard is a `ManifestError` that names the shard. `check_geometry` flags a
dataset ingested with an older canonical geometry (`GEOMETRY_VERSION`).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .. import storage
from ..errors import UserError

logger = logging.getLogger(__name__)

MANIFEST_NAME = "dataset.json"
# dataset.json `geometry_version` written by ingest (absent before version 2 = version 1).
# 2: keypoints scaled as the official loaders scale them, no half-pixel shift
#    (`landmarks.augment.geometry`); inat-aves and celeba-wild images resized whole by default;
#    300W cut through the official code's int-truncated resize.
# 3: the official pixels: stored losslessly (PNG) by default, every crop resized alone in Pillow 8.4's
#    pass order (no darkened edge ring for CUB / iNat), 300W resampled twice (bicubic, then bilinear);
#    MAFL's splits in list_eval_partition.txt's order (the official matching pairs).
GEOMETRY_VERSION = 3
# Datasets whose version-1 keypoints are refused for landmark jobs (the others get a warning).
_REINGEST_REQUIRED = ("cub",)
_OLD_GEOMETRY_NOTE = {
    "celeba-wild": "its images are face-box crops (now the converter option crop=face-box; the "
                   "default is the official whole image)",
}
_REQUIRED = ("name", "K", "landmark_names", "eye_indices", "stored_size", "input_size", "border",
             "mean", "std", "has_masks", "image_format", "splits")

# sha256 of shards already hashed in this process, keyed by (uri, size, mtime): re-reading a
# split (val then test, or one split per Tune trial on the driver) does not hash it again.
_HASH_CACHE: dict[tuple[str, int, Any], str] = {}
_HASH_LOCK = threading.Lock()


class ManifestError(UserError):
    """A dataset directory that does not match its dataset.json; `problems` lists each shard."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = problems or [message]


@dataclass(frozen=True)
class Shard:
    path: str  # relative to the dataset directory, '/'-separated
    rows: int
    sha256: str
    bytes: int | None = None


@dataclass
class Split:
    rows: int
    shards: list[Shard]


@dataclass
class Manifest:
    """Typed view of dataset.json; `extra` keeps the free keys (source, options, ...)."""

    name: str
    K: int
    landmark_names: list[str]
    eye_indices: list[int] | None
    stored_size: int  # stored side in pixels; the network input is `input_size`
    input_size: int  # network input side after the eval border crop
    border: int  # eval-time border crop in stored pixels
    mean: list[float]  # per channel (R, G, B) over the train split, [0, 1] units
    std: list[float]
    has_masks: bool
    image_format: str  # "jpeg" or "png"
    splits: dict[str, Split]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_landmarks(self) -> int:
        return self.K

    def split(self, name: str) -> Split:
        if name not in self.splits:
            raise ManifestError(
                f"dataset {self.name!r} has no split {name!r}; splits: {', '.join(self.splits) or 'none'}"
            )
        return self.splits[name]

    # --- (de)serialisation -------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = MANIFEST_NAME) -> Manifest:
        if not isinstance(data, dict):
            raise ManifestError(f"{source}: expected a JSON object")
        if "stored_size" not in data and "image_size" in data:  # written before the key was renamed
            data = {("stored_size" if k == "image_size" else k): v for k, v in data.items()}
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            raise ManifestError(f"{source}: missing key(s) {', '.join(missing)}")
        try:
            splits = {
                name: Split(
                    rows=int(s["rows"]),
                    shards=[Shard(str(sh["path"]), int(sh["rows"]), str(sh["sha256"]),
                                  None if sh.get("bytes") is None else int(sh["bytes"]))
                            for sh in s["shards"]],
                )
                for name, s in data["splits"].items()
            }
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ManifestError(f"{source}: malformed 'splits' entry ({err!r})") from None
        for name, s in splits.items():
            if sum(sh.rows for sh in s.shards) != s.rows:
                raise ManifestError(f"{source}: split {name!r} rows {s.rows} != sum of its shards' rows")
        eye = data["eye_indices"]
        return cls(
            name=str(data["name"]), K=int(data["K"]), landmark_names=list(data["landmark_names"]),
            eye_indices=None if eye is None else [int(i) for i in eye],
            stored_size=int(data["stored_size"]), input_size=int(data["input_size"]),
            border=int(data["border"]), mean=[float(x) for x in data["mean"]],
            std=[float(x) for x in data["std"]], has_masks=bool(data["has_masks"]),
            image_format=str(data["image_format"]), splits=splits,
            extra={k: v for k, v in data.items() if k not in _REQUIRED},
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name, "K": self.K, "landmark_names": list(self.landmark_names),
            "eye_indices": None if self.eye_indices is None else list(self.eye_indices),
            "stored_size": self.stored_size, "input_size": self.input_size, "border": self.border,
            "mean": list(self.mean), "std": list(self.std), "has_masks": self.has_masks,
            "image_format": self.image_format,
        }
        out.update(self.extra)
        out["splits"] = {
            name: {"rows": s.rows, "shards": [
                {"path": sh.path, "rows": sh.rows, "sha256": sh.sha256, "bytes": sh.bytes}
                for sh in s.shards]}
            for name, s in self.splits.items()
        }
        return out

    @classmethod
    def load(cls, uri: str) -> Manifest:
        """Read `<uri>/dataset.json` (or `uri` itself when it names the JSON file)."""
        path = manifest_uri(uri)
        if not storage.exists(path):
            raise ManifestError(
                f"{storage.redact(uri)}: no {MANIFEST_NAME} (not a dataset written by jobs/ingest.py, "
                "or its ingest did not finish)"
            )
        return cls.from_dict(storage.read_json(path), source=storage.redact(path))

    def save(self, uri: str) -> None:
        """Write `<uri>/dataset.json` atomically."""
        storage.write_json_atomic(manifest_uri(uri), self.to_dict())

    # --- verification ------------------------------------------------------------------
    def verify(self, uri: str, split: str | None = None, check_hashes: bool = True,
               max_workers: int = 8) -> None:
        """Check the shards under dataset directory `uri` against this manifest.

        Missing shard, extra `.parquet` file in a split's directory, or an altered shard
        (size, row count, or SHA-256 when `check_hashes`) -> ManifestError naming each.
        Hashes are computed in parallel threads and remembered per (file, size, mtime).
        """
        names = [split] if split is not None else list(self.splits)
        for name in names:
            self.split(name)
        base = dataset_dir(uri)
        files = storage.list_files(base)
        problems: list[str] = []
        known = {sh.path for s in self.splits.values() for sh in s.shards}
        for rel in files:
            in_scope = split is None or rel.split("/", 1)[0] == split
            if in_scope and rel.endswith(".parquet") and rel not in known:
                problems.append(f"extra shard {rel} is not listed in {MANIFEST_NAME}")
        to_check = []
        for name in names:
            for sh in self.splits[name].shards:
                if sh.path not in files:
                    problems.append(f"missing shard {sh.path} (listed in {MANIFEST_NAME})")
                elif sh.bytes is not None and files[sh.path] != sh.bytes:
                    problems.append(f"altered shard {sh.path}: {files[sh.path]} bytes, recorded {sh.bytes}")
                else:
                    to_check.append(sh)
        check = _check_hash if check_hashes else _check_rows
        if to_check:
            with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(to_check)))) as pool:
                problems += [p for p in pool.map(lambda sh: check(base, sh), to_check) if p]
        if problems:
            where = storage.redact(base)
            head = problems[0] if len(problems) == 1 else f"{len(problems)} problems: " + "; ".join(problems)
            raise ManifestError(f"{where}: {head}", problems)


def dataset_dir(uri: str) -> str:
    uri = str(uri).rstrip("/")
    return uri[: -len(MANIFEST_NAME) - 1] if uri.endswith("/" + MANIFEST_NAME) else uri


def manifest_uri(uri: str) -> str:
    return storage.join(dataset_dir(uri), MANIFEST_NAME)


def sha256_of(uri: str) -> str:
    """SHA-256 of a file, streamed; cached per (uri, size, mtime) for this process."""
    info = storage.file_info(uri)
    key = (str(uri), info.size, info.mtime_ns)
    with _HASH_LOCK:
        if key in _HASH_CACHE:
            return _HASH_CACHE[key]
    digest = hashlib.sha256()
    for chunk in storage.iter_chunks(uri):
        digest.update(chunk)  # releases the GIL on large chunks: threads hash in parallel
    with _HASH_LOCK:
        _HASH_CACHE[key] = digest.hexdigest()
    return _HASH_CACHE[key]


def remember_hash(uri: str, sha256: str) -> None:
    """Record a hash computed while writing `uri`, so a verify right after does not re-read it."""
    info = storage.file_info(uri)
    with _HASH_LOCK:
        _HASH_CACHE[(str(uri), info.size, info.mtime_ns)] = sha256


def parquet_rows(uri: str) -> int:
    import pyarrow.parquet as pq

    fs, path = storage.resolve(uri)
    with fs.open_input_file(path) as f:
        return pq.ParquetFile(f).metadata.num_rows


def _check_hash(base: str, shard: Shard) -> str | None:
    found = sha256_of(storage.join(base, shard.path))
    if found != shard.sha256:
        return f"altered shard {shard.path}: SHA-256 {found[:12]}... != recorded {shard.sha256[:12]}..."
    return None


def _check_rows(base: str, shard: Shard) -> str | None:
    try:
        rows = parquet_rows(storage.join(base, shard.path))
    except (OSError, ValueError) as err:  # a truncated or overwritten file is not Parquet any more
        return f"altered shard {shard.path}: not a readable Parquet file ({storage.redact(str(err))})"
    if rows != shard.rows:
        return f"altered shard {shard.path}: {rows} rows, recorded {shard.rows}"
    return None


def check_geometry(manifest: Manifest, data_path: str) -> None:
    """Check that a dataset's keypoints follow the current canonical geometry (`GEOMETRY_VERSION`).

    For jobs that use the keypoints. A dataset ingested before (no `geometry_version` in its
    dataset.json, or an older one) raises UserError for the datasets in `_REINGEST_REQUIRED`
    (cub), with the command that re-ingests it; for the others it only logs a warning: their
    keypoints differ from the official scaling by under one stored pixel.
    """
    version = int(manifest.extra.get("geometry_version", 1))
    if version >= GEOMETRY_VERSION:
        return
    where = storage.redact(str(data_path))
    if version == 2 and manifest.name == "synthetic-faces":  # our own renderer: nothing official changed
        return
    if version == 2:  # the keypoints are right; the pixels (and MAFL's test order) are not the official ones
        note = ("its test split is in testing.txt's order, so matching's different-identity pairs are not the "
                "official ones, and its" if manifest.name == "mafl" else "its")
        logger.warning("%s: dataset %r was ingested before its pixels were the official ones (geometry_version 2 < "
                       "%d); %s images were stored as JPEG and resampled in one step. Re-ingest to match the "
                       "paper's protocol: `%s`", where, manifest.name, GEOMETRY_VERSION, note,
                       _reingest_command(manifest, where))
        return
    head = (f"{where}: dataset {manifest.name!r} was ingested before keypoints followed the official "
            f"scaling (geometry_version {version} < {GEOMETRY_VERSION})")
    command = _reingest_command(manifest, where)
    if manifest.name in _REINGEST_REQUIRED:
        raise UserError(f"{head}: re-ingest with `{command}`")
    note = _OLD_GEOMETRY_NOTE.get(manifest.name, "its keypoints differ from the official ones by "
                                                 "under one stored pixel")
    logger.warning("%s; %s. Re-ingest to match the paper's protocol: `%s`", head, note, command)


def _reingest_command(manifest: Manifest, out: str) -> str:
    """The jobs/ingest.py command line that writes `manifest`'s dataset again over `out`."""
    params = manifest.extra.get("ingest_params") or {}
    source = manifest.extra.get("source") or {}
    dataset = params.get("dataset") or source.get("dataset") or manifest.name
    root = params.get("root") or source.get("root") or "RAW_DIR"
    size = params.get("image_size", 96)
    extra = "" if size == 96 else f" --image-size {size}"
    return f"python jobs/ingest.py {dataset} --root {root} --out {out}{extra} --overwrite"


def open_manifest(path: str, *splits: str, need_landmarks: bool = True, need_masks: bool = False) -> Manifest:
    """Load `dataset.json` at `path` and verify the named splits' shards (row counts and SHA-256).

    With `need_landmarks`, also `check_geometry`: a dataset whose keypoints predate the official
    scaling is refused (cub) or flagged in the log (the others).
    Raises UserError naming the path, the split or the shard, and what to do.
    """
    if not path:
        raise UserError("data.path is not set: pass data.path=DIR (a dataset written by jobs/ingest.py)")
    manifest = Manifest.load(path)
    for split in splits:
        if split not in manifest.splits:
            raise UserError(f"{path}: dataset {manifest.name!r} has no split {split!r} "
                            f"(it has {', '.join(manifest.splits)})")
        manifest.verify(path, split=split)
    if need_landmarks and manifest.num_landmarks == 0:
        raise UserError(f"{path}: dataset {manifest.name!r} has no landmarks; this job needs a labelled "
                        "dataset (e.g. mafl, aflw-mtfl, 300w, cub, synthetic-faces)")
    if need_landmarks:
        check_geometry(manifest, path)
    if need_masks and not manifest.has_masks:
        raise UserError(f"{path}: dataset {manifest.name!r} has no foreground masks (segmentation needs "
                        "cub or synthetic-faces)")
    return manifest
