"""The frozen-representation cache: a backbone's stage outputs for one dataset split, computed once.

    fs = get_features(backbone, info["fingerprint"], "data/mafl", "test", "hypercolumn", 96)
    feats = fs.dense(idx, device)          # (B, 3840, 48, 48) float32 hypercolumns, built on `device`
    fs.keypoints[idx]                      # (B, K, 2) float32, input pixels after the eval border crop

What is stored is not the 48x48 hypercolumn but its ingredients, the four stage outputs
(layer1..layer4) at their own resolution (24, 12, 6, 3 px for a 96 px input), as float32, the
numbers the backbone computed (the official code keeps them float32; float16 moved predicted
landmarks by 0.15 px on average, 0.46 px at most at 96 px): a hypercolumn is a bilinear resize +
concat of them, so `dense()` rebuilds it exactly on the device. ResNet50 at 96 px: 1.1 MB per image
instead of 35 MB (3840 x 48 x 48 x 4 bytes), i.e. 21 GB for MAFL's 19000 training images instead of
670 GB. One entry serves `hypercolumn` (any `layers`), `conv4` and `projected` (the 1x1 projector
runs on the fly).

Key: a content hash of (backbone weights fingerprint, the split's shard SHA-256s from
dataset.json, eval border, input size, normalisation, cache format version). Directory:
`<root>/<key>/` with `layer{1..4}.npy` (N, C, h, w) float32, `keypoints.npy`, `visible.npy`,
`masks.npy` (datasets with masks), `rows.json` (image ids, identities) and `meta.json` (written
last). `<root>` is `features.dir`, else `<data.path>/_features` for a writable local dataset,
else `runs/features`. Concurrent jobs (Ray Tune trials) are safe: the first takes an fcntl
lock, computes into a temp dir and renames it into place; the others wait and then read it.
Large splits are streamed shard by shard and written batch by batch into .npy memmaps.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import storage
from .augment.views import input_tensor
from .data.manifest import Manifest, dataset_dir
from .data.normalization import input_stats
from .data.reader import iter_split
from .errors import UserError
from .models.representation import Representation, assemble, block_channels, dense_size
from .registry import BACKBONE_REPRESENTATIONS

CACHE_VERSION = 2  # 2: float32 stage outputs (1: float16)
CACHE_STATS = {"hits": 0, "misses": 0}  # per process; tests assert on it
_META = "meta.json"


# ----------------------------------------------------------------------------- the cached split


@dataclass
class FeatureSet:
    """One split's cached stage outputs and labels; arrays may be read-only memmaps.

    stages: [layer1..layer4], each (N, C_s, h_s, w_s) float32. keypoints (N, K, 2) float32 in
    input pixels; visible (N, K) bool; masks (N, H, W) uint8 or None; image_ids, identities (N,).
    """

    key: str
    directory: Path | None
    stages: list[np.ndarray]
    keypoints: np.ndarray
    visible: np.ndarray
    masks: np.ndarray | None
    image_ids: np.ndarray
    identities: np.ndarray
    image_size: int
    kind: str = "hypercolumn"
    layers: int = 4
    hit: bool = False

    def __len__(self) -> int:
        return len(self.keypoints)

    @property
    def stage_channels(self) -> list[int]:
        return [s.shape[1] for s in self.stages]

    @property
    def channels(self) -> int:
        return sum(block_channels(self.stage_channels, self.kind, self.layers))

    def stage_batch(self, idx: Sequence[int] | np.ndarray, device: torch.device | str = "cpu") -> list[torch.Tensor]:
        """Stage outputs of rows `idx` as float32 tensors on `device`."""
        idx = np.asarray(idx, dtype=np.int64)
        return [torch.from_numpy(np.asarray(s[idx])).to(device) for s in self.stages]

    def dense(self, idx: Sequence[int] | np.ndarray, device: torch.device | str = "cpu",
              size: tuple[int, int] | None = None) -> torch.Tensor:
        """The representation of rows `idx`, (B, C, h, w) float32, at `models.dense_size` by default."""
        return assemble(self.stage_batch(idx, device), self.kind, self.layers,
                        size or dense_size(self.kind, self.image_size))


# ----------------------------------------------------------------------------- the cache


def feature_key(fingerprint: str, manifest: Manifest, split: str, image_size: int,
                mean: Sequence[float], std: Sequence[float]) -> str:
    """Content hash naming one cache entry (see the module docstring)."""
    content = {
        "version": CACHE_VERSION, "backbone": fingerprint, "dataset": manifest.name, "split": split,
        "shards": [sh.sha256 for sh in manifest.split(split).shards], "border": manifest.border,
        "image_size": int(image_size), "mean": [round(float(m), 6) for m in mean],
        "std": [round(float(s), 6) for s in std],
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:32]


def default_cache_root(data_path: str, cache_dir: str | None = None) -> Path:
    """features.dir, else <data.path>/_features for a writable local dataset, else runs/features."""
    if cache_dir:
        return Path(cache_dir).expanduser().resolve()
    if not storage.is_s3(data_path):
        local = Path(dataset_dir(data_path)).resolve()
        if os.access(local, os.W_OK):
            return local / "_features"
    return Path("runs/features").resolve()


def features_for(rep: Representation, data_path: str, split: str, image_size: int,
                 cache_dir: str | None = None) -> FeatureSet:
    """The cached stage outputs of a split for `rep`'s backbone and input normalisation."""
    return get_features(rep.backbone, rep.info["fingerprint"], data_path, split, rep.backbone_kind, image_size,
                        rep.layers, cache_dir=cache_dir or None, device=rep.device, mean=rep.mean, std=rep.std)


