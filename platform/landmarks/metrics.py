"""Evaluation metrics (SPEC "Metrics"), as short pure functions returning floats.

Inputs may be torch tensors or numpy arrays; computation is in float64 on the
inputs' device. Landmarks are (B, K, 2) pixel coordinates, x first; a single
image's (K, 2) is accepted too.

- ``inter_ocular_error``: 100 * mean_{i,k} ||pred_ik - gt_ik|| / ||gt_i,e0 - gt_i,e1||
  (MAFL / AFLW: eyes 0 and 1; 300W: outer eye corners 36 and 45).
- ``pck``: 100 * #{visible (i, k): ||pred_ik - gt_ik|| < threshold * image_size} / #visible
  (CUB: threshold 0.05 of the 96 px image).
- ``mask_iou``: mean over images of |P and G| / |P or G| (1 when both are empty).
- ``matching_error``: for each landmark of image a, the descriptor of a at it
  (bilinear), its nearest neighbour by cosine similarity among b's h x w cells,
  that cell's centre in b's pixels, and the distance to b's ground truth,
  scaled to a 70x70 image; mean over landmarks and images, in pixels.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from landmarks.models.heads import cell_centers, normalized_to_pixels, pixels_to_normalized, size_hw


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


def matching_error(desc_a, desc_b, kps_a, kps_b, image_size, scale_to: float = 70.0, visible=None) -> float:
    """Landmark matching error in pixels of a ``scale_to`` x ``scale_to`` image.

    Args:
        desc_a, desc_b: (B, C, h, w) descriptor maps covering the whole image
            (cell centres as in ``landmarks.models.heads``).
        kps_a, kps_b: (B, K, 2) ground-truth pixels of the same landmarks in a and b.
        image_size: int or (H, W) of the images the keypoints live in.
        scale_to: errors are rescaled from image_size to this size (70, DVE/Table 4).
        visible: optional (B, K) bool; landmarks to evaluate.
    """
    da, db = _tensor(desc_a, torch.float32), _tensor(desc_b, torch.float32)
    ka, kb = _landmarks(kps_a, kps_b)
    if da.dim() != 4 or db.shape[:2] != da.shape[:2] or da.shape[0] != ka.shape[0]:
        raise ValueError(
            f"descriptors must be (B, C, h, w) with B = {ka.shape[0]} and equal C; "
            f"got {tuple(da.shape)} and {tuple(db.shape)}"
        )
    h_img, w_img = size_hw(image_size)
    grid = pixels_to_normalized(ka, (h_img, w_img)).to(da).unsqueeze(2)  # (B, K, 1, 2)
    query = F.grid_sample(da, grid, mode="bilinear", padding_mode="border", align_corners=False)
    query = F.normalize(query[..., 0].transpose(1, 2), dim=-1)  # (B, K, C)
    target = F.normalize(db, dim=1).flatten(2)  # (B, C, V)
    best = torch.einsum("bkc,bcv->bkv", query, target).argmax(-1)  # (B, K)
    hb, wb = db.shape[-2:]
    xs, ys = cell_centers(hb, wb, device=db.device, dtype=torch.float64)
    match_norm = torch.stack([xs[best % wb], ys[best // wb]], dim=-1)  # (B, K, 2)
    match_px = normalized_to_pixels(match_norm, (h_img, w_img)).to(kb)
    scale = kb.new_tensor([scale_to / w_img, scale_to / h_img])
    err = torch.linalg.vector_norm((match_px - kb) * scale, dim=-1)  # (B, K)
    vis = _visible(visible, err.shape, err.device)
    if not vis.any():
        raise ValueError("matching_error: no visible landmark to evaluate")
    return float(err[vis].mean())
