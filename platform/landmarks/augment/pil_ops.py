"""PIL's 8-bit image arithmetic as batched tensor ops: what the official augmentation computes.

The official MoCo views (contrast-landmark ``data_loaders_face.py``) run on PIL images: JPEGNoise's
two ``TF.resize`` calls and RandomResizedCrop's ``resized_crop`` are Pillow's bilinear resample, and
ColorJitter is ``ImageEnhance`` (Brightness, Contrast, Color), each rounding to 8 bits. These
functions compute the same 8-bit numbers on a batch, on any device, each image with its own box,
size and factor:

    taps = resample_coefficients(in_size=136, in0, in1, out_size, out_max)   # per image and output pixel
    y = resample(x, taps_h, taps_w)       # x: (B, C, H, W) 0..255 -> (B, C, out_h, out_w) 0..255
    y = blend(degenerate, x, factor)      # Image.blend: float32 mix, truncated and clipped to 0..255

Pillow's resample (``libImaging/Resample.c``): per output pixel xx of a box [in0, in1) resized to n
pixels, scale = (in1 - in0) / n, support = max(scale, 1) (the triangle widened when reducing, which
is PIL's antialiasing), centre = in0 + (xx + 0.5) scale, taps j in [trunc(centre - support + 0.5),
trunc(centre + support + 0.5)) clipped to the input, weights triangle((j - centre + 0.5) / max(scale,
1)) normalised to sum 1 over the taps (so edge pixels renormalise instead of reading zeros), then as
22-bit fixed point, trunc(0.5 + w 2^22). A pass is sum_j pixel_j k_j + 2^21, shifted right by 22 and
clipped to 0..255; the horizontal pass runs first and is rounded to 8 bits before the vertical one.
The sums are integers below 2^31: int32 arithmetic, a gather per tap, exact on CPU and GPU.

Blend (``Blend.c``): out = in1 + alpha (in2 - in1) in float32, alpha rounded to float32, truncated
to an integer and clipped to 0..255. Contrast blends with the image's mean gray level rounded to an
integer, Color with its gray image; gray is Pillow's RGB -> L, (19595 R + 38470 G + 7471 B + 2^15) >> 16.
tests/test_pil_ops.py compares every function with Pillow itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PRECISION_BITS = 22  # Pillow Resample.c: 32 - 8 (bits of a sample) - 2 (headroom)
_ONE = float(1 << PRECISION_BITS)


@dataclass(frozen=True)
class Taps:
    """One axis of a resample, per image and output pixel: input `index` and fixed-point `weight` of each
    tap, (B, O, T) int64 / int32 (T = Pillow's ksize; unused taps have weight 0)."""

    index: torch.Tensor
    weight: torch.Tensor


def resample_coefficients(in_size: int, in0: torch.Tensor, in1: torch.Tensor, out_size: torch.Tensor,
                          out_max: int, offset: torch.Tensor | None = None) -> Taps:
    """Pillow's bilinear fixed-point coefficients of one axis, per image, as `Taps` (B, out_max, T).

    Image b resizes the box [in0_b, in1_b) of a `in1_b - in0_b` pixel wide image (a crop) to
    out_size_b pixels; `offset_b` (default 0) is where that crop starts in the `in_size` axis.
    Outputs from out_size_b to out_max get zero weights (outputs padded to one size).
    in0, in1, out_size, offset: (B,).
    """
    dev = in0.device
    f64 = torch.float64
    in0, in1 = in0.to(f64), in1.to(f64)
    width = in1 - in0  # the crop's pixels: taps are clipped to [0, width)
    n = out_size.to(f64)
    offset = torch.zeros_like(in0) if offset is None else offset.to(f64)
    scale = (width / n)[:, None]  # (B, 1)
    filterscale = scale.clamp(min=1.0)
    support = filterscale  # the triangle's support is 1
    xx = torch.arange(out_max, device=dev, dtype=f64)[None]  # (1, O)
    center = in0[:, None] + (xx + 0.5) * scale  # (B, O)
    xmin = torch.trunc(center - support + 0.5).clamp(min=0)
    xmax = torch.minimum(torch.trunc(center + support + 0.5), width[:, None])
    taps = int(torch.ceil(support.max()).item()) * 2 + 1 if len(in0) else 1  # Pillow's ksize bound
    j = xmin[..., None] + torch.arange(taps, device=dev, dtype=f64)  # (B, O, T): input pixel of each tap
    valid = (j < xmax[..., None]) & (xx[..., None] < n[:, None, None])
    ss = 1.0 / filterscale[..., None]  # Pillow multiplies by the reciprocal
    w = (1.0 - (((j - center[..., None]) + 0.5) * ss).abs()).clamp(min=0.0)
    w = torch.where(valid, w, torch.zeros_like(w))
    total = torch.zeros_like(center)
    for k in range(taps):  # summed tap by tap, in Pillow's order, so the double rounds as its does
        total = total + w[..., k]
    w = torch.where(total[..., None] != 0, w / total[..., None], w)
    fixed = torch.floor(0.5 + w * _ONE)  # weights are >= 0: (int)(0.5 + k 2^22)
    index = (j + offset[:, None, None]).clamp(0, in_size - 1).long()
    return Taps(index, fixed.to(torch.int32))


def _clip8(acc: torch.Tensor) -> torch.Tensor:
    """Pillow's clip8 of a fixed-point sum (already + 2^21): >> 22, clipped to 0..255."""
    return torch.bitwise_right_shift(acc, PRECISION_BITS).clamp_(0, 255)


def _pass(x: torch.Tensor, taps: Taps, dim: int) -> torch.Tensor:
    """One 8-bit pass along `dim` (2: rows, 3: columns) of int32 images (B, C, H, W)."""
    b = x.shape[0]
    out_len, t_count = taps.index.shape[1:]
    shape = list(x.shape)
    shape[dim] = out_len
    view = [b, 1, out_len, 1] if dim == 2 else [b, 1, 1, out_len]
    acc = torch.full(shape, 1 << (PRECISION_BITS - 1), dtype=torch.int32, device=x.device)
    for t in range(t_count):  # a tap at a time: T gathers instead of a dense (O x in) product
        index = taps.index[..., t].reshape(view).expand(shape)
        acc += x.gather(dim, index) * taps.weight[..., t].reshape(view)
    return _clip8(acc)


def resample(x: torch.Tensor, taps_h: Taps | None, taps_w: Taps | None) -> torch.Tensor:
    """Pillow's two-pass resample of 8-bit images: x (B, C, H, W) with values 0..255 ->
    (B, C, O_h, O_w) float32 0..255, the horizontal pass first (Pillow 8.4, the official environment;
    Pillow 13 runs the vertical one first when the height shrinks much more than the width). taps_w,
    taps_h from `resample_coefficients`; None skips that pass. Integer sums below 2^31: exact."""
    y = x.to(torch.int32)
    if taps_w is not None:
        y = _pass(y, taps_w, 3)
    if taps_h is not None:
        y = _pass(y, taps_h, 2)
    return y.to(torch.float32)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Pillow's ``Image.resize((size, size), BILINEAR)`` of every image of x (B, C, H, W), 0..255."""
    b, _, h, w = x.shape
    dev, zeros = x.device, torch.zeros(b, device=x.device)
    n = torch.full((b,), size, device=dev)
    taps_w = None if w == size else resample_coefficients(w, zeros, torch.full((b,), w, device=dev), n, size)
    taps_h = None if h == size else resample_coefficients(h, zeros, torch.full((b,), h, device=dev), n, size)
    return resample(x, taps_h, taps_w)


def to_float32_alpha(factor: torch.Tensor) -> torch.Tensor:
    """Image.blend's ``float alpha``: a Python float rounded to float32."""
    return factor.to(torch.float32)


def blend(degenerate: torch.Tensor, image: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``Image.blend(degenerate, image, factor)`` on 8-bit values: (B, C, H, W) float32 0..255, factor (B,).

    in1 + alpha (in2 - in1) in float32 (a multiply, then an add), truncated toward zero; factors
    outside [0, 1] extrapolate and are clipped to 0..255 (Pillow clips before truncating: same result).
    """
    alpha = to_float32_alpha(factor).reshape(-1, 1, 1, 1)
    d = degenerate.to(torch.float32)
    out = d + alpha * (image.to(torch.float32) - d)
    return torch.trunc(out.clamp(0.0, 255.0))


def gray(x: torch.Tensor) -> torch.Tensor:
    """Pillow's RGB -> L of (B, 3, H, W) 8-bit values: (B, 1, H, W), (19595 R + 38470 G + 7471 B + 2^15) >> 16."""
    r, g, b = x.to(torch.int32).unbind(1)
    acc = r * 19595 + g * 38470 + b * 7471 + 32768  # < 2^24
    return torch.bitwise_right_shift(acc, 16).unsqueeze(1).to(torch.float32)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``ImageEnhance.Brightness(img).enhance(f)``: a blend with black."""
    return blend(torch.zeros_like(x), x, factor)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``ImageEnhance.Contrast(img).enhance(f)``: a blend with the mean gray level, int(mean + 0.5)."""
    mean = gray(x).to(torch.float64).mean((1, 2, 3), keepdim=True)  # sum of integers / count, as ImageStat
    level = torch.floor(mean + 0.5).to(torch.float32)
    return blend(level.expand_as(x), x, factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``ImageEnhance.Color(img).enhance(f)``: a blend with the image's gray version."""
    return blend(gray(x).expand_as(x), x, factor)
