"""TPS warps: keypoints move with their pixels, pair grids point at partners, seeds fix warps."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from landmarks.augment import tps
from landmarks.augment.tps import (
    AUGMENT,
    MATCH,
    PAIR,
    TPSParams,
    TPSStrength,
    normalized_grid,
    normalized_to_pixels,
    pair_keypoints,
    pair_warp,
    pixels_to_normalized,
    sample_pair_params,
    snap_keypoints,
    tps_augment,
    warp_images,
    warp_keypoints,
)

H = W = 96


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _smooth_images(b: int, gen: torch.Generator, size: int = H) -> torch.Tensor:
    """Low-frequency colour patterns: bilinear resampling of them is almost exact."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    phase = torch.rand(b, 3, 2, generator=gen) * 2 * math.pi
    chans = [torch.sin(2 * math.pi * (1.3 + c) * xx + phase[:, c, 0, None, None])
             * torch.cos(2 * math.pi * (0.9 + 0.5 * c) * yy + phase[:, c, 1, None, None]) for c in range(3)]
    return torch.stack(chans, 1) * 0.5 + 0.5


def test_presets_are_the_official_strengths():
    assert AUGMENT == TPSStrength(warpsd_all=5e-4, warpsd_subset=0.0, transsd=0.02, scalesd=0.02, rotsd=2.0)
    assert PAIR == TPSStrength(warpsd_all=1e-3, warpsd_subset=1e-2, transsd=0.1, scalesd=0.1, rotsd=5.0)
    assert MATCH == TPSStrength(5e-4, 5e-3, 0.05, 0.05, 2.5)
    with pytest.raises(ValueError, match="rotsd"):
        TPSStrength(1e-3, 1e-2, 0.1, 0.1, -1.0)


def test_pixel_normalized_round_trip_uses_align_corners():
    pts = torch.tensor([[[0.0, 0.0], [W - 1.0, H - 1.0], [47.5, 47.5]]])
    norm = pixels_to_normalized(pts, (H, W))
    torch.testing.assert_close(norm, torch.tensor([[[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]]]))
    torch.testing.assert_close(normalized_to_pixels(norm, (H, W)), pts)


def test_identity_params_are_the_identity():
    images = torch.rand(3, 3, H, W, generator=_gen(0))
    ident = TPSParams.identity(3)
    torch.testing.assert_close(warp_images(images, ident), images, atol=1e-4, rtol=0)  # float32 grid rounding
    kps = torch.rand(3, 7, 2, generator=_gen(1)) * (W - 1)
    torch.testing.assert_close(warp_keypoints(kps, ident, (H, W)), kps, atol=1e-4, rtol=0)
    torch.testing.assert_close(ident.grid((H, W)), normalized_grid(H, W).expand(3, -1, -1, -1))
    uint8 = (images * 255).to(torch.uint8)
    assert torch.equal(warp_images(uint8, ident), uint8)


def test_sampling_is_seeded():
    a = TPSParams.sample(4, PAIR, _gen(7))
    b = TPSParams.sample(4, PAIR, _gen(7))
    c = TPSParams.sample(4, PAIR, _gen(8))
    assert torch.equal(a.nonaffine, b.nonaffine) and torch.equal(a.affine, b.affine)
    assert not torch.equal(a.nonaffine, c.nonaffine)
    images = torch.rand(4, 3, 32, 32, generator=_gen(0))
    assert torch.equal(pair_warp(images, generator=_gen(3))[0], pair_warp(images, generator=_gen(3))[0])
    assert not torch.equal(pair_warp(images, generator=_gen(3))[0], pair_warp(images, generator=_gen(4))[0])


