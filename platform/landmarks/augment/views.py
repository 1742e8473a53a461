"""MoCo pair views, built on the worker's device from decoded image batches.

The augmentation of the official code (contrast-landmark ``data_loaders_face.py``, the
paper's Sec. 4 "MoCo ... JPEG noise, random resized crop, color jitter, PCA lighting"),
in its order, batched on the images' device (JPEG: augment/jpeg.py on a GPU, PIL on the CPU):

    JPEGNoise (random rescale + JPEG quality 30..98) -> RandomResizedCrop(scale 0.2..1)
    -> ColorJitter(0.4, 0.4, 0.4) -> PCA lighting (std 0.1) -> Normalize [-> border crop]

No flips: a flip swaps left and right landmarks. Faces are stored at 136 px and the
official code crops 136 px views to the 96 px input (``image_crop=20``): ``border=20``
does that. Every random number is drawn from one ``torch.Generator``, on its device, in
a fixed order, so a seed fixes the views; the pixel work runs on the images' device.
Numbers drawn on a CPU generator reach the GPU by non_blocking copies: a blocking copy waits
for every kernel queued before it, and the views would stop overlapping the network's work.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from kornia import enhance
from PIL import Image
from torch import nn

from .jpeg import jpeg_round_trip

# JPEG noise codes rescaled images in canvases whose sides are multiples of this (see _jpeg_noise).
JPEG_CANVAS_STEP = 32  # H100, batch 1024, torch codec: 32 -> 49.6 ms, 128 -> 58.9 ms per views call (benchmarks/views.py)
JPEG_BACKENDS = ("auto", "torch", "pil", "kornia")

# AlexNet-style lighting noise (Krizhevsky et al. 2012, Sec. 4.1): ImageNet RGB eigenvalues /
# eigenvectors (columns) for [0, 1] images, as in fb.resnet.torch and contrast-landmark ``PcaAug``.
IMAGENET_PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_PCA_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


def to_float_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 or float (B, H, W, 3) / (B, 3, H, W) -> float (B, 3, H, W) in [0, 1], same device.

    uint8 is divided by 255; float input is taken to be in [0, 1] already. A (B, H, W, 3)
    batch becomes a channels_last (B, 3, H, W) view without a copy of the layout. A
    shape with 3 in both places is read as (B, 3, H, W).
    """
    if images.dim() != 4 or 3 not in (images.shape[1], images.shape[-1]):
        raise ValueError(f"images must be (B, H, W, 3) or (B, 3, H, W), got {tuple(images.shape)}")
    x = images if images.shape[1] == 3 else images.permute(0, 3, 1, 2)
    if x.is_floating_point():
        return x
    if x.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 or floating point, got {images.dtype}")
    return x.to(torch.float32) / 255.0


