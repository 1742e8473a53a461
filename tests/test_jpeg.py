"""The torch JPEG round trip (landmarks.augment.jpeg) against libjpeg through PIL."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from kornia import enhance
from PIL import Image

from landmarks.augment import jpeg_round_trip
from landmarks.augment.jpeg import CHROMA_TABLE, LUMA_TABLE, dct_matrix, quant_tables


def _jpeg_pil(x_bchw: torch.Tensor, quality_b: torch.Tensor) -> torch.Tensor:
    """libjpeg itself (PIL), image by image: the reference."""
    out = []
    for img, q in zip(x_bchw.clamp(0, 1).mul(255).round().to(torch.uint8), quality_b.tolist()):
        buf = io.BytesIO()
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=int(q))
        out.append(torch.from_numpy(np.array(Image.open(buf).convert("RGB"))).permute(2, 0, 1))
    return torch.stack(out).float() / 255.0


def _images(side: int = 72) -> dict[str, torch.Tensor]:
    """(1, 3, side, side) test images in [0, 1]: a smooth ramp, a textured pattern, noise."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, side), torch.linspace(0, 1, side), indexing="ij")
    pattern = torch.sin(xx * 20) * torch.cos(yy * 13) * 0.5 + 0.5
    noise = torch.rand(3, side, side, generator=torch.Generator().manual_seed(0))
    return {"ramp": torch.stack((xx, yy, 0.5 * (xx + yy)))[None], "pattern": torch.stack((pattern, 1 - pattern, xx))[None],
            "noise": noise[None]}


def test_quant_tables_follow_ijg_scaling():
    q = torch.tensor([50, 100, 10, 75, 1])
    luma = quant_tables(q, LUMA_TABLE)
    base = torch.tensor(LUMA_TABLE, dtype=torch.float64).reshape(8, 8)
    assert torch.equal(luma[0], base)  # quality 50 = the Annex K table
    assert torch.equal(luma[1], torch.ones(8, 8))  # quality 100: every step 1
    assert luma[2, 0, 0] == 80 and luma[3, 0, 0] == 8  # 16 x 500 % ; (16 x 50 + 50) // 100
    assert luma[4].max() == 255  # baseline clamp
    assert quant_tables(q, CHROMA_TABLE)[0, 7, 7] == 99


def test_dct_matrix_is_orthonormal_and_jpeg_scaled():
    d = dct_matrix(dtype=torch.float64)
    torch.testing.assert_close(d @ d.T, torch.eye(8, dtype=torch.float64))
    block = torch.full((8, 8), 5.0, dtype=torch.float64)
    coef = d @ block @ d.T
    assert coef[0, 0].item() == pytest.approx(40.0)  # JPEG's DC of a flat block is 8 x its level
    assert coef.abs().sum().item() == pytest.approx(40.0)


@pytest.mark.parametrize("quality", [30, 60, 95])
def test_matches_libjpeg_closer_than_kornia(quality):
    for name, img in _images().items():
        q = torch.tensor([float(quality)])
        pil = _jpeg_pil(img, q)
        ours = jpeg_round_trip(img, q)
        kornia = enhance.jpeg_codec_differentiable(img, q)
        ours_err = (ours - pil).abs().mean().item() * 255
        assert ours_err < (3.0 if name == "noise" else 1.0), (name, ours_err)
        assert ours_err < (kornia - pil).abs().mean().item() * 255, name
        assert (pil - img).abs().mean().item() * 255 > 2 * ours_err or quality == 95  # it compresses


def test_each_image_coded_at_its_own_quality_and_any_size():
    img = torch.cat(list(_images(40).values()))  # 40: not a multiple of 16, padded and cropped back
    quality = torch.tensor([30, 70, 95])
    both = jpeg_round_trip(img, quality)
    assert both.shape == img.shape and both.dtype == img.dtype and 0 <= both.min() and both.max() <= 1
    for i in range(3):
        torch.testing.assert_close(both[i:i + 1], jpeg_round_trip(img[i:i + 1], quality[i:i + 1]), atol=0, rtol=0)
    low, high = jpeg_round_trip(img, torch.full((3,), 30)), jpeg_round_trip(img, torch.full((3,), 95))
    assert (low - img).abs().mean() > (high - img).abs().mean()  # lower quality, more loss


def test_flat_grey_survives_unchanged():
    grey = torch.full((2, 3, 24, 40), 128 / 255)
    torch.testing.assert_close(jpeg_round_trip(grey, torch.tensor([30, 90])), grey, atol=0, rtol=0)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="quality"):
        jpeg_round_trip(torch.rand(2, 3, 16, 16), torch.tensor([50]))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        jpeg_round_trip(torch.rand(2, 1, 16, 16), torch.tensor([50, 60]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    img = torch.rand(8, 3, 136, 136, generator=torch.Generator().manual_seed(1))
    quality = torch.randint(30, 99, (8,), generator=torch.Generator().manual_seed(2))
    cpu = jpeg_round_trip(img, quality)
    cuda = jpeg_round_trip(img.cuda(), quality.cuda()).cpu()
    assert (cuda - cpu).abs().mean().item() * 255 < 0.1  # float sums in another order: rare rounding flips


def test_an_image_in_a_larger_canvas_codes_as_if_alone():
    """With `sides`, an edge-replicated image in a bigger canvas (the batched JPEG noise) decodes to what
    it decodes to alone, and its right and bottom edges are nearer libjpeg's than without."""
    img = _images(40)["pattern"]  # 40: not a multiple of 16
    q = torch.tensor([50.0])
    alone = jpeg_round_trip(img, q)
    canvas = torch.nn.functional.pad(img, (0, 24, 0, 24), mode="replicate")  # 64 x 64
    inside = jpeg_round_trip(canvas, q, torch.tensor([40]))[..., :40, :40]
    torch.testing.assert_close(inside, alone, atol=1e-6, rtol=0)
    pil = _jpeg_pil(img, q)
    edge = (slice(None), slice(None), slice(32, 40))  # the last partial macroblock's rows
    without = (jpeg_round_trip(canvas, q)[..., :40, :40] - pil)[edge].abs().mean()
    assert (inside - pil)[edge].abs().mean() <= without