@pytest.mark.parametrize("preset", [AUGMENT, PAIR, MATCH], ids=["augment", "pair", "match"])
def test_keypoints_follow_their_pixels(preset):
    """A bright Gaussian dot at each keypoint ends up where warp_keypoints says (< 1 px)."""
    b = 12
    gen = _gen(11)
    kps = torch.rand(b, 1, 2, generator=gen, dtype=torch.float64) * 56 + 20
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64),
                            indexing="ij")
    dots = torch.exp(-((xx - kps[:, 0, 0, None, None]) ** 2 + (yy - kps[:, 0, 1, None, None]) ** 2) / (2 * 1.5**2))
    params = TPSParams.sample(b, preset, gen)
    warped = warp_images(dots[:, None].float(), params)[:, 0].double()
    moved = warp_keypoints(kps.float(), params, (H, W))[:, 0].double()
    checked = 0
    for i in range(b):
        mx, my = moved[i].tolist()
        if not (6 <= mx <= W - 7 and 6 <= my <= H - 7):
            continue  # the dot left the image
        window = warped[i] * (((xx - mx) ** 2 + (yy - my) ** 2) < 8**2)
        centroid = torch.stack(((window * xx).sum(), (window * yy).sum())) / window.sum()
        assert (centroid - moved[i]).norm() < 1.0, (i, centroid.tolist(), moved[i].tolist())
        checked += 1
    assert checked >= b // 2


@pytest.mark.parametrize("preset", [AUGMENT, PAIR], ids=["augment", "pair"])
def test_warp_keypoints_inverts_the_backward_map(preset):
    params = TPSParams.sample(16, preset, _gen(5))
    kps = torch.rand(16, 5, 2, generator=_gen(6), dtype=torch.float64) * 60 + 18
    moved, res_px = tps._warp_keypoints_with_residual(kps, params, (H, W))
    back = normalized_to_pixels(params.map_points(pixels_to_normalized(moved, (H, W))), (H, W))
    solved = res_px < 1e-3  # the rest have no preimage: the warp does not show their pixel
    assert solved.float().mean() > 0.9
    assert (back - kps).norm(dim=-1)[solved].max() < 1e-3


def test_pair_grid_maps_each_location_to_its_partner():
    """grid_sample(image b, grid) reproduces image a at feature resolution, away from borders."""
    b, fh, fw = 6, 48, 48
    images = _smooth_images(b, _gen(2))
    params = sample_pair_params(b, PAIR, _gen(3))
    img_a, img_b, grid = pair_warp(images, feature_size=(fh, fw), params=params)
    assert img_a.shape == img_b.shape == images.shape
    assert grid.shape == (b, fh, fw, 2) and grid.dtype == torch.float32
    feat_a = F.interpolate(img_a, (fh, fw), mode="bilinear", align_corners=True)
    feat_b_at_grid = F.grid_sample(img_b, grid, mode="bilinear", align_corners=True)
    base, second = params
    source = base.map_points(second.map_points(normalized_grid(fh, fw).reshape(-1, 2))).reshape(b, fh, fw, 2)
    interior = torch.zeros(fh, fw, dtype=torch.bool)
    interior[6:-6, 6:-6] = True
    valid = interior & (grid.abs() < 0.95).all(-1) & (source.abs() < 0.95).all(-1)
    assert valid.float().mean() > 0.3
    err = (feat_a - feat_b_at_grid).abs().amax(1)[valid]
    assert err.max() < 0.03 and err.mean() < 0.005
    unwarped = F.grid_sample(img_b, normalized_grid(fh, fw).expand(b, -1, -1, -1), align_corners=True)
    assert (feat_a - unwarped).abs().amax(1)[valid].mean() > 0.05  # the test can fail


def test_pair_keypoints_agree_with_the_grid():
    b = 5
    params = sample_pair_params(b, PAIR, _gen(9), base_warp_scale=1.0, base_affine_scale=1.0)
    kps = torch.rand(b, 4, 2, generator=_gen(10), dtype=torch.float64) * 40 + 28
    kps_a, kps_b = pair_keypoints(kps, params, (H, W))
    torch.testing.assert_close(kps_b, warp_keypoints(kps, params[0], (H, W)))
    # the grid's map g_second sends a's keypoints onto b's
    mapped = normalized_to_pixels(params[1].map_points(pixels_to_normalized(kps_a, (H, W))), (H, W))
    torch.testing.assert_close(mapped, kps_b, atol=1e-3, rtol=0)


