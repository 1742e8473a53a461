"""The dataset a job reads, checked before any work: present, verified, with what the job needs."""

from __future__ import annotations

from ..data.manifest import Manifest, check_geometry
from ..errors import UserError


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
