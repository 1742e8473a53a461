"""MoCo pair views, built on the worker's device from decoded image batches.

The augmentation of the official code (contrast-landmark ``data_loaders_face.py``, the
paper's Sec. 4 "MoCo ... JPEG noise, random resized crop, color jitter, PCA lighting"),
in its order and in its arithmetic, batched on the images' device:

    JPEGNoise (random rescale + JPEG quality 30..98) -> RandomResizedCrop(scale 0.2..1)
    -> ColorJitter(0.4, 0.4, 0.4) -> ToTensor -> PCA lighting (std 0.1) -> Normalize [-> border crop]

The first three run on PIL images in the official code, so here they run on 8-bit values with
Pillow's arithmetic (`pil_ops`: its bilinear resample with per-image boxes and sizes, its
ImageEnhance blends; `jpeg_noise`: the official rescale rule, libjpeg through PIL on the CPU or a
batched codec on a GPU). With the PIL codec a view is pixel for pixel the official one for the
same random draws (tests/test_views.py replays them through PIL and torchvision); the batched
codecs differ by their rounding (benchmarks/views.py --compare measures it).

No flips: a flip swaps left and right landmarks. Faces are stored at 136 px and the
official code crops 136 px views to the 96 px input (``image_crop=20``): ``border=20``
does that. Every random number is drawn from one ``torch.Generator``, on its device, in
a fixed order, so a seed fixes the views; the pixel work runs on the images' device.
Numbers drawn on a CPU generator reach the GPU by non_blocking copies: a blocking copy waits
for every kernel queued before it, and the views would stop overlapping the network's work.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageEnhance
from torch import nn

from . import pil_ops
from .jpeg_noise import CANVAS_STEP, JPEG_BACKENDS, jpeg_noise

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


def to_levels(images: torch.Tensor) -> torch.Tensor:
    """Images as 8-bit values: uint8 (or [0, 1] float) (B, H, W, 3) / (B, 3, H, W) -> float32
    (B, 3, H, W) holding integers 0..255, the pixels of a PIL image (float input is rounded)."""
    x = to_float_images(images)
    if images.dtype == torch.uint8:
        return x.mul(255.0).round_()  # exact: k / 255 * 255 rounds back to k
    return x.to(torch.float32).clamp(0, 1).mul(255.0).round()


def _uniform(generator, n, low, high, device):
    return low + (high - low) * torch.rand(n, generator=generator, device=device, dtype=torch.float64)


@dataclass
class ViewDraws:
    """Every random number of one view of B images, drawn in a fixed order (`MoCoViews.draw`)."""

    jpeg_z: torch.Tensor  # (B,) float32: JPEGNoise's N(0, 1) scale draw
    jpeg_quality: torch.Tensor  # (B,) int64
    crop: tuple[torch.Tensor, ...]  # left, top, width, height: (B,) float64 integers each
    factors: torch.Tensor  # (3, B) float64: brightness, contrast, saturation
    order: torch.Tensor  # (B, 3) int64: the jitter ops in the order applied
    alpha: torch.Tensor  # (B, 3) float32: PcaAug's alpha (already x lighting_std)


class MoCoViews(nn.Module):
    """Two independent augmentations of each image: ``view_q, view_k = views(images, generator)``.

    Args:
        out_size: side of the network input (96).
        mean, std: per-channel normalization (``landmarks.data.normalization.input_stats``).
        border: views are cropped to out_size + 2 * border and then lose the border (20 for
            faces stored at 136, 0 for CUB).
        crop_min_scale: RandomResizedCrop area lower bound (0.2; aspect 3/4..4/3, torchvision).
        color_jitter: brightness = contrast = saturation jitter (0.4; MoCo v1), random order.
        jpeg: apply the official JPEGNoise (`jpeg_noise`): rescale to max(int(0.8 W), int(W (1 + 0.5 z))),
            JPEG quality uniform in jpeg_quality (30..98), rescale back.
        lighting_std: PCA lighting noise std (0.1).
        jpeg_backend: how the 8-bit steps run. "pil": image by image in PIL on the CPU, libjpeg as the
            official code's (the official pixels); "torch": batched on the images' device (`pil_ops`, the
            same arithmetic) with augment/jpeg.py's codec; "kornia": the same with kornia's codec;
            "auto": PIL for images on the CPU, torch on a GPU.
    """

    def __init__(self, out_size: int = 96, *, mean: Sequence[float], std: Sequence[float], border: int = 0,
                 crop_min_scale: float = 0.2, color_jitter: float = 0.4, jpeg: bool = True,
                 lighting_std: float = 0.1, jpeg_quality: tuple[int, int] = (30, 99),
                 jpeg_backend: str = "auto", canvas_step: int = CANVAS_STEP):
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
        self.jpeg_backend, self.canvas_step = jpeg_backend, canvas_step
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
        """images: uint8 (or [0, 1] float) (B, H, W, 3) or (B, 3, H, W) -> two float32 (B, 3, out, out) views.

        Without a generator the views follow torch's global seed (``torch.manual_seed``).
        """
        if generator is None:
            seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
            generator = torch.Generator().manual_seed(seed)
        x = to_levels(images)
        both = self.view(torch.cat((x, x)), generator)  # both views in one pass: half the kernel launches
        return both[:x.shape[0]], both[x.shape[0]:]

    def backend(self, device: torch.device) -> str:
        """The JPEG backend for images on `device` ("auto": PIL on the CPU, torch elsewhere)."""
        if self.jpeg_backend != "auto":
            return self.jpeg_backend
        return "pil" if device.type == "cpu" else "torch"

    def view(self, levels_bchw: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One augmentation of 8-bit images (B, 3, H, W), float32 values 0..255 (`to_levels`)."""
        b, _, height, width = levels_bchw.shape
        draws = self.draw(b, height, width, generator)
        if self.backend(levels_bchw.device) == "pil":
            x = self._pil_pixels(levels_bchw, draws)
        else:
            x = self._tensor_pixels(levels_bchw, draws)
        x = x / 255.0  # ToTensor
        x = self._lighting(x, draws.alpha)
        x = normalize(x, self.mean.to(x.device), self.std.to(x.device))
        return border_crop(x, self.border)

    def draw(self, b: int, height: int, width: int, gen: torch.Generator) -> ViewDraws:
        """The random numbers of one view of B images of height x width, on the generator's device."""
        dev = gen.device
        z = torch.randn(b, generator=gen, device=dev, dtype=torch.float32)
        quality = torch.randint(*self.jpeg_quality, (b,), generator=gen, device=dev)
        crop = self._crop_boxes(b, height, width, gen)
        j = self.color_jitter
        factors = _uniform(gen, (3, b), max(0.0, 1.0 - j), 1.0 + j, dev)
        order = torch.rand(b, 3, generator=gen, device=dev).argsort(1)
        alpha = torch.randn(b, 3, generator=gen, device=dev, dtype=torch.float32) * self.lighting_std
        return ViewDraws(z, quality, crop, factors, order, alpha)

    def _crop_boxes(self, b: int, height: int, width: int, gen: torch.Generator):
        """torchvision RandomResizedCrop.get_params per image, vectorized: 10 tries, else the centre
        crop -> (left, top, w, h), (B,) float64 integers each."""
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
        top = torch.where(found, (u[:, 0] * (height - h + 1)).floor(), ((height - h) / 2).floor())
        left = torch.where(found, (u[:, 1] * (width - w + 1)).floor(), ((width - w) / 2).floor())
        return left, top, w, h

    def _pil_pixels(self, x: torch.Tensor, d: ViewDraws) -> torch.Tensor:
        """JPEGNoise, RandomResizedCrop and ColorJitter image by image in PIL, as the official code runs
        them (resizes as Pillow 8.4's: the horizontal pass, then the vertical one) -> 8-bit levels."""
        if self.jpeg:
            x = jpeg_noise(x, d.jpeg_z, d.jpeg_quality, "pil")
        side = self.out_size + 2 * self.border
        planes = x.detach().to("cpu", torch.uint8).permute(0, 2, 3, 1).numpy()
        boxes = torch.stack(d.crop, 1).long().tolist()
        enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
        out = []
        for i, (left, top, w, h) in enumerate(boxes):
            im = Image.fromarray(planes[i]).crop((left, top, left + w, top + h))
            if w != side:
                im = im.resize((side, h), Image.BILINEAR)
            if h != side:
                im = im.resize((side, side), Image.BILINEAR)
            if self.color_jitter:
                for op in d.order[i].tolist():
                    im = enhancers[op](im).enhance(float(d.factors[op, i]))
            out.append(torch.from_numpy(np.array(im)))
        return torch.stack(out).permute(0, 3, 1, 2).to(x.device, torch.float32)

    def _tensor_pixels(self, x: torch.Tensor, d: ViewDraws) -> torch.Tensor:
        """The same 8-bit steps as `_pil_pixels`, batched on the images' device (`pil_ops`)."""
        dev = x.device
        if self.jpeg:
            x = jpeg_noise(x, d.jpeg_z.to(dev, non_blocking=True), d.jpeg_quality, self.backend(dev),
                           self.canvas_step)
        b, _, height, width = x.shape
        left, top, w, h = (v.to(dev, non_blocking=True) for v in d.crop)
        side = self.out_size + 2 * self.border
        n, zeros = torch.full((b,), side, device=dev), torch.zeros(b, device=dev)
        x = pil_ops.resample(x, pil_ops.resample_coefficients(height, zeros, h, n, side, offset=top),
                             pil_ops.resample_coefficients(width, zeros, w, n, side, offset=left))
        if not self.color_jitter:
            return x
        factors, order = d.factors.to(dev, non_blocking=True), d.order.to(dev, non_blocking=True)
        ops = (pil_ops.adjust_brightness, pil_ops.adjust_contrast, pil_ops.adjust_saturation)
        for step in range(3):  # every op on every image, then a select: no host sync on a GPU
            which = order[:, step].reshape(b, 1, 1, 1)
            candidates = [op(x, f) for op, f in zip(ops, factors)]
            x = torch.where(which == 0, candidates[0], torch.where(which == 1, candidates[1], candidates[2]))
        return x

    def _lighting(self, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """PcaAug: add eigvec @ (alpha * eigval) per image, as the official
        ``(eigvec * alpha.expand(3, 3) * eigval.expand(3, 3)).sum(1)``; no clamp."""
        alpha = alpha.to(device=x.device, dtype=x.dtype, non_blocking=True)
        rgb = (self.eigvec.to(x) * alpha[:, None, :] * self.eigval.to(x)).sum(-1)  # (B, 3)
        return x + rgb[:, :, None, None]
