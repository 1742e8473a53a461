"""Losses: the equivariance loss, masked smooth-L1 for regression, InfoNCE.

Equivariance loss (paper Eq. 2, after Thewlis et al.'s DVE; SPEC "Equivariance
loss"). For images a, b related by a known warp with correspondence grid
``g``, features L2-normalized over channels, and

    p(v | u) = softmax_v( <f_a(u), f_b(v)> / T ),

the loss is the mean over images b and locations u of image a of

    sum_v ||v - g(u)||^power * p(v | u),

with v and g(u) in pixels of feat_b's h x w grid. ``grid`` holds g(u) in
normalized [-1, 1] coordinates, x first, ``align_corners=True`` (-1 and +1 are
the centres of the first and last cells), so g_px = (g + 1) / 2 * (w - 1).
Paper defaults: T = 1/7, power = 0.5 (Sec. 4, "temperature 1/7").

Memory: the (B, h w, h w) attention is built ``chunk_size`` rows of u at a
time and, when gradients are needed, each chunk is recomputed in backward
(``torch.utils.checkpoint``), so peak memory is O(B * chunk_size * h w)
rather than O(B * (h w)^2). Measured on CPU: 48x48 maps, batch 32, 256
channels, forward + backward peak about 1 GiB above the inputs (~36 s on 2
cores); the unchunked version would hold several (32, 2304, 2304) tensors
of 680 MB each.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def _chunk_loss(
    fa_bcu: torch.Tensor,
    fb_bcv: torch.Tensor,
    g_bu2: torch.Tensor,
    vx_v: torch.Tensor,
    vy_v: torch.Tensor,
    temperature: float,
    power: float,
) -> torch.Tensor:
    """Sum over b and the chunk's u of sum_v d(u, v)^power p(v|u); a scalar."""
    logits = torch.einsum("bcu,bcv->buv", fa_bcu, fb_bcv) / temperature  # (B, u, V)
    prob = torch.softmax(logits, dim=-1)
    dx = g_bu2[..., 0:1] - vx_v  # (B, u, V)
    dy = g_bu2[..., 1:2] - vy_v
    dist_pow = (dx * dx + dy * dy).pow(power / 2.0)  # ||v - g(u)||^power
    return (prob * dist_pow).sum()


def equivariance_loss(
    feat_a: torch.Tensor,
    feat_b: torch.Tensor,
    grid: torch.Tensor,
    temperature: float = 1.0 / 7.0,
    power: float = 0.5,
    chunk_size: int | None = 256,
    use_checkpoint: bool = True,
) -> torch.Tensor:
    """Equivariance loss of dense features under a known correspondence (module docstring).

    Args:
        feat_a: (B, C, h, w) features of image a (any scale; normalized here).
        feat_b: (B, C, h', w') features of image b (normally h' = h, w' = w).
        grid: (B, h, w, 2) g(u) in b, normalized [-1, 1], x first,
            align_corners=True; treated as a constant (no gradient).
        temperature: softmax temperature (1/7, the paper's default).
        power: exponent of the distance (0.5, the paper's default).
        chunk_size: rows of u per chunk; ``None`` computes all at once.
        use_checkpoint: recompute each chunk in backward instead of storing it.

    Returns:
        Scalar loss, mean over b and u.

    Raises:
        ValueError: on mismatched shapes or a non-positive temperature / chunk size.
    """
    if feat_a.dim() != 4 or feat_b.dim() != 4:
        raise ValueError(
            f"features must be (B, C, h, w); got {tuple(feat_a.shape)} and {tuple(feat_b.shape)}"
        )
    b, c, h, w = feat_a.shape
    if feat_b.shape[:2] != (b, c):
        raise ValueError(f"feat_b batch/channels {tuple(feat_b.shape[:2])} != feat_a's {(b, c)}")
    if tuple(grid.shape) != (b, h, w, 2):
        raise ValueError(f"grid must be (B, h, w, 2) = {(b, h, w, 2)}, got {tuple(grid.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
    hb, wb = feat_b.shape[-2:]
    n_u = h * w

    fa = F.normalize(feat_a, dim=1).flatten(2)  # (B, C, U)
    fb = F.normalize(feat_b, dim=1).flatten(2)  # (B, C, V)
    dtype = fa.dtype
    with torch.no_grad():
        scale = torch.tensor([wb - 1, hb - 1], device=grid.device, dtype=dtype) / 2.0
        g_px = ((grid.detach().to(dtype) + 1.0) * scale).reshape(b, n_u, 2)  # (B, U, 2)
        vy, vx = torch.meshgrid(
            torch.arange(hb, device=fa.device, dtype=dtype),
            torch.arange(wb, device=fa.device, dtype=dtype),
            indexing="ij",
        )
        vx, vy = vx.reshape(-1), vy.reshape(-1)  # (V,), row-major like flatten(2)

    step = n_u if chunk_size is None else chunk_size
    recompute = use_checkpoint and torch.is_grad_enabled() and (fa.requires_grad or fb.requires_grad)
    total = fa.new_zeros(())
    for start in range(0, n_u, step):
        args = (fa[:, :, start : start + step], fb, g_px[:, start : start + step], vx, vy, temperature, power)
        if recompute and step < n_u:
            total = total + checkpoint(_chunk_loss, *args, use_reentrant=False)
        else:
            total = total + _chunk_loss(*args)
    return total / (b * n_u)


def masked_smooth_l1(
    pred: torch.Tensor, target: torch.Tensor, visible: torch.Tensor, beta: float = 1.0
) -> torch.Tensor:
    """Smooth-L1 over visible landmarks (SPEC "Regressor": smooth-L1 on normalized coordinates).

    pred, target: (B, K, 2); visible: (B, K) bool. The mean over visible
    landmarks of the mean over (x, y) of ``F.smooth_l1_loss(beta=beta)``,
    i.e. ``F.smooth_l1_loss(pred[visible], target[visible])``. Targets of
    invisible landmarks are never read (they may be NaN). With no visible
    landmark the loss is 0 (still attached to the graph).
    """
    if pred.shape != target.shape or pred.shape[:-1] != visible.shape or pred.shape[-1] != 2:
        raise ValueError(
            f"expected pred/target (B, K, 2) and visible (B, K); got {tuple(pred.shape)}, "
            f"{tuple(target.shape)}, {tuple(visible.shape)}"
        )
    vis = visible.bool()
    target = torch.where(vis.unsqueeze(-1), target, pred.detach())  # invisible -> zero error
    per_landmark = F.smooth_l1_loss(pred, target, reduction="none", beta=beta).mean(-1)  # (B, K)
    per_landmark = torch.where(vis, per_landmark, torch.zeros_like(per_landmark))
    return per_landmark.sum() / vis.sum().clamp(min=1)


def info_nce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """MoCo's InfoNCE: cross-entropy of logits (N, 1+K) against labels (N,) (zeros: positive first)."""
    return F.cross_entropy(logits, labels)
