"""A batched JPEG round trip in plain torch: baseline JPEG as libjpeg codes it, for augmentation.

    coded = jpeg_round_trip(images_n3hw, quality_n)   # [0, 1] float in and out, same shape

What libjpeg (PIL's codec, the official code's JPEGNoise) does at quality q, per image, all on
the images' device and without gradients: 8-bit RGB -> JFIF YCbCr, 4:2:0 chroma (2 x 2 means),
8 x 8 block DCT-II, quantisation by the Annex K tables scaled by q (IJG scaling, baseline
clamp to 1..255), dequantisation, inverse DCT, 8-bit samples, "fancy" (triangle) chroma
upsampling, RGB. Sides that are not multiples of 16 are replicate-padded to whole 16 x 16
macroblocks, as libjpeg extends edges, and cropped back.

Differences from libjpeg are rounding-level (float DCT instead of its integer islow DCT,
round-half-even, float colour conversion): mean 0.1-0.8 / 255 on smooth images, 1-2 / 255 on
noise, where a coefficient that rounds the other way at low quality moves a few pixels by more
(tests/test_jpeg.py compares it with PIL; kornia's codec is 2-4x further from it).
It replaces kornia's differentiable codec on a GPU, whose hundreds of small kernels per call
made JPEG noise three quarters of the views' cost (benchmarks/README.md): here a call is a
few dozen kernels over the whole batch, and each image's quality is a row of its own tables.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

# ITU-T T.81 Annex K, tables K.1 (luminance) and K.2 (chrominance), row-major 8 x 8.
LUMA_TABLE = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
)
CHROMA_TABLE = (
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
)
# JFIF full-range conversions (rows: output channel).
RGB_TO_YCBCR = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))
YCBCR_TO_RGB = ((1.0, 0.0, 1.402), (1.0, -0.344136, -0.714136), (1.0, 1.772, 0.0))


def quant_tables(quality: torch.Tensor, base: tuple[int, ...] | torch.Tensor) -> torch.Tensor:
    """IJG quality scaling (jpeg_quality_scaling + jpeg_add_quant_table, force_baseline):
    quality (N,) in 1..100 -> (N, 8, 8) float64 tables in 1..255."""
    q = quality.to(torch.float64).clamp(1, 100)
    scale = torch.where(q < 50, torch.floor(5000 / q), 200 - 2 * q)  # percent
    table = torch.as_tensor(base, dtype=torch.float64, device=quality.device).reshape(1, 8, 8)
    return torch.floor((table * scale.reshape(-1, 1, 1) + 50) / 100).clamp(1, 255)


def dct_matrix(device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The orthonormal 8-point DCT-II matrix D (8, 8): D @ block @ D.T is JPEG's FDCT."""
    k = torch.arange(8, dtype=torch.float64)
    d = torch.cos((2 * k[None, :] + 1) * k[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    d[0] /= math.sqrt(2)
    return d.to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=8)
def _constants(device: torch.device) -> dict[str, torch.Tensor]:
    """The codec's constant tensors, made once per device: a copy from the host to a GPU made on
    every call would wait for all the work queued before it."""
    d = dct_matrix(dtype=torch.float64)
    consts = {"to_ycc": torch.tensor(RGB_TO_YCBCR), "to_rgb": torch.tensor(YCBCR_TO_RGB),
              "basis": torch.kron(d, d).float(),  # (64, 64): the 2-D DCT, row u*8+v, column x*8+y
              "luma": torch.tensor(LUMA_TABLE, dtype=torch.float64),
              "chroma": torch.tensor(CHROMA_TABLE, dtype=torch.float64)}
    return {k: v.to(device) for k, v in consts.items()}


def _code_planes(planes: torch.Tensor, tables: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Level-shifted samples (N, C, H, W), H and W multiples of 8, tables (N, 8, 8) -> decoded
    8-bit samples (N, C, H, W): DCT, quantise, dequantise, inverse DCT, round and clamp.

    The 2-D DCT of a block is one (64, 64) matrix, `basis` = kron(D, D), so each transform is one
    GEMM over all blocks of the batch rather than many tiny 8 x 8 products.
    """
    n, c, h, w = planes.shape
    blocks = planes.reshape(n, c, h // 8, 8, w // 8, 8).permute(0, 1, 2, 4, 3, 5).reshape(n, -1, 64)
    table = tables.to(planes.dtype).reshape(n, 1, 64)
    coef = torch.round((blocks @ basis.T) / table) * table  # (N, C*H/8*W/8, 64)
    back = (coef @ basis).reshape(n, c, h // 8, w // 8, 8, 8).permute(0, 1, 2, 4, 3, 5).reshape(n, c, h, w)
    return back.add(128).round_().clamp_(0, 255)


def replicate_beyond(planes: torch.Tensor, limit: torch.Tensor, limit_cols: torch.Tensor | None = None,
                     ) -> torch.Tensor:
    """(N, C, h, w) planes with the rows from limit_n on and the columns from limit_cols_n on (default
    limit_n) replaced by the last one before them: an edge-replicated image in a larger canvas."""
    n, c, h, w = planes.shape
    limit_cols = limit if limit_cols is None else limit_cols
    rows = torch.minimum(torch.arange(h, device=planes.device)[None], limit[:, None] - 1)  # (N, h)
    cols = torch.minimum(torch.arange(w, device=planes.device)[None], limit_cols[:, None] - 1)  # (N, w)
    planes = planes.gather(2, rows[:, None, :, None].expand(n, c, h, w))
    return planes.gather(3, cols[:, None, None, :].expand(n, c, h, w))


@torch.no_grad()
def jpeg_round_trip(images: torch.Tensor, quality: torch.Tensor, sides: torch.Tensor | None = None) -> torch.Tensor:
    """float (N, 3, H, W) in [0, 1], quality (N,) 1..100 -> float (N, 3, H, W) in [0, 1], each image
    coded and decoded at its own quality (4:2:0, as PIL saves RGB by default).

    The decoded chroma ends at the image's own edge, ceil(H / 2) x ceil(W / 2) samples, as libjpeg's
    upsampler ends a component at its width, not at the padded macroblocks. sides (N,): each canvas
    holds a square image of that side in its top-left corner, edge-replicated beyond it, which then
    codes as if it were alone."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
    if quality.shape != images.shape[:1]:
        raise ValueError(f"quality must be (N,) = ({images.shape[0]},), got {tuple(quality.shape)}")
    height, width = images.shape[-2:]
    dev, dtype = images.device, torch.float32
    pad_h, pad_w = -height % 16, -width % 16
    rgb = images.to(dtype).clamp(0, 1).mul(255).round()
    if pad_h or pad_w:
        rgb = F.pad(rgb, (0, pad_w, 0, pad_h), mode="replicate")
    consts = _constants(dev)
    ycc = torch.einsum("kc,nchw->nkhw", consts["to_ycc"], rgb)  # (N, 3, H16, W16); Cb, Cr centred on 0
    luma = ycc[:, :1].round().clamp(0, 255) - 128
    chroma = F.avg_pool2d(ycc[:, 1:].round(), 2).round().clamp(-128, 127)  # (N, 2, H16/2, W16/2)
    quality = quality.to(dev, non_blocking=True)
    luma = _code_planes(luma, quant_tables(quality, consts["luma"]), consts["basis"])  # 0..255
    chroma = _code_planes(chroma, quant_tables(quality, consts["chroma"]), consts["basis"]) - 128  # centred
    if sides is None:
        n = images.shape[0]
        limits = (torch.full((n,), (height + 1) // 2, device=dev), torch.full((n,), (width + 1) // 2, device=dev))
    else:
        limits = ((sides.to(dev) + 1) // 2,) * 2
    chroma = replicate_beyond(chroma, *limits)
    # libjpeg's h2v2 fancy upsampling: 3/4 nearer + 1/4 farther sample per axis, edges replicated.
    chroma = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False).round_()  # 8-bit
    out = torch.einsum("kc,nchw->nkhw", consts["to_rgb"], torch.cat((luma, chroma), 1))
    out = out.round_().clamp_(0, 255)[..., :height, :width]
    return out.div_(255).to(images.dtype)