def _load(directory: Path, key: str, image_size: int, kind: str, layers: int) -> FeatureSet:
    rows = json.loads((directory / "rows.json").read_text())
    masks = directory / "masks.npy"
    return FeatureSet(
        key=key, directory=directory,
        stages=[np.load(directory / f"layer{i}.npy", mmap_mode="r") for i in range(1, 5)],
        keypoints=np.load(directory / "keypoints.npy"), visible=np.load(directory / "visible.npy"),
        masks=np.load(masks, mmap_mode="r") if masks.exists() else None,
        image_ids=np.array(rows["image_id"], dtype=object), identities=np.array(rows["identity"], dtype=object),
        image_size=image_size, kind=kind, layers=layers,
    )


@torch.no_grad()
def _compute(backbone: torch.nn.Module, data_path: str, split: str, manifest: Manifest, image_size: int,
             mean: Sequence[float], std: Sequence[float], device: torch.device, batch_size: int,
             out: Path) -> dict[str, Any]:
    """Stream the split through the backbone into .npy memmaps under `out`."""
    from .progress import Progress

    n = manifest.split(split).rows
    stage_files: list[np.ndarray] = []
    keypoints = visible = masks = None
    ids: list[str] = []
    identities: list[Any] = []
    bar = Progress((n + batch_size - 1) // batch_size, f"features {manifest.name}/{split}", every=10.0)
    start = 0
    for batch in iter_split(data_path, split, image_size, batch_size):
        stages = backbone.stages(input_tensor(batch["image"], mean, std, device), num_stages=4)
        b = len(batch["image"])
        if not stage_files:  # shapes known after the first batch
            stage_files = [np.lib.format.open_memmap(out / f"layer{i + 1}.npy", mode="w+", dtype=np.float32,
                                                     shape=(n, *s.shape[1:])) for i, s in enumerate(stages)]
            keypoints = np.zeros((n, *batch["keypoints"].shape[1:]), np.float32)
            visible = np.zeros((n, *batch["visible"].shape[1:]), bool)
            if "mask" in batch:
                masks = np.lib.format.open_memmap(out / "masks.npy", mode="w+", dtype=np.uint8,
                                                  shape=(n, image_size, image_size))
        for f, s in zip(stage_files, stages):
            f[start:start + b] = s.float().cpu().numpy()
        keypoints[start:start + b], visible[start:start + b] = batch["keypoints"], batch["visible"]
        if masks is not None:
            masks[start:start + b] = batch["mask"]
        ids += [str(i) for i in batch["image_id"]]
        identities += [None if i is None else str(i) for i in batch["identity"]]
        start += b
        bar.update(1)
    if start != n:
        raise UserError(f"{data_path}: split {split!r} yielded {start} rows, dataset.json says {n}")
    for f in stage_files + ([masks] if masks is not None else []):
        f.flush()
    np.save(out / "keypoints.npy", keypoints)
    np.save(out / "visible.npy", visible)
    (out / "rows.json").write_text(json.dumps({"image_id": ids, "identity": identities}))
    return {"rows": n, "stage_shapes": [list(f.shape[1:]) for f in stage_files]}


def get_features(backbone: torch.nn.Module, fingerprint: str, data_path: str, split: str,
                 kind: str = "hypercolumn", image_size: int = 96, layers: int = 4,
                 cache_dir: str | None = None, device: torch.device | str | None = None,
                 batch_size: int = 64, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> FeatureSet:
    """The cached representation of `split` (computed on the first call; module docstring).

    kind/layers only choose what `FeatureSet.dense` assembles; one entry serves all of them.
    mean/std: input normalisation (default: the dataset's, `landmarks.data.normalization`).
    """
    if kind not in BACKBONE_REPRESENTATIONS:  # what the stored stages serve (projected: the hypercolumn's)
        raise UserError(f"unknown representation {kind!r} for the feature cache; "
                        f"valid: {', '.join(BACKBONE_REPRESENTATIONS)}")
    manifest = Manifest.load(data_path)
    if mean is None or std is None:
        mean, std, _ = input_stats(manifest)
    mean, std = list(mean), list(std)
    key = feature_key(fingerprint, manifest, split, image_size, mean, std)
    root = default_cache_root(data_path, cache_dir)
    final = root / key
    if not (final / _META).is_file():
        root.mkdir(parents=True, exist_ok=True)
        with open(root / f"{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one writer; the others wait, then read its result
            if not (final / _META).is_file():
                _build(backbone, data_path, split, manifest, image_size, mean, std, device, batch_size,
                       root, key, fingerprint)
                CACHE_STATS["misses"] += 1
                features = _load(final, key, image_size, kind, layers)
                return features
    CACHE_STATS["hits"] += 1
    features = _load(final, key, image_size, kind, layers)
    features.hit = True
    return features


def _build(backbone, data_path, split, manifest, image_size, mean, std, device, batch_size, root, key,
           fingerprint) -> None:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tmp = root / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    was_training = backbone.training
    params = next(backbone.parameters())
    backbone.eval().to(device)
    t0 = time.perf_counter()
    try:
        stats = _compute(backbone, data_path, split, manifest, image_size, mean, std, device, batch_size, tmp)
        meta = {"key": key, "backbone_fingerprint": fingerprint, "backbone": getattr(backbone, "name", None),
                "dataset": manifest.name, "data_path": storage.redact(str(data_path)), "split": split,
                "image_size": image_size, "mean": mean, "std": std, "version": CACHE_VERSION,
                "seconds": round(time.perf_counter() - t0, 3), "created_at": time.time(), **stats}
        (tmp / _META).write_text(json.dumps(meta, indent=2))  # last: marks the entry complete
        if (root / key).exists():  # a stale entry without meta.json (we hold the lock)
            shutil.rmtree(root / key)
        os.replace(tmp, root / key)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        backbone.to(params.device).train(was_training)
