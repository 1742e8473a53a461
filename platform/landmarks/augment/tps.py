"""Random thin-plate-spline (TPS) warps that move keypoints with the image.

Parameterisation of the official code (Thewlis et al. 2019 / DVE ``utils/tps.py``,
kept by Cheng et al. in cvl-umass/contrast-landmark ``utils/tps.py``): a 10 x 10 grid
of control points c_k on [-1, 1]^2 and a *backward* map from an output location p to
the input location it samples, both in normalized coordinates (x first,
``align_corners=True``: pixel centre i of a side of n pixels sits at 2 i / (n - 1) - 1):

    g(p) = sum_k w_k U(|p - c_k|^2) + t + p @ M,   U(d) = d log(d + 1e-5),
    M = s [[cos r, -sin r], [sin r, cos r]],

    w_k ~ N(0, warpsd_all) per coordinate, each coordinate with probability 1/2 drawn
    from N(0, warpsd_subset) instead; t ~ N(0, transsd); s ~ 1 + N(0, scalesd);
    r ~ N(0, rotsd) degrees.

``warp_images`` samples the input at g(p) (``grid_sample``), so the pixel at input
location q moves to the p with g(p) = q; ``snap_keypoints`` finds it as the official code
does (the output pixel whose sample is nearest q: integer coordinates), ``warp_keypoints``
solves it by Newton's method, to far below 0.01 px where the warp is one-to-one. The strong ``PAIR`` warps fold over a small region in
about 1 in 10 draws, as in the official code; a keypoint there takes one of its images.

Keypoints are in pixels (x, y) with pixel centres at integer coordinates, the
convention of ``landmarks.augment.geometry`` and of the Parquet shards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..coords import normalized_grid, normalized_to_pixels, pixels_to_normalized

NUM_CTRL = 10  # control points per side (official ``Warper.nc``)
_KERNEL_EPS = 1e-5  # official ``tps_U``: d log(d + 1e-5)
_MAX_CHUNK = 1 << 22  # elements of one (B, N, K) kernel block, bounds memory of map_points


@dataclass(frozen=True)
class TPSStrength:
    """Standard deviations of a random TPS warp (the official ``random_tps_weights`` knobs)."""

    warpsd_all: float
    warpsd_subset: float
    transsd: float
    scalesd: float
    rotsd: float  # degrees

    def __post_init__(self):
        for name in ("warpsd_all", "warpsd_subset", "transsd", "scalesd", "rotsd"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"TPSStrength.{name} must be a finite number >= 0, got {value}")

    def scaled(self, warp: float, affine: float) -> TPSStrength:
        """Non-affine sds times `warp`, affine sds times `affine` (official im1_multiplier(_aff))."""
        return TPSStrength(self.warpsd_all * warp, self.warpsd_subset * warp,
                           self.transsd * affine, self.scalesd * affine, self.rotsd * affine)


# Regressor training with limited annotations: ``WarperSingle`` defaults (contrast-landmark utils/tps.py).
AUGMENT = TPSStrength(warpsd_all=5e-4, warpsd_subset=0.0, transsd=0.02, scalesd=0.02, rotsd=2.0)
# Image pairs for the equivariance loss: ``Warper`` defaults (DVE and contrast-landmark utils/tps.py).
PAIR = TPSStrength(warpsd_all=1e-3, warpsd_subset=1e-2, transsd=0.1, scalesd=0.1, rotsd=5.0)
# Landmark matching, "same identity" pairs: half of PAIR with both multipliers 1
# (contrast-landmark data_loaders_face.py, MAFLAligned(pair_image=True)).
MATCH = PAIR.scaled(0.5, 0.5)


def control_points(device=None, dtype=torch.float32) -> torch.Tensor:
    """The (NUM_CTRL**2, 2) control points, a regular grid on [-1, 1]^2, x first."""
    return normalized_grid(NUM_CTRL, NUM_CTRL, device, dtype).reshape(-1, 2)


def _kernel(points_bn2: torch.Tensor, ctrl_k2: torch.Tensor) -> torch.Tensor:
    d = (points_bn2.unsqueeze(-2) - ctrl_k2).square().sum(-1)  # (..., N, K) squared distances
    return d * torch.log(d + _KERNEL_EPS)


@dataclass(frozen=True, eq=False)  # tensors: no elementwise __eq__
class TPSParams:
    """A batch of TPS warps: g(p) = kernel(p) @ nonaffine + t + p @ M (see module docstring).

    Attributes:
        nonaffine: (B, NUM_CTRL**2, 2) kernel weights w_k.
        affine: (B, 3, 2) rows t, then M (g = [1, x, y] @ affine), the official layout.
    """

    nonaffine: torch.Tensor
    affine: torch.Tensor

    def __post_init__(self):
        b = self.nonaffine.shape[0]
        if self.nonaffine.shape != (b, NUM_CTRL * NUM_CTRL, 2) or self.affine.shape != (b, 3, 2):
            raise ValueError(f"TPSParams expects nonaffine (B, {NUM_CTRL ** 2}, 2) and affine (B, 3, 2), "
                             f"got {tuple(self.nonaffine.shape)} and {tuple(self.affine.shape)}")

    @property
    def batch_size(self) -> int:
        return self.nonaffine.shape[0]

    @classmethod
    def sample(cls, batch_size: int, strength: TPSStrength = PAIR, generator: torch.Generator | None = None,
               device=None, dtype=torch.float32) -> TPSParams:
        """Draw `batch_size` independent warps; reproducible from `generator` (drawn on its device)."""
        gen_device = generator.device if generator is not None else torch.device("cpu")
        kw = {"generator": generator, "device": gen_device, "dtype": torch.float64}
        b, k = batch_size, NUM_CTRL * NUM_CTRL
        w = torch.randn(b, k, 2, **kw) * strength.warpsd_all
        subset = torch.rand(b, k, 2, **kw) > 0.5
        w = torch.where(subset, torch.randn(b, k, 2, **kw) * strength.warpsd_subset, w)
        rot = torch.randn(b, **kw) * math.radians(strength.rotsd)
        scale = 1.0 + torch.randn(b, **kw) * strength.scalesd
        trans = torch.randn(b, 2, **kw) * strength.transsd
        cos, sin = scale * torch.cos(rot), scale * torch.sin(rot)
        affine = torch.stack((trans, torch.stack((cos, -sin), -1), torch.stack((sin, cos), -1)), dim=1)
        return cls(w.to(device=device, dtype=dtype), affine.to(device=device, dtype=dtype))

    @classmethod
    def identity(cls, batch_size: int, device=None, dtype=torch.float32) -> TPSParams:
        affine = torch.zeros(batch_size, 3, 2, device=device, dtype=dtype)
        affine[:, 1, 0] = affine[:, 2, 1] = 1.0
        return cls(torch.zeros(batch_size, NUM_CTRL * NUM_CTRL, 2, device=device, dtype=dtype), affine)

    def to(self, device=None, dtype=None) -> TPSParams:
        return TPSParams(self.nonaffine.to(device=device, dtype=dtype), self.affine.to(device=device, dtype=dtype))

    def map_points(self, points: torch.Tensor) -> torch.Tensor:
        """g(p) for normalized points (N, 2) shared by the batch or (B, N, 2) -> (B, N, 2), points' dtype."""
        params = self.to(points.device, points.dtype)
        ctrl = control_points(points.device, points.dtype)
        ones = torch.ones_like(points[..., :1])
        if points.dim() == 2:  # one set of points for the whole batch: one kernel matrix
            affine_part = torch.einsum("nj,bjc->bnc", torch.cat((ones, points), -1), params.affine)
            return torch.einsum("nk,bkc->bnc", _kernel(points, ctrl), params.nonaffine) + affine_part
        if points.dim() != 3 or points.shape[0] != self.batch_size:
            raise ValueError(f"points must be (N, 2) or ({self.batch_size}, N, 2), got {tuple(points.shape)}")
        out = torch.einsum("bnj,bjc->bnc", torch.cat((ones, points), -1), params.affine)
        step = max(1, _MAX_CHUNK // max(1, points.shape[1] * ctrl.shape[0]))
        for i in range(0, self.batch_size, step):
            kern = _kernel(points[i:i + step], ctrl)  # (b, N, K)
            out[i:i + step] += torch.einsum("bnk,bkc->bnc", kern, params.nonaffine[i:i + step])
        return out

    def grid(self, size: tuple[int, int], dtype=torch.float32, device=None) -> torch.Tensor:
        """(B, H, W, 2) ``grid_sample`` grid (align_corners=True) of this warp at resolution size = (H, W)."""
        height, width = size
        base = normalized_grid(height, width, device if device is not None else self.affine.device, dtype)
        return self.map_points(base.reshape(-1, 2)).reshape(self.batch_size, height, width, 2)

    def jacobian(self, points_bn2: torch.Tensor) -> torch.Tensor:
        """(B, N, 2, 2) d g_i / d p_j at normalized points (B, N, 2)."""
        params = self.to(points_bn2.device, points_bn2.dtype)
        diff = points_bn2.unsqueeze(-2) - control_points(points_bn2.device, points_bn2.dtype)  # (B, N, K, 2)
        d = diff.square().sum(-1)
        du_dd = torch.log(d + _KERNEL_EPS) + d / (d + _KERNEL_EPS)  # (B, N, K)
        jac = 2.0 * torch.einsum("bnk,bki,bnkj->bnij", du_dd, params.nonaffine, diff)
        return jac + params.affine[:, 1:].transpose(1, 2).unsqueeze(1)

    def invert_points(self, targets_bn2: torch.Tensor, iters: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
        """Solve g(p) = q for normalized targets (B, N, 2); returns (p, |g(p) - q|), both float64.

        Starts from the best of a coarse grid of candidates (the warp's displacement can be
        tens of pixels), then damped Newton steps (halved until the residual shrinks).
        """
        params = self.to(targets_bn2.device, torch.float64)
        q = targets_bn2.to(torch.float64)
        cand = normalized_grid(33, 33, q.device, torch.float64).reshape(-1, 2) * 1.5  # covers points leaving
        mapped = params.map_points(cand)  # (B, C, 2)
        best = torch.cdist(q, mapped).argmin(-1)  # (B, N)
        p = cand[best]
        res = params.map_points(p) - q
        for _ in range(iters):
            err = res.norm(dim=-1)
            if bool((err < 1e-12).all()):
                break
            jac = params.jacobian(p)
            det = jac[..., 0, 0] * jac[..., 1, 1] - jac[..., 0, 1] * jac[..., 1, 0]
            det = torch.where(det.abs() < 1e-12, torch.full_like(det, 1e-12), det)
            step = torch.stack((jac[..., 1, 1] * res[..., 0] - jac[..., 0, 1] * res[..., 1],
                                jac[..., 0, 0] * res[..., 1] - jac[..., 1, 0] * res[..., 0]), -1) / det[..., None]
            step_len = torch.ones_like(err)
            accepted = torch.zeros_like(err, dtype=torch.bool)
            new_p, new_res = p, res
            for _ in range(12):  # backtracking: accept the first step length that lowers the residual
                trial = p - step * step_len[..., None]
                trial_res = params.map_points(trial) - q
                better = ~accepted & (trial_res.norm(dim=-1) < err)
                new_p = torch.where(better[..., None], trial, new_p)
                new_res = torch.where(better[..., None], trial_res, new_res)
                accepted |= better
                if bool(accepted.all()):
                    break
                step_len = step_len * 0.5
            p, res = new_p, new_res
            if not bool(accepted.any()):  # the rest have no exact preimage (their pixel is not shown)
                break
        return p, res.norm(dim=-1)


def warp_images(images_bchw: torch.Tensor, params: TPSParams, padding_mode: str = "zeros") -> torch.Tensor:
    """Warp images (B, C, H, W) by `params`: out(p) = in(g(p)); uint8 in -> uint8 out (rounded).

    Zero padding outside the image, as in the official code.
    """
    if images_bchw.dim() != 4 or images_bchw.shape[0] != params.batch_size:
        raise ValueError(f"images must be (B={params.batch_size}, C, H, W), got {tuple(images_bchw.shape)}")
    x = images_bchw if images_bchw.is_floating_point() else images_bchw.float()
    grid = params.grid(tuple(x.shape[-2:]), dtype=torch.float32, device=x.device).to(x.dtype)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=True)
    if not images_bchw.is_floating_point():
        out = out.round().clamp(0, 255).to(images_bchw.dtype)
    return out


def warp_keypoints(kps_bk2: torch.Tensor, params: TPSParams, size: tuple[int, int]) -> torch.Tensor:
    """Move pixel keypoints (B, K, 2) of an image of size (H, W) to where `warp_images` puts their pixels."""
    moved, _ = _warp_keypoints_with_residual(kps_bk2, params, size)
    return moved


def _warp_keypoints_with_residual(kps_bk2, params, size):
    if kps_bk2.dim() != 3 or kps_bk2.shape[0] != params.batch_size or kps_bk2.shape[-1] != 2:
        raise ValueError(f"keypoints must be (B={params.batch_size}, K, 2), got {tuple(kps_bk2.shape)}")
    q = pixels_to_normalized(kps_bk2.to(torch.float64), size)
    finite = torch.isfinite(q).all(-1, keepdim=True)
    p, res = params.invert_points(torch.where(finite, q, torch.zeros_like(q)))
    p = torch.where(finite, p, q)  # missing (NaN) keypoints stay missing
    res_px = res * (max(size) - 1) / 2.0
    return normalized_to_pixels(p, size).to(kps_bk2.dtype), res_px


def sample_pair_params(batch_size: int, strength: TPSStrength = PAIR, generator: torch.Generator | None = None,
                       device=None, base_warp_scale: float = 0.5, base_affine_scale: float = 0.0,
                       ) -> tuple[TPSParams, TPSParams]:
    """(base, second) warps of an image pair: image b = base warp, image a = base then second.

    The base warp uses `strength` scaled by the official ``Warper`` multipliers
    (im1_multiplier=0.5, im1_multiplier_aff=0 in contrast-landmark utils/tps.py; use 1, 1
    with MATCH for the matching benchmark); the second uses `strength` itself.
    """
    base = TPSParams.sample(batch_size, strength.scaled(base_warp_scale, base_affine_scale), generator, device)
    second = TPSParams.sample(batch_size, strength, generator, device)
    return base, second


def pair_warp(images_bchw: torch.Tensor, preset: TPSStrength = PAIR, feature_size: tuple[int, int] = (48, 48),
              generator: torch.Generator | None = None, *, params: tuple[TPSParams, TPSParams] | None = None,
              base_warp_scale: float = 0.5, base_affine_scale: float = 0.0,
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two warped versions of each image and their dense correspondence.

    As in the official ``Warper`` (whose return order puts the twice-warped image first),
    image b = base(image) and image a = second(image b), rendered from the source in one
    interpolation. For a location u of an (h, w) = feature_size map of image a, the same
    physical point in image b is at g_second(u): that is the grid, exact at any resolution.

    Args:
        images_bchw: (B, C, H, W) float or uint8.
        params: (base, second) from `sample_pair_params` to reuse; sampled here otherwise.

    Returns:
        img_a, img_b: (B, C, H, W); grid (B, h, w, 2) float32, normalized [-1, 1], x first,
        align_corners=True, what ``landmarks.losses.equivariance_loss`` consumes.
    """
    b = images_bchw.shape[0]
    if params is None:
        params = sample_pair_params(b, preset, generator, images_bchw.device, base_warp_scale, base_affine_scale)
    base, second = params
    height, width = images_bchw.shape[-2:]
    img_b = warp_images(images_bchw, base)
    x = images_bchw if images_bchw.is_floating_point() else images_bchw.float()
    inner = second.map_points(normalized_grid(height, width, x.device, torch.float32).reshape(-1, 2))
    grid_a = base.map_points(inner).reshape(b, height, width, 2).to(x.dtype)
    img_a = F.grid_sample(x, grid_a, mode="bilinear", padding_mode="zeros", align_corners=True)
    if not images_bchw.is_floating_point():
        img_a = img_a.round().clamp(0, 255).to(images_bchw.dtype)
    return img_a, img_b, second.grid(feature_size, dtype=torch.float32, device=x.device)


def pair_keypoints(kps_bk2: torch.Tensor, params: tuple[TPSParams, TPSParams], size: tuple[int, int],
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel keypoints (B, K, 2) of the source -> (kps in image a, kps in image b) of `pair_warp`."""
    base, second = params
    kps_b = warp_keypoints(kps_bk2, base, size)
    return warp_keypoints(kps_b, second, size), kps_b


def match_pair_warp(images_bchw: torch.Tensor, kps_bk2: torch.Tensor, strength: TPSStrength = MATCH,
                    generator: torch.Generator | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The landmark-matching pair of each image, as the official ``Warper`` makes it.

    contrast-landmark ``MAFLAligned(pair_image=True, TPS_aug=True)``: ``Warper(warp kwargs halved,
    im1_multiplier=1, im1_multiplier_aff=1)`` (`MATCH` for both warps) on the stored image: image
    b = the source sampled by warp 1, image a = image b sampled again by warp 2 (two interpolations,
    as there); keypoints are snapped through warp 1, then warp 2 (`snap_keypoints`).

    images_bchw: (B, C, H, W), any range (no rounding here); kps_bk2: (B, K, 2) pixels.
    Returns (img_a, img_b, kps_a, kps_b); the official code's first image of a pair is a, the
    matching source.
    """
    size = tuple(images_bchw.shape[-2:])
    first = TPSParams.sample(images_bchw.shape[0], strength, generator, images_bchw.device)
    second = TPSParams.sample(images_bchw.shape[0], strength, generator, images_bchw.device)
    x = images_bchw.float()
    img_b = warp_images(x, first)
    img_a = warp_images(img_b, second)
    kps_b = snap_keypoints(kps_bk2, first, size)
    return img_a, img_b, snap_keypoints(kps_b, second, size), kps_b


def snap_keypoints(kps_bk2: torch.Tensor, params: TPSParams, size: tuple[int, int]) -> torch.Tensor:
    """The official keypoint warp: each keypoint moves to the output pixel whose sample is nearest.

    contrast-landmark ``utils/tps.py`` ``warp_keypoints``: a KD-tree over where every output pixel
    p samples the input (g(p) in pixels) answers, for a keypoint q, the p with g(p) nearest q;
    the keypoint becomes that pixel's integer coordinates. Kept wherever it lands (the official
    loaders drop no keypoint). kps_bk2: (B, K, 2) pixels of an image of size (H, W) -> (B, K, 2).
    """
    if kps_bk2.dim() != 3 or kps_bk2.shape[0] != params.batch_size or kps_bk2.shape[-1] != 2:
        raise ValueError(f"keypoints must be (B={params.batch_size}, K, 2), got {tuple(kps_bk2.shape)}")
    width = size[1]
    sampled = normalized_to_pixels(params.grid(size, dtype=torch.float64, device=kps_bk2.device),
                                   size).reshape(params.batch_size, -1, 2)  # (B, H W, 2) input px
    out = torch.empty_like(kps_bk2)
    for b in range(params.batch_size):  # one (K, H W) distance matrix at a time
        nearest = torch.cdist(kps_bk2[b].to(torch.float64), sampled[b]).argmin(-1)  # (K,)
        out[b, :, 0], out[b, :, 1] = (nearest % width).to(out.dtype), (nearest // width).to(out.dtype)
    return out


def tps_augment(images_bchw: torch.Tensor, kps_bk2: torch.Tensor, preset: TPSStrength = AUGMENT,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The official ``WarperSingle`` augmentation for regressors trained on few annotations.

    Warps images (B, C, H, W), in 0..255 (uint8 or float), at the size given (the official code
    warps the stored 136 px face before its border crop) and moves their pixel keypoints
    (B, K, 2) with `snap_keypoints`. Returns (images, keypoints): uint8 images are truncated
    back to uint8 as the official ``.to(torch.uint8)`` does; no keypoint is dropped.
    """
    params = TPSParams.sample(images_bchw.shape[0], preset, generator, images_bchw.device)
    size = tuple(images_bchw.shape[-2:])
    warped = warp_images(images_bchw.float(), params)
    if not images_bchw.is_floating_point():
        warped = warped.clamp(0, 255).to(images_bchw.dtype)  # truncation, as the official cast
    return warped, snap_keypoints(kps_bk2, params, size)
