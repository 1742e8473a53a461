"""MoCo views: shapes, normalisation, seeds, no flips, the lighting noise, the JPEG backends."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kornia import enhance
from kornia.geometry.transform import crop_and_resize

from landmarks.augment import (
    IMAGENET_PCA_EIGVAL,
    IMAGENET_PCA_EIGVEC,
    MoCoViews,
    border_crop,
    normalize,
    to_float_images,
)
from landmarks.augment.jpeg import jpeg_round_trip
from landmarks.augment.views import _jpeg_pil, resample_boxes

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
    # on a flat gray image only brightness acts: 0.5 * U(0.6, 1.4)
    assert value.min() >= 0.3 - 1e-5 and value.max() <= 0.7 + 1e-5 and value.std() > 0.05


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
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 48), torch.linspace(0, 1, 48), indexing="ij")
    img = torch.stack((xx, yy, 0.5 * (xx + yy)))[None].expand(2, -1, -1, -1).contiguous()
    quality = torch.tensor([40.0, 90.0])
    via_kornia = enhance.jpeg_codec_differentiable(img, quality)
    via_pil = _jpeg_pil(img, quality)
    assert (via_kornia - via_pil).abs().mean() < 0.02
    assert (via_pil - img).abs().mean() > 1e-3  # it did compress
    images = (img * 255).to(torch.uint8)
    q, _ = MoCoViews(32, mean=MEAN, std=STD, jpeg_backend="pil")(images, _gen(0))
    assert q.shape == (2, 3, 32, 32) and torch.isfinite(q).all()



@pytest.mark.parametrize("backend", ["torch", "kornia"])
def test_jpeg_noise_codes_each_image_as_if_alone(backend):
    """Coding in shared padded canvases gives each image exactly its own codec result."""
    torch.manual_seed(0)
    x = torch.rand(12, 3, 40, 40)  # noise: the hardest case for block edges
    views = MoCoViews(32, mean=MEAN, std=STD, jpeg_backend=backend)
    codec = jpeg_round_trip if backend == "torch" else enhance.jpeg_codec_differentiable
    coded = views._jpeg_noise(x, _gen(3))
    gen = _gen(3)  # replay the draws of _jpeg_noise
    scale = (1.0 + 0.5 * torch.randn(12, generator=gen, dtype=torch.float64)).clamp(0.8, 2.0)
    quality = torch.randint(30, 99, (12,), generator=gen)
    sizes = ((scale * 40 - 8) / 16).round().clamp(min=0).mul(16).add(8).long().tolist()  # 16k + 8
    assert len(set(sizes)) > 2  # several sizes, so several groups share canvases
    for i in range(12):
        y = F.interpolate(x[i:i + 1], size=(sizes[i], sizes[i]), mode="bilinear", antialias=True).clamp(0, 1)
        y = codec(y, quality[i:i + 1].float())
        alone = F.interpolate(y, size=(40, 40), mode="bilinear", antialias=True).clamp(0, 1)
        torch.testing.assert_close(coded[i:i + 1], alone, atol=2e-5, rtol=0)


def test_resample_boxes_matches_kornia_crop_and_resize():
    torch.manual_seed(0)
    x = torch.rand(5, 3, 30, 40)
    x0, y0 = torch.tensor([0.0, 3, 10, 0, 7]), torch.tensor([0.0, 2, 5, 9, 1])
    x1, y1 = torch.tensor([39.0, 20, 35, 12, 30]), torch.tensor([29.0, 25, 20, 29, 11])
    boxes = torch.stack((torch.stack((x0, y0), -1), torch.stack((x1, y0), -1),
                         torch.stack((x1, y1), -1), torch.stack((x0, y1), -1)), 1)
    expected = crop_and_resize(x, boxes, (24, 24), mode="bilinear", align_corners=True)
    torch.testing.assert_close(resample_boxes(x, x0, y0, x1, y1, 24), expected, atol=1e-5, rtol=0)


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

