"""MoCo views: shapes, normalisation, seeds, no flips, the lighting noise, the JPEG backends."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance

from landmarks.augment import (
    IMAGENET_PCA_EIGVAL,
    IMAGENET_PCA_EIGVEC,
    MoCoViews,
    border_crop,
    normalize,
    to_float_images,
    to_levels,
)
from landmarks.augment.jpeg_noise import jpeg_noise, rescaled_sides

MEAN = (0.5084, 0.4224, 0.3769)  # CelebA statistics of the official code
STD = (0.2599, 0.2371, 0.2323)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _plain(**kw) -> MoCoViews:
    """Views with only the crop left on (and crop_min_scale=1: the whole image)."""
    args = {"mean": MEAN, "std": STD, "crop_min_scale": 1.0, "color_jitter": 0.0, "jpeg": False, "lighting_std": 0.0}
    return MoCoViews(32, **{**args, **kw})


def test_to_float_images_accepts_both_layouts():
    hwc = torch.randint(0, 256, (2, 5, 7, 3), dtype=torch.uint8, generator=_gen(0))
    chw = hwc.permute(0, 3, 1, 2).contiguous()
    a, b = to_float_images(hwc), to_float_images(chw)
    assert a.shape == b.shape == (2, 3, 5, 7) and a.dtype == torch.float32
    assert torch.equal(a, b) and a.min() >= 0 and a.max() <= 1
    torch.testing.assert_close(a * 255, chw.float())
    assert a.is_contiguous(memory_format=torch.channels_last)  # no layout copy of a (B, H, W, 3) batch
    floats = torch.rand(2, 3, 4, 4)
    assert to_float_images(floats) is floats
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        to_float_images(torch.zeros(2, 4, 4, 4, dtype=torch.uint8))


def test_normalize_and_border_crop():
    x = torch.rand(2, 3, 136, 136)
    out = normalize(x, MEAN, STD)
    torch.testing.assert_close(out[:, 1], (x[:, 1] - MEAN[1]) / STD[1])
    with pytest.raises(ValueError, match="3 entries"):
        normalize(x, (0.5, 0.5), STD)
    cropped = border_crop(x, 20)
    assert cropped.shape == (2, 3, 96, 96)
    assert torch.equal(cropped, x[:, :, 20:116, 20:116])
    assert border_crop(x, 0) is x
    assert border_crop(torch.zeros(182, 182), 27).shape == (128, 128)
    with pytest.raises(ValueError, match="border 68"):
        border_crop(x, 68)


def test_views_shape_dtype_and_normalisation():
    images = torch.full((4, 40, 40, 3), 128, dtype=torch.uint8)
    q, k = _plain()(images, _gen(0))
    assert q.shape == k.shape == (4, 3, 32, 32) and q.dtype == torch.float32
    expected = (128 / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
    torch.testing.assert_close(q.mean((0, 2, 3)), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(q, k)
    bordered = _plain(border=4)(images, _gen(0))[0]
    assert bordered.shape == (4, 3, 32, 32)  # crops to 40, then loses 4 px a side


def test_views_are_seeded():
    images = torch.randint(0, 256, (3, 40, 40, 3), dtype=torch.uint8, generator=_gen(1))
    views = MoCoViews(32, mean=MEAN, std=STD)
    q1, k1 = views(images, _gen(5))
    q2, k2 = views(images, _gen(5))
    q3, _ = views(images, _gen(6))
    assert torch.equal(q1, q2) and torch.equal(k1, k2)
    assert not torch.equal(q1, q3)
    assert not torch.equal(q1, k1)  # two independent augmentations
    torch.manual_seed(0)
    g1 = views(images)[0]
    torch.manual_seed(0)
    assert torch.equal(g1, views(images)[0])


def test_no_flips_a_left_to_right_ramp_stays_one():
    """Crops, jitter, lighting and JPEG keep a ramp rising left to right; a flip would reverse it."""
    ramp = torch.linspace(0.1, 0.9, 40).expand(16, 3, 40, 40)  # gray, brighter to the right
    views = MoCoViews(32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    for seed in range(2):
        for view in views(ramp, _gen(seed)):
            left, right = view[..., :, :8].mean((1, 2, 3)), view[..., :, -8:].mean((1, 2, 3))
            assert (right > left + 0.1).all(), (left, right)


def test_crop_scale_and_colour_jitter_ranges():
    ramp = torch.linspace(0.0, 1.0, 64).expand(64, 3, 64, 64)
    crops = _plain(crop_min_scale=0.2)(ramp, _gen(2))[0] * STD[0] + MEAN[0]
    span = crops[:, 0, 16, -1] - crops[:, 0, 16, 0]  # the ramp's range the crop kept
    assert span.min() > 0.2 and span.max() > 0.85 and span.min() < 0.7
    gray = torch.full((256, 3, 40, 40), 0.5)
    out = _plain(color_jitter=0.4)(gray, _gen(3))[0]
    value = (out * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None])[:, 0, 0, 0]
    # on a flat gray image only brightness acts: 128 * U(0.6, 1.4), truncated to 8 bits
    assert value.min() >= 0.3 - 1 / 255 and value.max() <= 0.7 + 1 / 255 and value.std() > 0.05


def test_pca_lighting_noise_has_the_alexnet_statistics():
    gray = torch.full((512, 3, 36, 36), 0.5)
    out = _plain(lighting_std=0.1)(gray, _gen(4))[0]
    shift = (out * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]) - 0.5
    assert shift.std((2, 3)).max() < 1e-5  # one colour offset per image
    rgb = shift[:, :, 0, 0].double()  # (B, 3) = eigvec @ (alpha * eigval)
    alpha = torch.linalg.solve(torch.tensor(IMAGENET_PCA_EIGVEC, dtype=torch.float64), rgb.T).T
    alpha = alpha / torch.tensor(IMAGENET_PCA_EIGVAL, dtype=torch.float64)
    assert alpha.mean(0).abs().max() < 0.02
    torch.testing.assert_close(alpha.std(0), torch.full((3,), 0.1, dtype=torch.float64), atol=0.015, rtol=0)


def test_jpeg_backends_agree():
    """The batched codecs stay within a few 8-bit levels of libjpeg (through PIL) on a smooth image."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 48), torch.linspace(0, 1, 48), indexing="ij")
    img = torch.stack((xx, yy, 0.5 * (xx + yy)))[None].expand(2, -1, -1, -1).mul(255).round().contiguous()
    z, quality = torch.tensor([0.0, 0.7]), torch.tensor([40, 90])
    via_pil = jpeg_noise(img, z, quality, "pil")
    assert (via_pil - img).abs().mean() > 0.3  # it did compress
    for backend in ("torch", "kornia"):
        assert (jpeg_noise(img, z, quality, backend) - via_pil).abs().mean() < 3.0, backend
    q, _ = MoCoViews(32, mean=MEAN, std=STD, jpeg_backend="pil")(img.to(torch.uint8), _gen(0))
    assert q.shape == (2, 3, 32, 32) and torch.isfinite(q).all()


