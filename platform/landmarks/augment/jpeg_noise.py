"""The official JPEGNoise on a batch: rescale, JPEG at a random quality, rescale back, in 8 bits.

contrast-landmark ``data_loaders_face.py`` ``JPEGNoise`` on a W x H PIL image:

    rW = max(int(0.8 W), int(W (1 + 0.5 z)))      z ~ N(0, 1), in float32; uncapped
    im = im.resize((rW, rW)); im = JPEG(im, quality 30..98); im = im.resize((W, H))

`jpeg_noise` computes that for every image of a batch with its own rW and quality: the two
resizes are Pillow's bilinear resample (`pil_ops`, exact), and the JPEG round trip is libjpeg
itself through PIL ("pil", exact) or a batched codec on the images' device ("torch":
augment/jpeg.py; "kornia": kornia's differentiable codec). Images are grouped by canvases whose
sides are multiples of `canvas_step`: an image of side rW sits in the top-left of its canvas, the
batched codecs see it edge-replicated beyond rW (as libjpeg extends edges to whole blocks; the
torch codec also ends its chroma at the image's own edge, as libjpeg's upsampler does), and the
resize back reads only its rW x rW pixels. So each image comes out as if processed alone (kornia's
codec: up to its chroma at the right and bottom edges).
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from . import pil_ops
from .jpeg import jpeg_round_trip, replicate_beyond

JPEG_BACKENDS = ("auto", "torch", "pil", "kornia")
# Canvas sides are multiples of this (torch codec, H100: 32 was the fastest of 32..320, benchmarks/views.py).
CANVAS_STEP = 32


def rescaled_sides(width: int, z: torch.Tensor) -> torch.Tensor:
    """The official rW per image: max(int(0.8 W), int(W (1 + 0.5 z))), z (B,) float32 -> (B,) int64.
    The product is float32 and int() truncates toward zero, as ``int(W * (1 + 0.5 * torch.randn([])))``."""
    scaled = torch.trunc(width * (1.0 + 0.5 * z.to(torch.float32)))
    return torch.clamp(scaled.to(torch.int64), min=int(0.8 * width))


def _pil_codec(x: torch.Tensor, quality: torch.Tensor, sides: list[int]) -> torch.Tensor:
    """libjpeg through PIL, image by image, on the rW x rW corner of each canvas (8-bit values in and out)."""
    out = x.clone()
    planes = x.detach().to("cpu", torch.uint8)
    for i, (side, q) in enumerate(zip(sides, quality.tolist())):
        buf = io.BytesIO()
        Image.fromarray(planes[i, :, :side, :side].permute(1, 2, 0).numpy()).save(buf, format="JPEG",
                                                                                    quality=int(q))
        decoded = np.array(Image.open(buf).convert("RGB"))
        out[i, :, :side, :side] = torch.from_numpy(decoded).permute(2, 0, 1).to(out)
    return out


def _pil_per_image(x: torch.Tensor, sides: list[int], quality: list[int]) -> torch.Tensor:
    """The whole JPEGNoise in PIL, image by image (square images: Pillow runs the horizontal pass first
    for square-to-square resizes, as Pillow 8.4 always does, so its resizes are the official ones)."""
    out = torch.empty_like(x)
    planes = x.detach().to("cpu", torch.uint8).permute(0, 2, 3, 1).numpy()
    size = x.shape[-1]
    for i, (side, q) in enumerate(zip(sides, quality)):
        buf = io.BytesIO()
        Image.fromarray(planes[i]).resize((side, side), Image.BILINEAR).save(buf, format="JPEG", quality=int(q))
        back = Image.open(buf).convert("RGB").resize((size, size), Image.BILINEAR)
        out[i] = torch.from_numpy(np.array(back)).permute(2, 0, 1).to(out)
    return out


def _batched_codec(codec: Callable, x: torch.Tensor, quality: torch.Tensor, sides: torch.Tensor) -> torch.Tensor:
    """A batched codec of [0, 1] images over whole canvases, each image edge-replicated beyond its side."""
    padded = replicate_beyond(x, sides)
    if codec is jpeg_round_trip:
        coded = codec(padded / 255.0, quality.to(x.dtype), sides)
    else:
        coded = codec(padded / 255.0, quality.to(x.dtype))
    return torch.round(coded.clamp(0, 1) * 255.0)


def jpeg_noise(x: torch.Tensor, z: torch.Tensor, quality: torch.Tensor, backend: str,
               canvas_step: int = CANVAS_STEP) -> torch.Tensor:
    """JPEGNoise of 8-bit images x (B, 3, H, W) float32 0..255 with draws z (B,) and quality (B,)
    -> (B, 3, H, W) float32 0..255. backend: "pil", "torch", "kornia" (or "auto": PIL on the CPU)."""
    if backend not in JPEG_BACKENDS:
        raise ValueError(f"jpeg backend must be one of {', '.join(JPEG_BACKENDS)}, got {backend!r}")
    if backend == "auto":
        backend = "pil" if x.device.type == "cpu" else "torch"
    _, _, height, width = x.shape
    dev = x.device
    sides = rescaled_sides(width, z).to(dev)
    if backend == "pil" and height == width:
        return _pil_per_image(x, sides.tolist(), quality.tolist())
    canvases = -(-sides // canvas_step) * canvas_step
    quality = quality.to(dev)
    out = torch.empty_like(x)
    for canvas in torch.unique(canvases).tolist():
        idx = (canvases == canvas).nonzero().squeeze(1)
        n, side = len(idx), sides[idx]
        zeros = torch.zeros(n, device=dev)
        up = pil_ops.resample(  # the whole W x H image to rW x rW, in the corner of a canvas x canvas
            x[idx],
            pil_ops.resample_coefficients(height, zeros, torch.full((n,), height, device=dev), side, canvas),
            pil_ops.resample_coefficients(width, zeros, torch.full((n,), width, device=dev), side, canvas))
        if backend == "pil":
            coded = _pil_codec(up, quality[idx], side.tolist())
        else:
            codec = jpeg_round_trip if backend == "torch" else _kornia_codec()
            coded = _batched_codec(codec, up, quality[idx], side)
        out[idx] = pil_ops.resample(  # rW x rW back to W x H
            coded,
            pil_ops.resample_coefficients(canvas, zeros, side, torch.full((n,), height, device=dev), height),
            pil_ops.resample_coefficients(canvas, zeros, side, torch.full((n,), width, device=dev), width))
    return out


def _kornia_codec() -> Callable:
    from kornia import enhance

    if not hasattr(enhance, "jpeg_codec_differentiable"):
        raise ValueError("jpeg backend 'kornia' needs kornia>=0.7.1 (enhance.jpeg_codec_differentiable)")
    return enhance.jpeg_codec_differentiable
