"""Heads and the coordinate convention (landmarks.coords): normalized [-1, 1], x first, the official
align_corners=True sense (pixel centres 0 and W-1 at -1 and +1)."""

import math

import pytest
import torch
import torch.nn.functional as F

from landmarks.coords import normalized_grid, normalized_to_pixels, pixels_to_normalized
from landmarks.losses import regression_loss
from landmarks.models import LandmarkRegressor, Projector, SegmentationHead, soft_argmax


def test_pixel_normalized_convention_hand_values():
    px = torch.tensor([[0.0, 0.0], [7.0, 3.0], [3.5, 1.5], [-3.5, 6.0]])  # (x, y) in an H=4 x W=8 image
    norm = pixels_to_normalized(px, (4, 8))
    expected = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0], [-2.0, 3.0]])  # u = 2x / (W - 1) - 1
    torch.testing.assert_close(norm, expected)
    torch.testing.assert_close(normalized_to_pixels(norm, (4, 8)), px)
    torch.testing.assert_close(pixels_to_normalized(px, 8)[:, 0], norm[:, 0])  # int = square


def test_convention_agrees_with_grid_sample_align_corners_true():
    img = torch.arange(5 * 7, dtype=torch.float32).reshape(1, 1, 5, 7)
    px = torch.tensor([[[2.0, 3.0], [6.0, 0.0], [0.0, 4.0]]])  # (x, y) pixel centres
    grid = pixels_to_normalized(px, (5, 7)).unsqueeze(2)  # (1, K, 1, 2)
    sampled = F.grid_sample(img, grid, align_corners=True)[0, 0, :, 0]
    torch.testing.assert_close(sampled, torch.tensor([3 * 7 + 2.0, 6.0, 4 * 7 + 0.0]))
    identity = F.grid_sample(img, normalized_grid(5, 7).unsqueeze(0), align_corners=True)
    torch.testing.assert_close(identity, img)


def test_soft_argmax_of_a_sharp_peak_is_the_linspace_cell():
    logits = torch.full((1, 2, 4, 6), -1e4)
    logits[0, 0, 1, 4] = 0.0
    logits[0, 1, 3, 0] = 0.0
    pts = soft_argmax(logits)
    expected = torch.tensor([[2 * 4 / 5 - 1, 2 * 1 / 3 - 1], [-1.0, 1.0]])  # linspace(-1, 1, 6)[4], (.., 4)[1]
    torch.testing.assert_close(pts[0], expected)


def _peak_features(landmarks_px, size, extra_channels=1, sigma=0.7):
    """(B, K + extra, size, size) maps; channel k is a bump at landmark k (pixel coords)."""
    b = landmarks_px.shape[0]
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    d2 = (xs - landmarks_px[..., 0, None, None]) ** 2 + (ys - landmarks_px[..., 1, None, None]) ** 2
    bumps = torch.exp(-d2 / (2 * sigma**2))  # (B, K, size, size)
    return torch.cat([bumps, 0.05 * torch.randn(b, extra_channels, size, size)], dim=1)


def test_regressor_initialisation_is_the_official_one():
    torch.manual_seed(0)
    head = LandmarkRegressor(in_channels=64, num_landmarks=5, points_per_landmark=50)
    w = head.heatmaps.weight.detach()  # (250, 64, 1, 1) ~ randn
    assert abs(float(w.mean())) < 0.02 and abs(float(w.std()) - 1.0) < 0.02
    bound = 1 / math.sqrt(100)  # nn.Linear(100, 2)'s default init
    lin = head.weight.detach()  # (5, 2, 100)
    assert float(lin.abs().max()) <= bound and float(lin.std()) == pytest.approx(bound / math.sqrt(3), rel=0.1)


def test_regressor_with_analytic_weights_recovers_the_peak():
    head = LandmarkRegressor(in_channels=3, num_landmarks=2, points_per_landmark=5)
    with torch.no_grad():
        w = torch.zeros(2 * 5, 3, 1, 1)
        w[:5, 0] = 1.0  # landmark 0's 5 heatmaps read channel 0, landmark 1's read channel 1
        w[5:, 1] = 1.0
        head.heatmaps.weight.copy_(w)
        head.weight.zero_()  # each landmark = the mean of its 5 points
        head.weight[:, 0, 0::2] = head.weight[:, 1, 1::2] = 1 / 5
    lm_px = torch.tensor([[[3.0, 9.0], [10.0, 2.0]]])
    pred = head(_peak_features(lm_px, 12, sigma=0.3))
    assert pred.shape == (1, 2, 2)
    assert head.intermediate_points(_peak_features(lm_px, 12)).shape == (1, 2, 5, 2)
    torch.testing.assert_close(normalized_to_pixels(pred, 12), lm_px, atol=1e-3, rtol=0)


def test_regressor_learns_landmarks_from_peaks():
    torch.manual_seed(0)
    size, k = 12, 2

    def batch(n):
        lm = torch.randint(1, size - 1, (n, k, 2)).float()
        return _peak_features(lm, size, extra_channels=2), pixels_to_normalized(lm, size)

    head = LandmarkRegressor(in_channels=k + 2, num_landmarks=k, points_per_landmark=8)
    opt = torch.optim.Adam(head.parameters(), lr=0.02, betas=(0.5, 0.999))
    visible = torch.ones(16, k, dtype=torch.bool)
    feats_test, target_test = batch(32)
    with torch.no_grad():
        before = (head(feats_test) - target_test).norm(dim=-1).mean()
    for _ in range(800):
        feats, target = batch(16)
        loss = regression_loss(head(feats), target, visible)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after_px = normalized_to_pixels(head(feats_test), size) - normalized_to_pixels(target_test, size)
        after = (head(feats_test) - target_test).norm(dim=-1).mean()
    assert after < 0.2 * before
    assert after_px.norm(dim=-1).mean() < 0.1  # a tenth of a pixel on a 12 px map


def test_projector_and_segmentation_shapes():
    feats = torch.randn(2, 40, 6, 6)
    assert Projector(40, 64)(feats).shape == (2, 64, 6, 6)
    seg = SegmentationHead(40)
    with torch.no_grad():
        seg.classifier.weight.zero_()
        seg.classifier.bias.fill_(1.5)
    logits = seg(feats, (24, 30))
    assert logits.shape == (2, 24, 30)
    torch.testing.assert_close(logits, torch.full((2, 24, 30), 1.5))
    assert seg(feats, 12).shape == (2, 12, 12)


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match="dim"):
        Projector(10, 0)
    with pytest.raises(ValueError, match="num_landmarks"):
        LandmarkRegressor(10, 0)
    with pytest.raises(ValueError, match="in_channels"):
        SegmentationHead(0)


def test_regressor_init_std_and_points_per_landmark():
    """The official N(0, 1) heatmap conv and 50 points by default; `init_std` and `points_per_landmark` (the
    demo's small, cheap head) change only those."""
    torch.manual_seed(0)
    official = LandmarkRegressor(256, 5)
    assert official.points_per_landmark == 50 and official.heatmaps.weight.shape == (250, 256, 1, 1)
    assert abs(official.heatmaps.weight.std().item() - 1.0) < 0.01
    small = LandmarkRegressor(256, 5, points_per_landmark=10, init_std=0.001)
    assert small.heatmaps.weight.shape == (50, 256, 1, 1) and small.weight.shape == (5, 2, 20)
    assert abs(small.heatmaps.weight.std().item() - 0.001) < 1e-4
    assert small(torch.randn(2, 256, 12, 12)).shape == (2, 5, 2)