def test_official_rescale_rule():
    """rW = max(int(0.8 W), int(W (1 + 0.5 z))): float32, truncated, floor at int(0.8 W), no cap."""
    z = torch.tensor([0.0, -1.0, -3.0, 0.3, 4.0, 0.017])
    expected = [max(int(0.8 * 136), int(136 * (1 + 0.5 * torch.tensor(v)))) for v in z.tolist()]
    assert rescaled_sides(136, z).tolist() == expected == [136, 108, 108, 156, 408, 137]


def test_jpeg_noise_codes_each_image_as_if_alone():
    """Images of several sizes share canvases; with the batched codec each comes out as its own
    one-image call."""
    torch.manual_seed(0)
    x = torch.randint(0, 256, (10, 3, 40, 40)).float()  # noise: the hardest case for block edges
    z = torch.linspace(-1.5, 3.0, 10)
    quality = torch.randint(30, 99, (10,))
    together = jpeg_noise(x, z, quality, "torch", canvas_step=32)
    assert len(set(rescaled_sides(40, z).tolist())) > 5
    for i in range(10):
        alone = jpeg_noise(x[i:i + 1], z[i:i + 1], quality[i:i + 1], "torch", canvas_step=8)
        assert torch.equal(together[i:i + 1], alone), i


def test_batched_jpeg_noise_with_libjpeg_is_the_official_jpeg_noise():
    """Non-square images take the batched resizes in canvases (square ones go image by image through
    PIL): with libjpeg as the codec they give JPEGNoise's pixels, PIL's resizes in Pillow 8.4's order."""
    rng = np.random.default_rng(4)
    images = np.clip(np.cumsum(rng.integers(-30, 31, (6, 30, 42, 3)), 2) + 128, 0, 255).astype(np.uint8)
    z, quality = torch.linspace(-1.0, 2.5, 6), torch.tensor([30, 45, 60, 75, 90, 98])
    ours = jpeg_noise(torch.from_numpy(images).permute(0, 3, 1, 2).float(), z, quality, "pil", canvas_step=16)
    for i in range(6):
        side = max(int(0.8 * 42), int(42 * (1 + 0.5 * z[i])))
        buf = io.BytesIO()
        _pil_resize(Image.fromarray(images[i]), (side, side)).save(buf, format="JPEG", quality=int(quality[i]))
        expected = np.asarray(_pil_resize(Image.open(buf), (42, 30)))
        np.testing.assert_array_equal(ours[i].permute(1, 2, 0).numpy(), expected, err_msg=str(i))


