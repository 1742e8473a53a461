"""Evaluation metrics (SPEC "Metrics"), as short pure functions returning floats.

Inputs may be torch tensors or numpy arrays; computation is in float64 on the
inputs' device. Landmarks are (B, K, 2) pixel coordinates, x first; a single
image's (K, 2) is accepted too.

- ``inter_ocular_error``: 100 * mean_{i,k} ||pred_ik - gt_ik|| / ||gt_i,e0 - gt_i,e1||
  (MAFL / AFLW: eyes 0 and 1; 300W: outer eye corners 36 and 45).
- ``pck``: 100 * #{visible (i, k): ||pred_ik - gt_ik|| < threshold * image_size} / #visible
  (float distances at the image size; reported as ``pck_float`` beside the official one).
- ``pck_official``: CUB PCK as the official evaluation computes it (contrast-landmark
  ``models/metric.py`` ``calc_pck`` with ``eval_animal.py``'s box of 48), the metric of the
  paper's Tables 3 and 8.
- ``mask_iou``: mean over images of |P and G| / |P or G| (1 when both are empty).
- ``matching_errors`` / ``matching_error``: the official landmark matching error: the source
  descriptor at the landmark's (rounded) cell, its nearest neighbour by dot product among the
  target's cells, and the distance to the target's ground truth in a 70 x 70 image.
"""

from __future__ import annotations

import numpy as np
import torch

from landmarks.coords import cell_centers, pixels_to_normalized