def normalize(images_bchw: torch.Tensor, mean: Sequence[float] | torch.Tensor,
              std: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """(x - mean) / std per channel; mean and std have C entries."""
    mean_t = torch.as_tensor(mean, dtype=images_bchw.dtype, device=images_bchw.device).reshape(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=images_bchw.dtype, device=images_bchw.device).reshape(1, -1, 1, 1)
    if mean_t.shape[1] != images_bchw.shape[1] or std_t.shape[1] != images_bchw.shape[1]:
        raise ValueError(f"mean/std need {images_bchw.shape[1]} entries, got {mean_t.shape[1]} and {std_t.shape[1]}")
    return (images_bchw - mean_t) / std_t


def input_tensor(images_bhw3: torch.Tensor | np.ndarray, mean: Sequence[float], std: Sequence[float],
                 device: torch.device | str) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> normalized float (B, 3, H, W) on `device` (copied as uint8: 4x less traffic)."""
    x = torch.as_tensor(images_bhw3).to(device, non_blocking=True)
    return normalize(to_float_images(x).contiguous(), mean, std)


def border_crop(images: torch.Tensor, border: int) -> torch.Tensor:
    """Remove `border` pixels from each side of (..., H, W): faces stored at 136 -> 96 with 20.

    Keypoints in pixels move by -border in x and y.
    """
    height, width = images.shape[-2:]
    if border < 0 or 2 * border >= min(height, width):
        raise ValueError(f"border {border} does not fit an image of {height} x {width}")
    if border == 0:
        return images
    return images[..., border:height - border, border:width - border]


def _uniform(generator, n, low, high, device):
    return low + (high - low) * torch.rand(n, generator=generator, device=device, dtype=torch.float64)


def _jpeg_pil(x_bchw: torch.Tensor, quality_b: torch.Tensor) -> torch.Tensor:
    """Fallback JPEG round trip through PIL on the CPU (no gradient), per image."""
    out = []
    for img, q in zip(x_bchw.detach().clamp(0, 1).mul(255).round().to(torch.uint8).cpu(), quality_b.tolist()):
        buf = io.BytesIO()
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=int(q))
        out.append(torch.from_numpy(np.array(Image.open(buf).convert("RGB"))).permute(2, 0, 1))
    return torch.stack(out).to(device=x_bchw.device, dtype=x_bchw.dtype) / 255.0


def _jpeg_in_canvases(codec, resized: list[torch.Tensor], groups: list[tuple[torch.Tensor, int, int]],
                      quality: torch.Tensor) -> list[torch.Tensor]:
    """`codec(images, quality)` over groups of (n_g, 3, h_g, w_g) images -> the coded groups, same shapes."""
    def canvas_side(side: int) -> int:
        return -(-side // JPEG_CANVAS_STEP) * JPEG_CANVAS_STEP

    canvases: dict[tuple[int, int], list[int]] = {}
    for g, (_, h, w) in enumerate(groups):
        canvases.setdefault((canvas_side(h), canvas_side(w)), []).append(g)
    coded: list[torch.Tensor | None] = [None] * len(groups)
    for (ch, cw), members in canvases.items():
        padded = torch.cat([F.pad(resized[g], (0, cw - groups[g][2], 0, ch - groups[g][1]), mode="replicate")
                            for g in members])
        result = codec(padded, torch.cat([quality[groups[g][0]] for g in members]))
        start = 0
        for g in members:
            n, h, w = resized[g].shape[0], groups[g][1], groups[g][2]
            coded[g] = result[start:start + n, :, :h, :w]
            start += n
    return coded


def resample_boxes(x: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor, x1: torch.Tensor, y1: torch.Tensor,
                   side: int) -> torch.Tensor:
    """Bilinear (B, C, side, side) resamples of axis-aligned boxes of (B, C, H, W) images.

    Boxes are (B,) inclusive pixel corners; the output's corner pixels land on (x0, y0) and
    (x1, y1), as kornia's crop_and_resize(align_corners=True), in one affine grid_sample.
    """
    height, width = x.shape[-2:]
    zero = torch.zeros_like(x0)
    theta = torch.stack((
        torch.stack(((x1 - x0) / (width - 1), zero, (x0 + x1) / (width - 1) - 1), -1),
        torch.stack((zero, (y1 - y0) / (height - 1), (y0 + y1) / (height - 1) - 1), -1),
    ), 1).to(device=x.device, dtype=x.dtype, non_blocking=True)  # (B, 2, 3), normalized coordinates
    grid = F.affine_grid(theta, [x.shape[0], x.shape[1], side, side], align_corners=True)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


class MoCoViews(nn.Module):
    """Two independent augmentations of each image: ``view_q, view_k = views(images, generator)``.

    Args:
        out_size: side of the network input (96).
        mean, std: per-channel normalization (``landmarks.data.normalization.input_stats``).
        border: views are cropped to out_size + 2 * border and then lose the border (20 for
            faces stored at 136, 0 for CUB).
        crop_min_scale: RandomResizedCrop area lower bound (0.2; aspect 3/4..4/3, torchvision).
        color_jitter: brightness = contrast = saturation jitter (0.4; MoCo v1), random order.
        jpeg: apply the official JPEGNoise: rescale by max(0.8, 1 + 0.5 N(0, 1)) (capped at 2,
            sides rounded to 16k + 8 px, see _jpeg_noise), JPEG quality
            uniform in jpeg_quality (30..98), rescale back.
        lighting_std: PCA lighting noise std (0.1).
        jpeg_backend: "torch" (augment/jpeg.py: libjpeg's steps as batched tensor ops on the
            device), "pil" (libjpeg itself, the official code's codec, through a CPU round trip),
            "kornia" (kornia's differentiable codec, an approximation of many small kernels), or
            "auto": PIL for images on the CPU (faster there), torch on a GPU.
    """

    def __init__(self, out_size: int = 96, *, mean: Sequence[float], std: Sequence[float], border: int = 0,
                 crop_min_scale: float = 0.2, color_jitter: float = 0.4, jpeg: bool = True,
                 lighting_std: float = 0.1, jpeg_quality: tuple[int, int] = (30, 99),
                 jpeg_backend: str = "auto"):
        super().__init__()
        if out_size <= 0 or border < 0:
            raise ValueError(f"out_size must be > 0 and border >= 0, got {out_size} and {border}")
        if not 0.0 < crop_min_scale <= 1.0:
            raise ValueError(f"crop_min_scale must be in (0, 1], got {crop_min_scale}")
        if not 0.0 <= color_jitter <= 1.0 or lighting_std < 0:
            raise ValueError(f"color_jitter must be in [0, 1] and lighting_std >= 0, got {color_jitter}, "
                             f"{lighting_std}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 entries with std > 0, got {mean} and {std}")
        if jpeg_backend not in JPEG_BACKENDS:
            raise ValueError(f"jpeg_backend must be one of {', '.join(JPEG_BACKENDS)}, got {jpeg_backend!r}")
        if not 0 <= jpeg_quality[0] < jpeg_quality[1] <= 101:
            raise ValueError(f"jpeg_quality must be (low, high) with 0 <= low < high <= 101, got {jpeg_quality}")
        if jpeg_backend == "kornia" and not hasattr(enhance, "jpeg_codec_differentiable"):
            raise ValueError("jpeg_backend='kornia' needs kornia>=0.7.1 (enhance.jpeg_codec_differentiable)")
        self.jpeg_backend = jpeg_backend
        self.out_size, self.border = out_size, border
        self.crop_scale = (crop_min_scale, 1.0)
        self.crop_ratio = (3.0 / 4.0, 4.0 / 3.0)
        self.color_jitter, self.jpeg, self.lighting_std = color_jitter, jpeg, lighting_std
        self.jpeg_quality = jpeg_quality
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32), persistent=False)
        self.register_buffer("eigval", torch.tensor(IMAGENET_PCA_EIGVAL), persistent=False)
        self.register_buffer("eigvec", torch.tensor(IMAGENET_PCA_EIGVEC), persistent=False)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """images: uint8/float (B, H, W, 3) or (B, 3, H, W) -> two float32 (B, 3, out, out) views.

        Without a generator the views follow torch's global seed (``torch.manual_seed``).
        """
        if generator is None:
            seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
            generator = torch.Generator().manual_seed(seed)
        x = to_float_images(images).to(torch.float32)
        both = self.view(torch.cat((x, x)), generator)  # both views in one pass: half the kernel launches
        return both[:x.shape[0]], both[x.shape[0]:]

    def view(self, x_bchw: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One augmentation of float (B, 3, H, W) images in [0, 1]."""
        if self.jpeg:
            x_bchw = self._jpeg_noise(x_bchw, generator)
        x = self._random_resized_crop(x_bchw, generator)
        x = self._color_jitter(x, generator)
        x = self._lighting(x, generator)
        x = normalize(x, self.mean.to(x.device), self.std.to(x.device))
        return border_crop(x, self.border)

    def _jpeg_noise(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Rescale each image by its own factor, JPEG it at its own quality, rescale back.

        Rescaled sides are rounded to 16k + 8 px, so images of one size are resized together,
        and with the torch or kornia codec every image is replicate-padded into one of a few canvases
        (sides rounded up to JPEG_CANVAS_STEP), each coded in one call. That is exact: the codec
        itself replicate-pads a 16k + 8 side to whole 16 x 16 blocks, codes blocks independently,
        and its chroma filters only reach into that padding, so each image comes out as if coded
        alone (a side of exactly 16k would not be with kornia: alone, its filters reflect at the
        edge). On a GPU a codec call's kernel launches, not its arithmetic, are what a small
        group costs, and this makes a handful of codec calls per batch instead of one per size.
        """
        b, _, height, width = x.shape
        dev = gen.device
        scale = (1.0 + 0.5 * torch.randn(b, generator=gen, device=dev, dtype=torch.float64)).clamp(0.8, 2.0)
        quality = torch.randint(*self.jpeg_quality, (b,), generator=gen, device=dev)
        sizes = torch.stack((scale * height, scale * width), -1).sub(8).div(16).round().clamp(min=0).mul(16).add(8)
        unique, group_of = torch.unique(sizes.cpu().long(), dim=0, return_inverse=True)
        groups = [((group_of == g).nonzero().squeeze(1).to(x.device, non_blocking=True), int(h), int(w))
                  for g, (h, w) in enumerate(unique.tolist())]
        quality = quality.to(device=x.device, dtype=x.dtype, non_blocking=True)
        resized = [F.interpolate(x[idx], size=(h, w), mode="bilinear", antialias=True,
                                 align_corners=False).clamp(0, 1) for idx, h, w in groups]
        backend = self.jpeg_backend
        if backend == "auto":
            backend = "pil" if x.device.type == "cpu" else "torch"
        if backend == "pil":
            coded = [_jpeg_pil(y, quality[idx]) for y, (idx, _, _) in zip(resized, groups)]
        else:
            codec = jpeg_round_trip if backend == "torch" else enhance.jpeg_codec_differentiable
            coded = _jpeg_in_canvases(codec, resized, groups, quality)
        out = torch.empty_like(x)
        for y, (idx, _, _) in zip(coded, groups):
            out[idx] = F.interpolate(y, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
        return out.clamp(0, 1)

    def _random_resized_crop(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """torchvision RandomResizedCrop.get_params, vectorized: 10 tries, else a centre crop.

        The crops are resampled (bilinear, corner pixels on corner pixels, as kornia's
        crop_and_resize) by one affine grid_sample over the whole batch.
        """
        b, _, height, width = x.shape
        dev, tries = gen.device, 10
        area = height * width * _uniform(gen, (b, tries), *self.crop_scale, dev)
        log_r = (math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1]))
        aspect = torch.exp(_uniform(gen, (b, tries), *log_r, dev))
        w = torch.sqrt(area * aspect).round()
        h = torch.sqrt(area / aspect).round()
        ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = ok.to(torch.int8).argmax(1, keepdim=True)
        w, h, found = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0], ok.any(1)
        in_ratio = width / height  # fallback: the largest centred crop with an aspect in range
        fb_w = width if in_ratio <= self.crop_ratio[1] else round(height * self.crop_ratio[1])
        fb_h = height if in_ratio >= self.crop_ratio[0] else round(width / self.crop_ratio[0])
        w = torch.where(found, w, torch.full_like(w, fb_w))
        h = torch.where(found, h, torch.full_like(h, fb_h))
        u = torch.rand(b, 2, generator=gen, device=dev, dtype=torch.float64)
        top = torch.where(found, (u[:, 0] * (height - h + 1)).floor(), ((height - h) / 2).round())
        left = torch.where(found, (u[:, 1] * (width - w + 1)).floor(), ((width - w) / 2).round())
        side = self.out_size + 2 * self.border
        return resample_boxes(x, left, top, left + w - 1, top + h - 1, side)

    def _color_jitter(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """torchvision ColorJitter(j, j, j): factors in [1 - j, 1 + j], a random order per image."""
        b, dev, j = x.shape[0], gen.device, self.color_jitter
        factors = _uniform(gen, (3, b), max(0.0, 1.0 - j), 1.0 + j, dev).to(device=x.device, dtype=x.dtype,
                                                                           non_blocking=True)
        order = torch.rand(b, 3, generator=gen, device=dev).argsort(1).to(x.device, non_blocking=True)  # (B, 3)
        if j == 0:
            return x
        ops = (enhance.adjust_brightness_accumulative, enhance.adjust_contrast_with_mean_subtraction,
               enhance.adjust_saturation_with_gray_subtraction)
        for step in range(3):
            which = order[:, step].reshape(b, 1, 1, 1)
            candidates = [op(x, f) for op, f in zip(ops, factors)]
            x = torch.where(which == 0, candidates[0], torch.where(which == 1, candidates[1], candidates[2]))
        return x

    def _lighting(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Add eigvec @ (alpha * eigval), alpha ~ N(0, lighting_std), per image; no clamp (official)."""
        alpha = torch.randn(x.shape[0], 3, generator=gen, device=gen.device, dtype=torch.float64)
        alpha = (alpha * self.lighting_std).to(device=x.device, dtype=x.dtype, non_blocking=True)
        rgb = torch.einsum("cj,bj->bc", self.eigvec.to(x), alpha * self.eigval.to(x))  # (B, 3)
        return x + rgb[:, :, None, None]
