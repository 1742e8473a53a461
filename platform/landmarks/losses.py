"""Losses: the equivariance loss (and its official single-image form, the projector's dense correlation
loss), the official regression loss (smooth-L1 of 10x coordinates), InfoNCE.

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
    fa = F.normalize(feat_a, dim=1).flatten(2)  # (B, C, U)
    fb = F.normalize(feat_b, dim=1).flatten(2)  # (B, C, V)
    with torch.no_grad():
        scale = torch.tensor([wb - 1, hb - 1], device=grid.device, dtype=fa.dtype) / 2.0
        g_px = ((grid.detach().to(fa.dtype) + 1.0) * scale).reshape(b, h * w, 2)  # (B, U, 2)
    return _expected_distance(fa, fb, g_px, (hb, wb), temperature, power, chunk_size, use_checkpoint)


def _expected_distance(fa: torch.Tensor, fb: torch.Tensor, g_px: torch.Tensor, size_b: tuple[int, int],
                       temperature: float, power: float, chunk_size: int | None, use_checkpoint: bool = True,
                       ) -> torch.Tensor:
    """mean over b, u of sum_v ||v - g(u)||^power p(v|u): fa (B, C, U), fb (B, C, V) unit columns, g_px
    (B, U, 2) in pixels of b's (h, w) = size_b grid; chunked over u (module docstring)."""
    b, n_u = fa.shape[0], fa.shape[2]
    with torch.no_grad():
        vy, vx = torch.meshgrid(torch.arange(size_b[0], device=fa.device, dtype=fa.dtype),
                                torch.arange(size_b[1], device=fa.device, dtype=fa.dtype), indexing="ij")
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


def dense_correlation_loss(feats: torch.Tensor, temperature: float = 1.0 / 7.0, power: float = 0.5,
                           stride: float = 1.0, chunk_size: int | None = 256) -> torch.Tensor:
    """The official feature projector's loss: the equivariance loss of an image with itself.

    contrast-landmark ``train_feature_projector.py`` ``dense_corr_loss``: per image, descriptors
    L2-normalized over channels (one block: the projector's output), the correlation f^T f of
    every location u with every v, ``softmax_v(corr / temperature)`` (the official
    ``--temperature 7`` multiplies, i.e. temperature = 1/7 here), weighted by the distance
    ``||u - v||^power`` measured in *input* pixels (cells ``stride`` px apart: the official
    ``H // h``, 4 for 24 x 24 maps of a 96 px input), summed over v and averaged over u and images.

    That is `equivariance_loss(f, f, identity grid)` with distances scaled by ``stride``, by the same
    chunked, checkpointed computation. feats: (B, C, h, w) -> a scalar.
    """
    if feats.dim() != 4:
        raise ValueError(f"feats must be (B, C, h, w), got {tuple(feats.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    b, _, h, w = feats.shape
    f = F.normalize(feats, dim=1).flatten(2)  # (B, C, U)
    with torch.no_grad():  # u's own cell, in whole cells: exact zeros on the diagonal (d^0.5 is steep there)
        ys, xs = torch.meshgrid(torch.arange(h, device=f.device, dtype=f.dtype),
                                torch.arange(w, device=f.device, dtype=f.dtype), indexing="ij")
        cells = torch.stack((xs.reshape(-1), ys.reshape(-1)), -1).expand(b, h * w, 2)
    return _expected_distance(f, f, cells, (h, w), temperature, power, chunk_size) * float(stride) ** power


def regression_loss(pred: torch.Tensor, target: torch.Tensor, visible: torch.Tensor | None = None,
                    alpha: float = 10.0) -> torch.Tensor:
    """The official landmark regression loss: smooth-L1 of ``alpha`` x normalized coordinates.

    contrast-landmark ``models/loss.py``: ``F.smooth_l1_loss(pred * alpha, target * alpha)``
    with alpha = 10 (``regression_loss``, faces); with ``visible`` (CUB), the coordinates of
    invisible landmarks are zeroed in both before the same mean (``selected_regression_loss``),
    so they add 0 but still count in the mean over all B x K x 2 entries.

    pred, target: (B, K, 2) normalized (``landmarks.coords``); visible: (B, K) bool or None.
    Targets of invisible landmarks are never read (they may be NaN).
    """
    if pred.shape != target.shape or pred.dim() != 3 or pred.shape[-1] != 2:
        raise ValueError(f"expected pred and target (B, K, 2); got {tuple(pred.shape)} and {tuple(target.shape)}")
    if visible is not None:
        if visible.shape != pred.shape[:-1]:
            raise ValueError(f"visible must be (B, K) = {tuple(pred.shape[:-1])}, got {tuple(visible.shape)}")
        keep = visible.bool().unsqueeze(-1)
        pred = torch.where(keep, pred, torch.zeros_like(pred))
        target = torch.where(keep, target, torch.zeros_like(target))
    return F.smooth_l1_loss(pred * alpha, target * alpha)


def info_nce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """MoCo's InfoNCE: cross-entropy of logits (N, 1+K) against labels (N,) (zeros: positive first)."""
    return F.cross_entropy(logits, labels)