def _tensor(x, dtype=torch.float64) -> torch.Tensor:
    t = torch.from_numpy(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    return t.detach().to(dtype)


def _landmarks(pred, gt) -> tuple[torch.Tensor, torch.Tensor]:
    pred, gt = _tensor(pred), _tensor(gt)
    if pred.dim() == 2:
        pred, gt = pred.unsqueeze(0), gt.unsqueeze(0)
    if pred.shape != gt.shape or pred.dim() != 3 or pred.shape[-1] != 2:
        raise ValueError(f"pred and gt must both be (B, K, 2); got {tuple(pred.shape)} and {tuple(gt.shape)}")
    return pred, gt


def _visible(visible, shape: torch.Size, device) -> torch.Tensor:
    if visible is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    vis = _tensor(visible, torch.bool).to(device)
    vis = vis.unsqueeze(0) if vis.dim() == 1 else vis
    if vis.shape != shape:
        raise ValueError(f"visible must be (B, K) = {tuple(shape)}, got {tuple(vis.shape)}")
    return vis


def inter_ocular_error(pred, gt, eye_indices, visible=None) -> float:
    """Mean landmark error normalized by the inter-ocular distance, in percent.

    Args:
        pred, gt: (B, K, 2) pixel coordinates.
        eye_indices: (e0, e1), the landmarks whose gt distance normalizes.
        visible: optional (B, K) bool; only visible landmarks are averaged.

    Raises:
        ValueError: an image has zero inter-ocular distance (its index is
            named), shapes disagree, or no landmark is visible.
    """
    pred, gt = _landmarks(pred, gt)
    e0, e1 = (int(i) for i in eye_indices)
    iod = torch.linalg.vector_norm(gt[:, e0] - gt[:, e1], dim=-1)  # (B,)
    bad = torch.nonzero(~(iod > 0)).flatten().tolist()
    if bad:
        raise ValueError(
            f"inter-ocular distance is zero (or not finite) for image index {bad[0]} "
            f"({len(bad)} image(s) in total): gt landmarks {e0} and {e1} coincide"
        )
    vis = _visible(visible, pred.shape[:2], pred.device)
    if not vis.any():
        raise ValueError("inter_ocular_error: no visible landmark to evaluate")
    err = torch.linalg.vector_norm(pred - gt, dim=-1) / iod[:, None]  # (B, K)
    return float(err[vis].mean() * 100.0)


def pck(pred, gt, visible, image_size, threshold: float = 0.05) -> float:
    """Percent of visible landmarks with error < ``threshold * image_size``.

    Args:
        pred, gt: (B, K, 2) pixel coordinates.
        visible: (B, K) bool.
        image_size: a number (square images, e.g. 96 for CUB) or (B,) per image.
        threshold: fraction of the image size (0.05, Table 8).

    Raises:
        ValueError: no visible landmark, or mismatched shapes.
    """
    pred, gt = _landmarks(pred, gt)
    vis = _visible(visible, pred.shape[:2], pred.device)
    if not vis.any():
        raise ValueError("pck: no visible landmark to evaluate")
    size = _tensor(image_size).to(pred.device)
    if size.dim() > 1 or (size.dim() == 1 and size.numel() != pred.shape[0]):
        raise ValueError(
            f"image_size must be a number or one size per image ({pred.shape[0]}), got shape "
            f"{tuple(size.shape)}; PCK uses one side length (square images)"
        )
    thr = threshold * (size.reshape(-1, 1) if size.dim() == 1 else size)
    correct = (torch.linalg.vector_norm(pred - gt, dim=-1) < thr) & vis
    return float(correct.sum() * 100.0 / vis.sum())


def pck_official(pred, gt, visible, image_size, box_size: int = 48, threshold: float = 0.05,
                 batch_size: int | None = 32) -> float:
    """CUB PCK, percent, exactly as the official evaluation computes it.

    contrast-landmark ``calc_pck`` on each evaluation batch of ``batch_size`` images (its
    ``val_loader``: batch 32, in split order), averaged over batches weighted by their size
    (``AverageMeter``); ``batch_size=None`` takes the whole split as one batch. Per batch:

    1. pixel coordinates of the ``image_size`` input -> normalized (``landmarks.coords``, the
       official ``kp_normalize``) -> a ``box_size`` box: b = (u + 1) (box_size - 1) / 2;
    2. invisible ground truth is set to (0, 0), and only points with both box coordinates > 0
       count (so a visible point on the box's top or left edge is left out, as there);
    3. distances truncated to integers (stored as int32);
    4. per part, the share of counted points with distance < threshold * box_size;
    5. the mean over parts with at least one counted point (0 if there is none).

    Args:
        pred, gt: (N, K, 2) pixel coordinates; visible: (N, K) bool.
        image_size: side of the (square) input the pixels are in (96 for CUB).
    """
    pred, gt = _landmarks(pred, gt)
    vis = _visible(visible, pred.shape[:2], pred.device)
    n = pred.shape[0]
    step = n if batch_size is None else int(batch_size)
    if step < 1:
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size}")
    to_box = (box_size - 1) / 2.0
    pred_box = (pixels_to_normalized(pred, image_size) + 1.0) * to_box
    gt_box = (pixels_to_normalized(gt, image_size) + 1.0) * to_box
    gt_box = torch.where(vis.unsqueeze(-1), gt_box, torch.zeros_like(gt_box))
    counted = (gt_box > 0).all(-1)  # (N, K)
    dist = torch.linalg.vector_norm(gt_box - pred_box, dim=-1).trunc()  # int32 in the official code
    correct = counted & (dist < threshold * box_size)
    total = 0.0
    for start in range(0, n, step):
        c, k = counted[start:start + step].sum(0), correct[start:start + step].sum(0)  # (K,) per part
        parts = c > 0
        batch_pck = float((k[parts] / c[parts]).mean() * 100.0) if parts.any() else 0.0
        total += batch_pck * min(step, n - start)
    return total / n


PCK_THRESHOLD = 0.05  # of the image side, for the float PCK reported beside the official one


def headline_metric(eye_indices) -> str:
    """The one choice of a landmark dataset's metric, from its manifest's ``eye_indices``: "iod" where it
    has eye indices (faces), else "pck" (the official CUB PCK)."""
    return "iod" if eye_indices else "pck"


def landmark_score(metric: str, pred, gt, visible, image_size: int, eye_indices=None) -> float:
    """`metric` of predictions (N, K, 2) in input pixels against gt (N, K, 2), visible (N, K): "iod"
    (%, lower is better; needs eye_indices), "pck" (the official CUB PCK %, its evaluation batches of 32
    in split order; higher is better) or "pck_float" (PCK@0.05 of the input side on float distances)."""
    if metric == "iod":
        return inter_ocular_error(pred, gt, eye_indices, visible=visible)
    if metric == "pck":
        return pck_official(pred, gt, visible, image_size)
    if metric == "pck_float":
        return pck(pred, gt, visible, image_size, threshold=PCK_THRESHOLD)
    raise ValueError(f"unknown landmark metric {metric!r}; valid: iod, pck, pck_float")