def _pil_resize(im: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Pillow 8.4's bilinear resize (the official environment): the horizontal pass, then the vertical
    one, each rounded to 8 bits (Pillow 13 sometimes runs the vertical pass first)."""
    if im.size[0] != size[0]:
        im = im.resize((size[0], im.size[1]), Image.BILINEAR)
    if im.size[1] != size[1]:
        im = im.resize(size, Image.BILINEAR)
    return im


def _official_views(images: np.ndarray, gen: torch.Generator, out: int, border: int) -> torch.Tensor:
    """contrast-landmark's augmentation chain on PIL images, one image at a time, with MoCoViews'
    random draws replayed from `gen`: JPEGNoise, RandomResizedCrop.get_params + resized_crop,
    ColorJitter (ImageEnhance in the drawn order), ToTensor, PcaAug, Normalize, border crop."""
    b, height, width = images.shape[:3]
    z = torch.randn(b, generator=gen, dtype=torch.float32)
    quality = torch.randint(30, 99, (b,), generator=gen)
    area = height * width * (0.2 + 0.8 * torch.rand((b, 10), generator=gen, dtype=torch.float64))
    log_r = (math.log(3 / 4), math.log(4 / 3))
    aspect = torch.exp(log_r[0] + (log_r[1] - log_r[0]) * torch.rand((b, 10), generator=gen, dtype=torch.float64))
    u = torch.rand(b, 2, generator=gen, dtype=torch.float64)
    factors = 0.6 + 0.8 * torch.rand((3, b), generator=gen, dtype=torch.float64)
    order = torch.rand(b, 3, generator=gen).argsort(1)
    alpha = torch.randn(b, 3, generator=gen, dtype=torch.float32) * 0.1
    eigvec, eigval = torch.tensor(IMAGENET_PCA_EIGVEC), torch.tensor(IMAGENET_PCA_EIGVAL)
    side, views = out + 2 * border, []
    for i in range(b):
        im = Image.fromarray(images[i])
        r_w = max(int(0.8 * width), int(width * (1 + 0.5 * z[i])))
        buf = io.BytesIO()
        _pil_resize(im, (r_w, r_w)).save(buf, format="JPEG", quality=int(quality[i]))
        im = _pil_resize(Image.open(buf), (width, height))
        for t in range(10):
            w = round(math.sqrt(area[i, t].item() * aspect[i, t].item()))
            h = round(math.sqrt(area[i, t].item() / aspect[i, t].item()))
            if 0 < w <= width and 0 < h <= height:
                top, left = int(u[i, 0] * (height - h + 1)), int(u[i, 1] * (width - w + 1))
                break
        else:
            w, h, top, left = width, height, 0, 0
        im = _pil_resize(im.crop((left, top, left + w, top + h)), (side, side))
        for op in order[i].tolist():
            im = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)[op](im).enhance(
                factors[op, i].item())
        x = torch.from_numpy(np.array(im)).permute(2, 0, 1).float().div(255)
        x = x + (eigvec * alpha[i].expand(3, 3) * eigval.expand(3, 3)).sum(1).reshape(3, 1, 1)
        x = (x - torch.tensor(MEAN).reshape(3, 1, 1)) / torch.tensor(STD).reshape(3, 1, 1)
        views.append(x[:, border:side - border, border:side - border])
    return torch.stack(views)


def test_views_are_the_official_pil_chain_pixel_for_pixel():
    rng = np.random.default_rng(0)
    images = np.clip(np.cumsum(rng.integers(-25, 26, (8, 40, 40, 3)), 2) + 128, 0, 255).astype(np.uint8)
    views = MoCoViews(32, mean=MEAN, std=STD, border=4, jpeg_backend="pil")
    ours = views.view(torch.from_numpy(images).permute(0, 3, 1, 2).float(), _gen(3))
    official = _official_views(images, _gen(3), 32, 4)
    torch.testing.assert_close(ours, official, atol=1e-6, rtol=0)
    # the batched codec (the GPU path) differs only by its rounding: under a level on average
    on_device = MoCoViews(32, mean=MEAN, std=STD, border=4, jpeg_backend="torch")
    levels = (on_device.view(torch.from_numpy(images).permute(0, 3, 1, 2).float(), _gen(3)) - official).abs()
    levels = levels * torch.tensor(STD).reshape(1, 3, 1, 1) * 255
    assert 0.1 < levels.mean() < 1.5


def test_batched_pixels_are_the_pil_pixels():
    """The batched crop and jitter (the GPU path, here on the CPU) compute PIL's numbers, pixel for pixel."""
    rng = np.random.default_rng(1)
    for shape in ((6, 40, 40, 3), (6, 36, 44, 3)):
        x = to_levels(torch.from_numpy(rng.integers(0, 256, shape, dtype=np.uint8)))
        views = MoCoViews(32, mean=MEAN, std=STD, border=4, jpeg=False)
        draws = views.draw(6, shape[1], shape[2], _gen(7))
        assert torch.equal(views._tensor_pixels(x, draws), views._pil_pixels(x, draws)), shape


def test_auto_jpeg_backend_is_pil_on_cpu():
    images = torch.randint(0, 256, (4, 40, 40, 3), dtype=torch.uint8)
    auto = MoCoViews(32, mean=MEAN, std=STD, border=4)
    pil = MoCoViews(32, mean=MEAN, std=STD, border=4, jpeg_backend="pil")
    on_device = MoCoViews(32, mean=MEAN, std=STD, border=4, jpeg_backend="torch")
    assert torch.equal(auto(images, _gen(2))[0], pil(images, _gen(2))[0])
    assert not torch.equal(auto(images, _gen(2))[0], on_device(images, _gen(2))[0])


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="jpeg_backend"):
        MoCoViews(32, mean=MEAN, std=STD, jpeg_backend="libjpeg")
    with pytest.raises(ValueError, match="crop_min_scale"):
        MoCoViews(32, mean=MEAN, std=STD, crop_min_scale=0.0)
    with pytest.raises(ValueError, match="mean and std"):
        MoCoViews(32, mean=(0.5,), std=STD)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_views_on_cuda_are_seeded():
    images = torch.randint(0, 256, (16, 136, 136, 3), dtype=torch.uint8, device="cuda")
    views = MoCoViews(96, mean=MEAN, std=STD, border=20)
    q1, _ = views(images, _gen(0))
    q2, _ = views(images, _gen(0))
    assert q1.is_cuda and q1.shape == (16, 3, 96, 96)
    assert torch.equal(q1, q2)

