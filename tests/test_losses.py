"""Equivariance loss vs a naive loop and a closed form; masked smooth-L1; InfoNCE."""

import math

import pytest
import torch
import torch.nn.functional as F

from landmarks.losses import equivariance_loss, info_nce, regression_loss


def naive_equivariance_loss(feat_a, feat_b, grid, temperature, power):
    """The spec's formula, one location at a time."""
    b, _, h, w = feat_a.shape
    fa, fb = F.normalize(feat_a, dim=1), F.normalize(feat_b, dim=1)
    total = 0.0
    for n in range(b):
        for i in range(h):
            for j in range(w):
                gx = (grid[n, i, j, 0].item() + 1) / 2 * (w - 1)
                gy = (grid[n, i, j, 1].item() + 1) / 2 * (h - 1)
                sims = [
                    (fa[n, :, i, j] @ fb[n, :, p, q]).item() / temperature for p in range(h) for q in range(w)
                ]
                zmax = max(sims)
                weights = [math.exp(s - zmax) for s in sims]
                z = sum(weights)
                dists = [math.hypot(q - gx, p - gy) ** power for p in range(h) for q in range(w)]
                total += sum(wt / z * d for wt, d in zip(weights, dists))
    return total / (b * h * w)


def identity_grid(b, h, w):
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    return torch.stack([xs, ys], dim=-1).expand(b, h, w, 2).clone()


def test_closed_form_uniform_attention():
    # identical features everywhere -> p(v|u) = 1/4; identity grid on a 2x2 map:
    # distances from any u are 0, 1, 1, sqrt(2) -> loss = (0 + 1 + 1 + 2**0.25) / 4
    feat = torch.zeros(1, 2, 2, 2)
    feat[:, 0] = 3.0
    loss = equivariance_loss(feat, feat, identity_grid(1, 2, 2), temperature=1 / 7, power=0.5)
    assert loss.item() == pytest.approx((2 + 2**0.25) / 4, rel=1e-6)


def test_matches_naive_loop_tiny_case():
    torch.manual_seed(0)
    feat_a, feat_b = torch.randn(1, 2, 2, 2), torch.randn(1, 2, 2, 2)
    grid = torch.rand(1, 2, 2, 2) * 2 - 1
    expected = naive_equivariance_loss(feat_a, feat_b, grid, 1 / 7, 0.5)
    assert equivariance_loss(feat_a, feat_b, grid).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("power,temperature", [(0.5, 1 / 7), (1.0, 0.5), (2.0, 1.0)])
def test_matches_naive_loop_non_square(power, temperature):
    torch.manual_seed(1)
    feat_a, feat_b = torch.randn(2, 3, 3, 4), torch.randn(2, 3, 3, 4)
    grid = torch.rand(2, 3, 4, 2) * 2.4 - 1.2  # some g(u) fall outside image b
    expected = naive_equivariance_loss(feat_a, feat_b, grid, temperature, power)
    for chunk in (None, 1, 5):
        got = equivariance_loss(feat_a, feat_b, grid, temperature=temperature, power=power, chunk_size=chunk)
        assert got.item() == pytest.approx(expected, rel=1e-5)


def test_equivariant_pair_beats_shuffled_pair():
    torch.manual_seed(2)
    feat_b = torch.randn(2, 32, 8, 8)
    feat_a = feat_b.flip(-1)  # image a is b mirrored: u=(x, y) sits at (-x, y) in b
    grid = identity_grid(2, 8, 8)
    grid[..., 0] = -grid[..., 0]
    good = equivariance_loss(feat_a, feat_b, grid)
    perm = torch.randperm(64)
    shuffled = feat_a.flatten(2)[:, :, perm].reshape_as(feat_a)
    bad = equivariance_loss(shuffled, feat_b, grid)
    assert good.item() < 0.3 * bad.item()


def test_chunked_equals_unchunked_with_gradients():
    torch.manual_seed(3)
    fa = torch.randn(2, 8, 6, 5, requires_grad=True)
    fb = torch.randn(2, 8, 6, 5, requires_grad=True)
    grid = torch.rand(2, 6, 5, 2) * 2 - 1
    full = equivariance_loss(fa, fb, grid, chunk_size=None)
    ga, gb = torch.autograd.grad(full, (fa, fb))
    chunked = equivariance_loss(fa, fb, grid, chunk_size=7, use_checkpoint=True)
    ca, cb = torch.autograd.grad(chunked, (fa, fb))
    torch.testing.assert_close(chunked, full)
    torch.testing.assert_close(ca, ga)
    torch.testing.assert_close(cb, gb)
    assert torch.isfinite(ga).all() and ga.abs().sum() > 0 and gb.abs().sum() > 0


def test_gradient_finite_with_exact_correspondence_and_zero_distance():
    feat = torch.randn(1, 4, 5, 5, requires_grad=True)
    loss = equivariance_loss(feat, feat, identity_grid(1, 5, 5), chunk_size=3)
    loss.backward()
    assert torch.isfinite(feat.grad).all()


def test_shape_errors():
    f = torch.randn(1, 2, 3, 3)
    with pytest.raises(ValueError, match="grid must be"):
        equivariance_loss(f, f, torch.zeros(1, 3, 4, 2))
    with pytest.raises(ValueError, match="feat_b"):
        equivariance_loss(f, torch.randn(1, 3, 3, 3), torch.zeros(1, 3, 3, 2))
    with pytest.raises(ValueError, match="temperature"):
        equivariance_loss(f, f, torch.zeros(1, 3, 3, 2), temperature=0)


def test_regression_loss_hand_values():
    pred = torch.tensor([[[0.0, 0.0], [0.1, 0.1], [0.0, 0.0]]], requires_grad=True)
    target = torch.tensor([[[0.05, 0.0], [0.4, 0.1], [float("nan"), float("nan")]]])
    visible = torch.tensor([[True, True, False]])
    loss = regression_loss(pred, target, visible)
    # x10: errors 0.5, 0, 3, 0 (and 0, 0 for the invisible one): smooth-L1 0.125, 0, 2.5, 0, 0, 0; mean of all 6
    assert loss.item() == pytest.approx((0.125 + 2.5) / 6)
    loss.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad[0, 2].abs().sum() == 0
    all_visible = regression_loss(pred, torch.nan_to_num(target), None)
    assert all_visible.item() == pytest.approx((0.125 + 2.5 + 0.0) / 6)  # nan -> 0 = pred there
    assert regression_loss(pred, target, visible, alpha=1.0).item() == pytest.approx((0.00125 + 0.045) / 6)
    with pytest.raises(ValueError, match="visible"):
        regression_loss(pred, target, visible[:, :2])


def test_info_nce_is_cross_entropy_with_positive_first():
    logits = torch.tensor([[3.0, 1.0, 0.0]])
    expected = -math.log(math.exp(3) / (math.exp(3) + math.exp(1) + 1))
    assert info_nce(logits, torch.zeros(1, dtype=torch.long)).item() == pytest.approx(expected, rel=1e-6)