def test_map_points_chunking_matches(monkeypatch):
    params = TPSParams.sample(5, PAIR, _gen(12))
    pts = torch.rand(5, 300, 2, generator=_gen(13)) * 2 - 1
    full = params.map_points(pts)
    monkeypatch.setattr(tps, "_MAX_CHUNK", 1)
    torch.testing.assert_close(params.map_points(pts), full)
    shared = params.map_points(pts[0])
    torch.testing.assert_close(shared[2], params.map_points(pts[0].expand(5, -1, -1))[2])


def test_snap_keypoints_is_the_official_nearest_sample():
    """The official warp_keypoints: a KD-tree over every output pixel's sample location (scipy's, as there)."""
    from scipy.spatial import cKDTree

    params = TPSParams.sample(3, PAIR, _gen(20))
    kps = torch.rand(3, 7, 2, generator=_gen(21)) * torch.tensor([W - 1.0, H - 1.0])
    kps[0, 0] = torch.tensor([-30.0, 5.0])  # outside the image: snapped to the nearest sample all the same
    snapped = snap_keypoints(kps, params, (H, W))
    grid = params.grid((H, W), dtype=torch.float64)  # (B, H, W, 2) normalized sample locations
    for b in range(3):
        samples_px = ((grid[b] + 1) / 2 * torch.tensor([W - 1.0, H - 1.0], dtype=torch.float64)).reshape(-1, 2)
        _, idx = cKDTree(samples_px.numpy()).query(kps[b].double().numpy())
        expected = torch.stack([torch.from_numpy(idx % W), torch.from_numpy(idx // W)], -1).float()
        torch.testing.assert_close(snapped[b], expected, atol=1e-5, rtol=0)
    moved = warp_keypoints(kps[1:], TPSParams(params.nonaffine[1:], params.affine[1:]), (H, W))
    inside = ((moved >= 0) & (moved <= W - 1)).all(-1)  # points the warp keeps in view
    assert inside.sum() > 10 and (snapped[1:] - moved)[inside].abs().max() <= 1.0  # the exact position, snapped


def test_tps_augment_warps_and_snaps_like_the_official_warper_single():
    b, k = 4, 6
    images = (torch.rand(b, 3, H, W, generator=_gen(14)) * 255).to(torch.uint8)
    kps = torch.rand(b, k, 2, generator=_gen(15)) * (W - 1)
    out, moved = tps_augment(images, kps, generator=_gen(16))
    params = TPSParams.sample(b, AUGMENT, _gen(16))  # the same draws
    expected = F.grid_sample(images.float(), params.grid((H, W)), align_corners=True).to(torch.uint8)  # truncation
    assert out.dtype == torch.uint8 and torch.equal(out, expected)
    torch.testing.assert_close(moved, snap_keypoints(kps, params, (H, W)))
    assert torch.equal(moved, moved.round())  # whole pixels


def test_bad_shapes_raise():
    params = TPSParams.identity(2)
    with pytest.raises(ValueError, match="images must be"):
        warp_images(torch.zeros(3, 3, 8, 8), params)
    with pytest.raises(ValueError, match="keypoints must be"):
        warp_keypoints(torch.zeros(3, 5, 2), params, (8, 8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_cuda():
    images = _smooth_images(4, _gen(0)).cuda()
    img_a, img_b, grid = pair_warp(images, generator=_gen(1))
    assert img_a.is_cuda and img_b.is_cuda and grid.is_cuda
    out, kps = tps_augment(images, torch.full((4, 3, 2), 40.0, device="cuda"), generator=_gen(2))
    assert out.is_cuda and kps.is_cuda
