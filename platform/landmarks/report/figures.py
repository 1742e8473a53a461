"""The report's PNG figures (matplotlib, Agg canvas; no pyplot state): fixed pixel sizes.

    budget_figure(table7_result, path, full_budget=10122)   # error vs annotations, ours and the paper's
    pca_figure(images, pretrained_rgb, random_rgb, path)    # hypercolumn PCA, 3 components as RGB
    landmarks_figure(images, pred, gt, visible, path)       # regress predictions artifact
    masks_figure(images, gt, pred, path)                    # segment predictions artifact

Arrays: images (N, H, W, 3) uint8 (or None: points/masks on a grey canvas); keypoints
(N, K, 2) x, y in input pixels; masks (N, H, W) in [0, 1]; PCA maps (N, h, w, 3) in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from .tables import LABELS, TableResult

DPI = 100
BUDGET_SIZE = (8.0, 5.0)  # inches at DPI: 800 x 500 px
LANDMARKS_SIZE = (10.0, 5.0)  # 2 x 4 images: 1000 x 500 px
MASKS_SIZE = (10.0, 7.5)  # 3 rows x 4 images: 1000 x 750 px
PCA_CELL = 2.5  # inches per image cell: N rows x 3 columns -> 750 x 250N px
MAX_IMAGES = 8


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")  # no bbox_inches="tight": the size stays as declared
    return path


def _x(budget: str, full_budget: int) -> float:
    return float(full_budget) if budget == "all" else float(budget)


def budget_figure(result: TableResult, path: Path, full_budget: int) -> Path | None:
    """Our mean (+- std band) vs annotations per setting, and the paper's curves of the same
    backbone / representation (dashed). None when we have no budget runs in this table."""
    keys = [k for k in result.spec.keys if k != "budget"]
    series: dict[tuple, dict[str, list]] = {}
    for r in result.rows:
        for source in ("ours", "paper"):
            if r[source] == "":
                continue
            label = (source, r["dataset"], *(r[k] for k in keys))
            s = series.setdefault(label, {"x": [], "y": [], "std": []})
            s["x"].append(_x(r["budget"], full_budget))
            s["y"].append(float(r[source]))
            s["std"].append(float(r[f"{source}_std"]) if r[f"{source}_std"] != "" else 0.0)
    ours = [k for k in series if k[0] == "ours"]
    if not ours:
        return None
    ours_settings = {(k[keys.index("backbone") + 2], k[keys.index("representation") + 2]) for k in ours}
    paper = [k for k in series if k[0] == "paper" and (k[keys.index("backbone") + 2],
                                                      k[keys.index("representation") + 2]) in ours_settings]
    if not paper:  # still show the paper's headline curve for scale
        paper = [k for k in series if k[0] == "paper" and k[2:4] == ("ours", "resnet50")][:1]

    fig = Figure(figsize=BUDGET_SIZE)
    ax = fig.add_subplot(1, 1, 1)
    for label in ours + paper:
        s = series[label]
        order = np.argsort(s["x"])
        x, y, std = (np.asarray(s[k])[order] for k in ("x", "y", "std"))
        style = "-o" if label[0] == "ours" else "--s"
        line, = ax.plot(x, y, style, markersize=4, label=" ".join(str(v) for v in label if v != ""))
        ax.fill_between(x, y - std, y + std, color=line.get_color(), alpha=0.2, linewidth=0)
    ticks = sorted({x for k in ours + paper for x in series[k]["x"]})
    ax.set_xscale("log")
    ax.set_xticks(ticks, ["all" if t == full_budget else f"{t:g}" for t in ticks])
    metric = result.rows[0]["metric"] if result.rows else ""
    ax.set_xlabel("annotated training images")
    ax.set_ylabel(LABELS.get(metric, metric))
    ax.set_title(result.spec.title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    return _save(fig, path)


def pca_rgb(feats_nchw) -> np.ndarray:
    """(N, C, h, w) features -> (N, h, w, 3) in [0, 1]: the first three principal components over
    all pixels of all images, each stretched between its 1st and 99th percentile."""
    import torch

    n, c, h, w = feats_nchw.shape
    x = feats_nchw.permute(0, 2, 3, 1).reshape(-1, c).double()
    x = x - x.mean(0, keepdim=True)
    # The top right-singular vectors via the (C x C) or (P x P) Gram matrix, whichever is smaller.
    if x.shape[0] >= c:
        _, vecs = torch.linalg.eigh(x.T @ x)
        comps = vecs[:, -3:].flip(1)  # (C, 3), largest first
    else:
        _, vecs = torch.linalg.eigh(x @ x.T)
        comps = x.T @ vecs[:, -3:].flip(1)
        comps = comps / comps.norm(dim=0, keepdim=True).clamp_min(1e-12)
    proj = (x @ comps).numpy()  # (P, 3)
    proj *= np.sign(proj[np.abs(proj).argmax(0), range(3)])  # a fixed sign: stable colours
    lo, hi = np.percentile(proj, 1, axis=0), np.percentile(proj, 99, axis=0)
    rgb = np.clip((proj - lo) / np.maximum(hi - lo, 1e-12), 0, 1)
    return rgb.reshape(n, h, w, 3).astype(np.float32)


def pca_figure(images: np.ndarray, pretrained: np.ndarray, random: np.ndarray, path: Path,
               titles: Sequence[str] = ("image", "pretrained", "random init")) -> Path:
    n = len(images)
    fig = Figure(figsize=(3 * PCA_CELL, n * PCA_CELL))
    for i in range(n):
        for j, (panel, title) in enumerate(zip((images[i], pretrained[i], random[i]), titles)):
            ax = fig.add_subplot(n, 3, 3 * i + j + 1)
            ax.imshow(panel, interpolation="nearest")
            ax.set_axis_off()
            if i == 0:
                ax.set_title(title, fontsize=10)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.92 if n == 1 else 0.96, wspace=0.05, hspace=0.05)
    return _save(fig, path)


def _canvas(images: np.ndarray | None, i: int, size: int) -> np.ndarray:
    return images[i] if images is not None else np.full((size, size, 3), 200, np.uint8)


def landmarks_figure(images: np.ndarray | None, pred: np.ndarray, gt: np.ndarray, visible: np.ndarray,
                     path: Path, image_size: int, title: str = "", image_ids: Sequence[str] = ()) -> Path:
    """Ground truth (green dots) and predictions (red crosses, joined to their truth) on up to
    eight test images."""
    n = min(len(pred), MAX_IMAGES)
    fig = Figure(figsize=LANDMARKS_SIZE)
    for i in range(n):
        ax = fig.add_subplot(2, 4, i + 1)
        ax.imshow(_canvas(images, i, image_size), interpolation="nearest")
        vis = visible[i].astype(bool)
        for (px, py), (gx, gy) in zip(pred[i][vis], gt[i][vis]):
            ax.plot([gx, px], [gy, py], "-", color="yellow", linewidth=0.8)
        ax.plot(gt[i][vis, 0], gt[i][vis, 1], "o", color="lime", markersize=3)
        ax.plot(pred[i][:, 0], pred[i][:, 1], "x", color="red", markersize=4)
        ax.set_xlim(-0.5, image_size - 0.5)
        ax.set_ylim(image_size - 0.5, -0.5)
        ax.set_axis_off()
        if len(image_ids) > i:
            ax.set_title(str(image_ids[i])[-24:], fontsize=6)
    fig.suptitle(title or "predicted (red x) vs true (green o) landmarks", fontsize=9)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.9, wspace=0.05, hspace=0.15)
    return _save(fig, path)


def masks_figure(images: np.ndarray | None, gt: np.ndarray, pred: np.ndarray, path: Path,
                 title: str = "") -> Path:
    """Rows: image, ground-truth mask, predicted mask (probability) for up to four test images."""
    n = min(len(pred), 4)
    size = pred.shape[1]
    fig = Figure(figsize=MASKS_SIZE)
    for i in range(n):
        panels = ((_canvas(images, i, size), None), (gt[i], "gray"), (pred[i], "viridis"))
        for row, (panel, cmap) in enumerate(panels):
            ax = fig.add_subplot(3, 4, row * 4 + i + 1)
            ax.imshow(panel, cmap=cmap, vmin=0 if cmap else None, vmax=1 if cmap else None, interpolation="nearest")
            ax.set_axis_off()
            if i == 0:
                ax.set_title(("image", "true mask", "predicted mask")[row], fontsize=8, loc="left")
    fig.suptitle(title or "CUB figure-ground segmentation", fontsize=9)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.92, wspace=0.05, hspace=0.12)
    return _save(fig, path)
