"""The report's figures from what the runs logged (all offline, from MLflow):

- error vs annotation budget (Tables 7 and 8): the tables themselves;
- predicted vs true landmarks: the regress job's artifact `predictions/predictions.npz`
  (image_id (N,), pred and gt (N, K, 2) input pixels, visible (N, K), image_size) of the best run
  per dataset; images from the run's `data.path` (or `--data`) when that dataset is readable;
- segmentation masks: `predictions/masks.npz` of the best segment run (image_id (N,), pred (N, H, W)
  foreground probability, gt (N, H, W) {0, 1}, image_size; images alike), else the figure the
  segment job logs itself (`segmentation/masks.png`);
- hypercolumn PCA, pretrained vs random init: computed from `--pca-backbone` (run id, checkpoint
  or 'random') and `--data` (`compute_pca`), or read from `pca/hypercolumn_pca.npz` (images,
  pretrained, random) of the newest run tagged `pca_artifact` in the experiments.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from .. import tracking
from ..errors import UserError
from ..registry import ARCHITECTURES
from .runs import RUN_ID, RunRecord
from .tables import LOWER_IS_BETTER, TableResult

PCA_ARTIFACT = "pca/hypercolumn_pca.npz"
PREDICTIONS_ARTIFACT = "predictions/predictions.npz"
MASKS_ARTIFACT = "predictions/masks.npz"
MASKS_FIGURE = "segmentation/masks.png"  # what landmarks.evaluate.segment logs


def budget_figures(results: list[TableResult], out: Path, figures: dict[str, Path]) -> None:
    from .figures import budget_figure

    for result in results:
        full = {"table7_aflw_m_budget": 10122, "table8_cub_budget": 1241}.get(result.spec.name)
        if full is None:
            continue
        path = budget_figure(result, out / "figures" / f"budget_{result.spec.name.split('_', 1)[1]}.png", full)
        if path is not None:
            figures[f"{result.spec.title.split(':')[0]}: error vs annotation budget"] = path


def _best_runs(records: list[RunRecord], job: str, metric_of: dict[str, str]) -> dict[str, list[RunRecord]]:
    """Per dataset, the runs of `job` ordered best first by the dataset's metric."""
    by_dataset: dict[str, list[RunRecord]] = {}
    for r in records:
        metric = next((m for m in metric_of.get(job, "").split(",") if m in r.metrics), None)
        if r.job == job and metric:
            by_dataset.setdefault(r.dataset, []).append(r)
    def score(r: RunRecord) -> float:
        metric = next(m for m in metric_of[job].split(",") if m in r.metrics)
        return r.metrics[metric] if LOWER_IS_BETTER[metric] else -r.metrics[metric]

    for runs in by_dataset.values():
        runs.sort(key=score)
    return by_dataset


def _artifact(run_id: str, name: str) -> dict[str, np.ndarray] | None:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = tracking.download_artifact(run_id, name, tmp)
        except UserError:
            return None
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}


def _images(record: RunRecord, data: str | None, ids: np.ndarray, size: int, notes: list[str]) -> np.ndarray | None:
    """The test images `ids` from --data (if it is this dataset) or the run's data.path; None if unreadable."""
    from ..data.manifest import Manifest

    for path in [p for p in (data, record.params.get("data.path")) if p]:
        try:
            manifest = Manifest.load(path)
            if manifest.name not in (record.dataset, {"aflw_m": "aflw-mtfl", "aflw_r": "aflw"}.get(record.dataset)):
                continue
            from ..data.reader import load_split

            split = load_split(path, "test", size)
        except (UserError, OSError, ValueError) as err:
            notes.append(f"images of run {record.run_id} not loaded from {path}: {err}")
            continue
        where = {str(i): n for n, i in enumerate(split["image_id"])}
        if all(str(i) in where for i in ids):
            return split["image"][[where[str(i)] for i in ids]]
    notes.append(f"run {record.run_id}: test images not available; points drawn on a blank canvas")
    return None


