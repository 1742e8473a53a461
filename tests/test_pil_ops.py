"""Pillow's 8-bit arithmetic as tensor ops (landmarks.augment.pil_ops), compared with Pillow itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance

from landmarks.augment import pil_ops


def _pil_two_pass(im: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Pillow 8.4's bilinear resize (the official environment): the horizontal pass, then the vertical one."""
    if im.size[0] != size[0]:
        im = im.resize((size[0], im.size[1]), Image.BILINEAR)
    if im.size[1] != size[1]:
        im = im.resize(size, Image.BILINEAR)
    return im


def _cases(n: int, seed: int):
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = (int(v) for v in rng.integers(3, 60, 2))
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        if i % 2:  # smooth content as well as noise
            image = np.clip(np.cumsum(rng.integers(-20, 21, (h, w, 3)), 1) + 128, 0, 255).astype(np.uint8)
        yield rng, image


def test_resample_of_a_crop_is_pillows_pixel_for_pixel():
    """Random images, crop boxes and output sizes (up- and downscaling, PIL's edge renormalisation):
    the two 8-bit passes are Pillow's to the last bit."""
    for rng, image in _cases(120, 0):
        h, w = image.shape[:2]
        cw, ch = int(rng.integers(1, w + 1)), int(rng.integers(1, h + 1))
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        ow, oh = (int(v) for v in rng.integers(1, 90, 2))
        crop = Image.fromarray(image).crop((left, top, left + cw, top + ch))
        expected = np.asarray(_pil_two_pass(crop, (ow, oh)))
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
        zero = torch.zeros(1)
        coef_w = pil_ops.resample_coefficients(w, zero, torch.tensor([float(cw)]), torch.tensor([ow]), ow,
                                               offset=torch.tensor([float(left)]))
        coef_h = pil_ops.resample_coefficients(h, zero, torch.tensor([float(ch)]), torch.tensor([oh]), oh,
                                               offset=torch.tensor([float(top)]))
        got = pil_ops.resample(x, coef_h, coef_w)[0].permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(got, expected, err_msg=f"{w}x{h} box {(left, top, cw, ch)} -> {ow}x{oh}")


def test_resample_pads_outputs_per_image():
    """A batch with one size per image: rows past an image's size are zero, the rest its own resize."""
    image = np.random.default_rng(1).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float().expand(3, -1, -1, -1)
    sizes, zeros, full = torch.tensor([7, 30, 13]), torch.zeros(3), torch.full((3,), 20.0)
    coef = pil_ops.resample_coefficients(20, zeros, full, sizes, 30)
    out = pil_ops.resample(x, coef, coef)
    for i, s in enumerate(sizes.tolist()):
        expected = np.asarray(_pil_two_pass(Image.fromarray(image), (s, s)))
        np.testing.assert_array_equal(out[i, :, :s, :s].permute(1, 2, 0).numpy(), expected)
        assert out[i, :, s:].abs().sum() == 0 and out[i, :, :, s:].abs().sum() == 0
    np.testing.assert_array_equal(pil_ops.resize(x[:1], 9)[0].permute(1, 2, 0).numpy(),
                                  np.asarray(_pil_two_pass(Image.fromarray(image), (9, 9))))


@pytest.mark.parametrize("name", ["Brightness", "Contrast", "Color"])
def test_enhance_is_pillows_image_enhance(name):
    ours = {"Brightness": pil_ops.adjust_brightness, "Contrast": pil_ops.adjust_contrast,
            "Color": pil_ops.adjust_saturation}[name]
    for rng, image in _cases(60, 2):
        factor = float(rng.uniform(0.0, 2.0))
        expected = np.asarray(getattr(ImageEnhance, name)(Image.fromarray(image)).enhance(factor))
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
        got = ours(x, torch.tensor([factor], dtype=torch.float64))[0].permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(got, expected, err_msg=f"{name} {factor}")


def test_gray_is_pillows_rgb_to_l():
    image = np.random.default_rng(3).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    got = pil_ops.gray(torch.from_numpy(image).permute(2, 0, 1)[None].float())[0, 0].numpy()
    np.testing.assert_array_equal(got, np.asarray(Image.fromarray(image).convert("L")))