def landmark_scores(pred, gt, visible, image_size: int, eye_indices=None) -> dict[str, float]:
    """A landmark job's reported scores of predictions (N, K, 2) in input pixels: the headline metric
    (`headline_metric`), and for PCK the float one beside it: {"iod": x} or {"pck": x, "pck_float": y}."""
    metric = headline_metric(eye_indices)
    names = (metric, "pck_float") if metric == "pck" else (metric,)
    return {name: landmark_score(name, pred, gt, visible, image_size, eye_indices) for name in names}


def _masks(x) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    t = t if t.dtype == torch.bool else t.detach().float() > 0.5
    return t.unsqueeze(0) if t.dim() == 2 else t


def mask_iou(pred_mask, gt_mask) -> float:
    """Mean per-image IoU in [0, 1] of (B, H, W) or (H, W) masks.

    Masks are bool, or numeric with foreground = value > 0.5 (0/1, 0/255 and
    probabilities all work; threshold logits yourself). Both empty -> IoU 1.
    """
    p, g = _masks(pred_mask), _masks(gt_mask)
    if p.shape != g.shape:
        raise ValueError(f"pred_mask {tuple(p.shape)} and gt_mask {tuple(g.shape)} differ in shape")
    inter = (p & g).flatten(1).sum(1).double()
    union = (p | g).flatten(1).sum(1).double()
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    return float(iou.mean())


def matching_errors(desc_src, desc_tgt, kps_src, kps_tgt, image_size, scale_to: float = 70.0) -> torch.Tensor:
    """Per-landmark matching errors (B, K), in pixels of a ``scale_to`` image, the official way.

    contrast-landmark ``train_feature_projector.py`` ``validate`` (after DVE's test_matching.py): for
    each source landmark, ``find_descriptor`` takes the descriptor of the map cell at the landmark
    (its normalized position, ``landmarks.coords``, mapped to cell (u + 1) / 2 (w - 1), rounded
    half to even like ``np.round`` and clamped), finds the target cell of the largest dot product,
    and ``compute_pixel_err`` measures it against the target's ground truth in normalized
    coordinates scaled to [0, scale_to - 1]: ||pred - gt|| (scale_to - 1) / 2.

    Args:
        desc_src, desc_tgt: (B, C, h, w) descriptors, normalized as the protocol wants (the official
            code L2-normalizes each stage block of a hypercolumn, and a projection as a whole).
        kps_src, kps_tgt: (B, K, 2) pixel coordinates in `image_size` images (every landmark counts).
    """
    src, tgt = _tensor(desc_src, torch.float32), _tensor(desc_tgt, torch.float32)
    ks, kt = _landmarks(kps_src, kps_tgt)
    if src.dim() != 4 or tgt.shape != src.shape or src.shape[0] != ks.shape[0]:
        raise ValueError(f"descriptors must both be (B, C, h, w) with B = {ks.shape[0]}; got {tuple(src.shape)} "
                         f"and {tuple(tgt.shape)}")
    b, c, h, w = src.shape
    u_src = pixels_to_normalized(ks, image_size)
    cell = ((u_src + 1.0) / 2.0 * ks.new_tensor([w - 1.0, h - 1.0])).round()
    col = cell[..., 0].clamp(0, w - 1).long()
    row = cell[..., 1].clamp(0, h - 1).long()  # (B, K)
    query = src.flatten(2).gather(2, (row * w + col).unsqueeze(1).expand(b, c, -1))  # (B, C, K)
    best = torch.einsum("bck,bcv->bkv", query, tgt.flatten(2)).argmax(-1)  # (B, K)
    xs, ys = cell_centers(h, w, device=best.device, dtype=torch.float64)
    pred = torch.stack([xs[best % w], ys[best // w]], dim=-1)  # (B, K, 2) normalized
    gt = pixels_to_normalized(kt, image_size).to(pred)
    return torch.linalg.vector_norm(pred - gt, dim=-1) * (scale_to - 1.0) / 2.0


def matching_error(desc_src, desc_tgt, kps_src, kps_tgt, image_size, scale_to: float = 70.0) -> float:
    """Mean of `matching_errors` over landmarks and images, in pixels of a ``scale_to`` image."""
    return float(matching_errors(desc_src, desc_tgt, kps_src, kps_tgt, image_size, scale_to).mean())