def prediction_figures(records: list[RunRecord], out: Path, data: str | None, figures: dict[str, Path],
                        notes: list[str]) -> None:
    from .figures import MAX_IMAGES, landmarks_figure, masks_figure

    for dataset, runs in _best_runs(records, "regress", {"regress": "iod,pck"}).items():
        for r in runs[:3]:
            arrays = _artifact(r.run_id, PREDICTIONS_ARTIFACT)
            if arrays is None:
                continue
            size = int(arrays.get("image_size", 96))
            ids = arrays["image_id"][:MAX_IMAGES]
            images = _images(r, data, ids, size, notes)
            title = f"{dataset}: {r.run_name} ({r.backbone} {r.representation}, {r.budget} annotations)"
            figures[f"predicted vs true landmarks, {dataset}"] = landmarks_figure(
                images, arrays["pred"][:MAX_IMAGES], arrays["gt"][:MAX_IMAGES], arrays["visible"][:MAX_IMAGES],
                out / "figures" / f"landmarks_{dataset}.png", size, title, ids)
            break
        else:
            notes.append(f"no regress run on {dataset} has {PREDICTIONS_ARTIFACT}")
    for dataset, runs in _best_runs(records, "segment", {"segment": "iou"}).items():
        for r in runs[:3]:
            arrays = _artifact(r.run_id, MASKS_ARTIFACT)
            if arrays is None:  # the segment job's own figure (image | true | predicted rows)
                with tempfile.TemporaryDirectory() as tmp:
                    try:
                        png = tracking.download_artifact(r.run_id, MASKS_FIGURE, tmp)
                    except UserError:
                        continue
                    (out / "figures").mkdir(parents=True, exist_ok=True)
                    figures[f"segmentation masks, {dataset}"] = Path(shutil.copy(png, out / "figures" / f"masks_{dataset}.png"))
                break
            pred = arrays["pred"][:4].astype(np.float32)
            pred = pred / 255.0 if pred.max() > 1 else pred
            images = _images(r, data, arrays["image_id"][:4], pred.shape[1], notes)
            figures[f"segmentation masks, {dataset}"] = masks_figure(
                images, arrays["gt"][:4].astype(np.float32), pred, out / "figures" / f"masks_{dataset}.png",
                f"{dataset}: {r.run_name} (IoU {r.metrics['iou']:.3f})")
            break
        else:
            notes.append(f"no segment run on {dataset} has {MASKS_ARTIFACT}")


def pca_arrays(experiments: list[str], source: str | None, arch: str | None, data: str | None, n: int,
                notes: list[str]) -> dict[str, np.ndarray] | None:
    if source or data:
        if not (source and data):
            raise UserError("--pca-backbone and --data go together (a backbone and the images to run it on)")
        return compute_pca(source, arch, data, n)
    tagged = [run for exp in experiments for run in tracking.find_runs(exp, has_tag="pca_artifact")]
    for run in sorted(tagged, key=lambda r: -r.info.start_time):
        arrays = _artifact(run.info.run_id, run.data.tags["pca_artifact"])
        if arrays is not None and {"images", "pretrained", "random"} <= set(arrays):
            return arrays
    notes.append("hypercolumn PCA skipped: pass --pca-backbone SOURCE --data DIR (or log "
                 f"{PCA_ARTIFACT} on a run tagged pca_artifact)")
    return None


def compute_pca(source: str, arch: str | None, data: str, n: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """Hypercolumn PCA maps of `n` test images for the backbone `source` and a seeded random init."""
    import torch

    from ..augment.views import input_tensor
    from ..data.manifest import Manifest
    from ..data.normalization import input_stats
    from ..data.reader import load_split
    from ..models.representation import dense_size, hypercolumn
    from ..sources import load_backbone
    from .figures import pca_rgb

    manifest = Manifest.load(data)
    arch = arch or (tracking.get_run(source).data.tags.get("backbone") if RUN_ID.fullmatch(source) else None)
    if not arch:
        raise UserError(f"--pca-arch is needed for this --pca-backbone ({', '.join(ARCHITECTURES)})")
    split = load_split(data, "test", manifest.input_size, rows=range(min(n, manifest.split("test").rows)))
    maps = {}
    for name, src in (("pretrained", source), ("random", "random")):
        backbone, _ = load_backbone(src, arch, seed=seed)
        mean, std, _ = input_stats(manifest)
        x = input_tensor(split["image"], mean, std, "cpu")
        with torch.no_grad():
            maps[name] = pca_rgb(hypercolumn(backbone, x, size=dense_size("hypercolumn", manifest.input_size)))
    return {"images": split["image"], **maps}
