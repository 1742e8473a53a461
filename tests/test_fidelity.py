"""Fidelity to the official code (cvl-umass/contrast-landmark @6162dba): each official quantity is
computed here independently, with a naive loop or formula written from the official definition, and
compared with ours on fixed tensors (issue "Fidelity I")."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from landmarks.augment.tps import AUGMENT, TPSParams
from landmarks.coords import pixels_to_normalized
from landmarks.data.normalization import CELEBA_MEAN, CELEBA_STD, IMAGENET_MEAN, IMAGENET_STD, input_stats
from landmarks.losses import regression_loss
from landmarks.metrics import pck_official
from landmarks.models import LandmarkRegressor, build_backbone
from landmarks.models.representation import dense_size
from landmarks.schedules import OFFICIAL_ETA_MIN_FACTOR, epoch_cosine_lr


def _official_selected_loss(pred, kp, visible, alpha=10.0):
    """models/loss.py selected_regression_loss: zero the invisible entries of both, smooth-L1 mean of x alpha."""
    pred, kp = pred.clone(), kp.clone()
    for i in range(pred.shape[0]):
        for j in range(pred.shape[1]):
            if not visible[i][j]:
                kp[i][j] = 0.0
                pred[i][j] = 0.0
    total = 0.0
    for d in (alpha * pred - alpha * kp).flatten().tolist():
        total += 0.5 * d * d if abs(d) < 1 else abs(d) - 0.5
    return total / pred.numel()


def test_regression_loss_is_the_official_smooth_l1_of_10x_coordinates():
    gen = torch.Generator().manual_seed(0)
    pred = torch.rand(4, 15, 2, generator=gen) * 2 - 1
    kp = torch.rand(4, 15, 2, generator=gen) * 2 - 1
    visible = torch.rand(4, 15, generator=gen) > 0.3
    assert regression_loss(pred, kp, visible).item() == pytest.approx(_official_selected_loss(pred, kp, visible),
                                                                      abs=1e-5)
    everything = torch.ones(4, 15, dtype=torch.bool)
    assert regression_loss(pred, kp).item() == pytest.approx(_official_selected_loss(pred, kp, everything), abs=1e-5)


def _official_keypoint_predictor(feats, conv_weight, linear_weight, mul=100.0):
    """IntermediateKeypointPredictor.forward_orig, a loop per image and landmark: softmax(mul x corr)
    over H x W, expectation on linspace(-1, 1) grids, then landmark k = Linear_k(its 2P coordinates)."""
    b, c, h, w = feats.shape
    k, _, two_p = linear_weight.shape
    p = two_p // 2
    xs, ys = torch.linspace(-1, 1, w), torch.linspace(-1, 1, h)
    out = torch.zeros(b, k, 2)
    for i in range(b):
        corr = conv_weight.reshape(k * p, c) @ feats[i].reshape(c, h * w)  # (K P, H W)
        sm = torch.softmax(mul * corr, dim=1).reshape(k * p, h, w)
        x = (sm * xs.view(1, 1, w)).sum((1, 2)) / sm.sum((1, 2))
        y = (sm * ys.view(1, h, 1)).sum((1, 2)) / sm.sum((1, 2))
        inter = torch.stack([x, y], -1).reshape(k, p, 2)
        for j in range(k):
            out[i, j] = linear_weight[j] @ inter[j].reshape(-1)  # (x0, y0, x1, y1, ...)
    return out


@pytest.mark.parametrize("size", [(48, 48), (6, 6)])  # the hypercolumn map and conv4's own map at 96 px
def test_regressor_forward_is_the_official_keypoint_predictor(size):
    torch.manual_seed(1)
    head = LandmarkRegressor(in_channels=12, num_landmarks=3, points_per_landmark=5)
    feats = torch.randn(2, 12, *size) * 0.05
    with torch.no_grad():
        ours = head(feats)
    official = _official_keypoint_predictor(feats, head.heatmaps.weight.detach(), head.weight.detach())
    torch.testing.assert_close(ours, official, atol=1e-5, rtol=0)


def test_per_epoch_cosine_is_torch_cosine_annealing_stepped_at_each_epoch_start():
    """eval_face.py: CosineAnnealingLR(optimizer, epochs, eta_min=lr * 0.2 ** 3 * 0.1); scheduler.step()
    at the start of each epoch 1..epochs, the runs stopped after 121 / 46 / 81 of 200."""
    lr, total = 1e-3, 200
    eta_min = lr * 0.2 ** 3 * 0.1
    assert lr * OFFICIAL_ETA_MIN_FACTOR == pytest.approx(eta_min)
    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total, eta_min)
    for epoch in range(1, 121):
        sched.step()
        assert epoch_cosine_lr(lr, epoch, total, eta_min) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-6)
    assert epoch_cosine_lr(0.03, 800, 800) == pytest.approx(0.0, abs=1e-12)  # train_moco.py: eta_min 0


def _official_calc_pck(pred_n, gt_n, visible, boxsize=48, thr=0.05):
    """models/metric.py calc_pck on normalized coordinates of one batch, with numpy and loops."""
    preds = (pred_n + 1) * (boxsize - 1) / 2
    gts = (gt_n + 1) * (boxsize - 1) / 2
    for i in range(len(gts)):
        gts[i][~visible[i]] = 0
    b, parts = preds.shape[:2]
    dists = np.zeros((parts, b), np.int32)
    for bi in range(b):
        for c in range(parts):
            if gts[bi, c, 0] > 0 and gts[bi, c, 1] > 0:
                dists[c, bi] = ((gts[bi, c] - preds[bi, c]) ** 2).sum() ** 0.5
            else:
                dists[c, bi] = -1
    accs = []
    for c in range(parts):
        d = dists[c][dists[c] != -1]
        if len(d):
            accs.append((d < thr * boxsize).sum() / float(len(d)))
    return 0 if not accs else sum(accs) / len(accs) * 100


def test_official_pck_matches_calc_pck_over_batches_of_32():
    """eval_animal.py: calc_pck per val_loader batch of 32, averaged weighted by batch size (AverageMeter)."""
    rng = np.random.default_rng(0)
    n, k, size = 75, 15, 96
    gt = rng.uniform(-2, 97, (n, k, 2)).astype(np.float32)
    gt[0, 0] = (0.0, 30.0)  # on the box's left edge: the official code leaves it out
    pred = gt + rng.normal(0, 3, gt.shape).astype(np.float32)
    visible = rng.uniform(size=(n, k)) > 0.25
    visible[:, 3] = False  # a part never visible: not in the mean
    norm = lambda px: pixels_to_normalized(torch.from_numpy(px).double(), size).numpy()
    total = 0.0
    for start in range(0, n, 32):
        sl = slice(start, start + 32)
        total += _official_calc_pck(norm(pred[sl]), norm(gt[sl]), visible[sl]) * len(gt[sl])
    assert pck_official(pred, gt, visible, size) == pytest.approx(total / n, abs=1e-5)
    whole = _official_calc_pck(norm(pred), norm(gt), visible)
    assert pck_official(pred, gt, visible, size, batch_size=None) == pytest.approx(whole, abs=1e-5)


def test_hand_computed_official_pck():
    # 96 px -> box 48: b = x * 47 / 95. gt (95, 95) -> (47, 47); pred 4.3 box px off -> int 4 (miss), 2.9 -> 2 (hit)
    gt = np.array([[[95.0, 95.0], [95.0, 95.0]]], np.float32)
    pred = gt.copy()
    pred[0, 0, 0] -= 4.3 * 95 / 47
    pred[0, 1, 0] -= 2.9 * 95 / 47
    assert pck_official(pred, gt, np.ones((1, 2), bool), 96) == pytest.approx(50.0)


def test_conv4_map_and_grid_at_96_px():
    """eval_face.py without --use_hypercol: model(x, layer=4) is layer3's output (6 x 6 at 96 px), and the
    regressor's grid is linspace(-1, 1, 6) over it."""
    from landmarks.models.representation import landmarks_from_blocks

    torch.manual_seed(0)
    backbone = build_backbone("resnet18").eval()
    with torch.no_grad():
        layer3 = backbone.stages(torch.randn(2, 3, 96, 96), num_stages=3)[2]
    assert dense_size("conv4", 96) == tuple(layer3.shape[-2:]) == (6, 6)
    head = LandmarkRegressor(layer3.shape[1], 5, points_per_landmark=4)
    with torch.no_grad():
        ours = landmarks_from_blocks(head, [layer3], dense_size("conv4", 96))
    official = _official_keypoint_predictor(layer3, head.heatmaps.weight.detach(), head.weight.detach())
    torch.testing.assert_close(ours, official, atol=1e-5, rtol=0)


def test_input_normalisation_is_the_official_constants():
    """data_loaders_face.py: Normalize(mean=[0.5084, 0.4224, 0.3769], std=[0.2599, 0.2371, 0.2323]) for every
    face set; data_loaders_animal.py: the ImageNet constants for iNat and CUB."""
    def manifest(name):
        return SimpleNamespace(name=name, mean=[0.1, 0.2, 0.3], std=[0.4, 0.5, 0.6])

    for face in ("celeba", "celeba-wild", "mafl", "aflw-mtfl", "aflw", "300w", "synthetic-faces"):
        assert input_stats(manifest(face))[:2] == ((0.5084, 0.4224, 0.3769), (0.2599, 0.2371, 0.2323))
    for bird in ("cub", "inat-aves"):
        assert input_stats(manifest(bird))[:2] == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert input_stats(manifest("dots"))[:2] == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))  # not a paper dataset
    assert input_stats(manifest("mafl"))[:2] == (CELEBA_MEAN, CELEBA_STD)
    assert input_stats(manifest("cub"))[:2] == (IMAGENET_MEAN, IMAGENET_STD)


def test_limited_budget_tps_is_applied_at_the_stored_size_before_the_border_crop():
    """eval_face.py --TPS_aug: WarperSingle at imwidth (136) on 0..255 values, .to(uint8), then the crop of 20;
    keypoints snapped to the nearest sample (KD-tree) and shifted by the crop, none dropped."""
    from scipy.spatial import cKDTree

    from landmarks.evaluate.regress import Rows

    stored, border, side = 40, 6, 28
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, stored, stored, 3), dtype=np.uint8)
    kps = rng.uniform(2, stored - 3, (3, 5, 2)).astype(np.float32)
    rep = SimpleNamespace(device=torch.device("cpu"), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                          stages=lambda x: [x])  # the network input itself, to compare
    rows = Rows(rep, side, split={"image": images, "keypoints": kps, "visible": np.ones((3, 5), bool),
                                  "image_id": np.arange(3)}, augment=True, border=border)
    (x,), moved, vis = rows.batch(np.arange(3), torch.Generator().manual_seed(7))
    params = TPSParams.sample(3, AUGMENT, torch.Generator().manual_seed(7))  # the same draws
    grid = params.grid((stored, stored), dtype=torch.float64)
    warped = F.grid_sample(torch.from_numpy(images).permute(0, 3, 1, 2).float(), grid.float(), align_corners=True)
    expected = warped.to(torch.uint8)[:, :, border:-border, border:-border].float() / 255
    torch.testing.assert_close(x, expected)
    for b in range(3):
        samples = ((grid[b] + 1) / 2 * (stored - 1)).reshape(-1, 2).numpy()
        _, idx = cKDTree(samples).query(kps[b])
        snapped = np.stack([idx % stored, idx // stored], -1) - border
        np.testing.assert_allclose(moved[b].numpy(), snapped, atol=1e-5)
    assert bool(vis.all())


def test_paper_schedule_and_repeats():
    from landmarks.config import paper_schedule, repeated_samples

    # Table 1 at the 120th / 45th / 80th epoch counted from 0 (official README): 121 / 46 / 81 trained
    assert paper_schedule("mafl", False, "all") == (121, 200)
    assert paper_schedule("aflw-mtfl", False, "all") == (46, 200)
    assert paper_schedule("aflw", False, "all") == (46, 200)
    assert paper_schedule("300w", False, "all") == (81, 200)
    assert paper_schedule("aflw-mtfl", False, 50) == (1000, 1000)
    assert paper_schedule("cub", True, 10) == (2000, 2000)
    # restrict_annos(num, repeat_flag=True, num_per_epoch=1000): the N images tiled 1000 // N times
    assert [repeated_samples(n, 10122) for n in (1, 3, 50, 100)] == [1000, 999, 1000, 1000]
    assert repeated_samples(20, 500) == 500 and math.isclose(repeated_samples(7, 30), 28)


# ----------------------------------------------------------------------------- Fidelity II: projector, matching


def test_projector_output_sums_to_one_over_space_per_channel():
    from landmarks.models import Projector

    torch.manual_seed(0)
    projector = Projector(40, 64)
    assert projector.softargmax_mul == 6.5 and Projector(40, 128).softargmax_mul == 7.0  # README "Stage 2"
    out = projector(torch.randn(2, 40, 12, 12))
    torch.testing.assert_close(out.sum((2, 3)), torch.ones(2, 64))
    conv = projector.proj(torch.randn(1, 40, 5, 5))
    expected = torch.softmax(6.5 * conv.reshape(1, 64, 25), -1).reshape(1, 64, 5, 5)  # FeatDistiller.forward
    torch.testing.assert_close(projector.activate(conv), expected)


def _official_dense_corr_loss(feat, input_hw, temperature_mul=7.0, power=0.5):
    """train_feature_projector.py dense_corr_loss with feat_spectral = [C], a loop per image."""
    b, c, h, w = feat.shape
    stride = input_hw // h
    ys, xs = torch.meshgrid(torch.arange(input_hw).double(), torch.arange(input_hw).double(), indexing="ij")
    yyxx = torch.stack([ys, xs], -1)[::stride, ::stride]  # (h, w, 2) input pixels of the cells
    diff = ((yyxx[:, :, None, None, :] - yyxx[None, None, :, :, :]) ** 2).sum(-1).sqrt() ** power
    total = 0.0
    for i in range(b):
        f1 = F.normalize(feat[i].reshape(c, h * w).double(), p=2, dim=0)
        corr = (f1.t() @ f1).reshape(h, w, h, w)
        sm = torch.softmax(corr.reshape(h, w, -1) * temperature_mul, dim=2).reshape(h, w, h, w)
        total += float((diff * sm).sum())
    return total / (h * w * b)


@pytest.mark.parametrize("mul", [7.0, 8.0])
def test_dense_correlation_loss_is_the_official_one(mul):
    from landmarks.losses import dense_correlation_loss

    torch.manual_seed(0)
    feat = torch.softmax(torch.randn(3, 16, 6, 6).reshape(3, 16, 36) * 3, -1).reshape(3, 16, 6, 6)
    ours = dense_correlation_loss(feat, temperature=1 / mul, stride=96 // 6, chunk_size=7)
    assert float(ours) == pytest.approx(_official_dense_corr_loss(feat, 96, mul), abs=1e-5)


def _official_find_and_err(x, y, src, tgt, gt_x, gt_y):
    """find_descriptor + compute_pixel_err, per landmark (normalized coordinates in and out)."""
    c, h, w = src.shape
    col = min(w - 1, max(int(np.round((x + 1.0) / 2.0 * (w - 1))), 0))
    row = min(h - 1, max(int(np.round((y + 1.0) / 2.0 * (h - 1))), 0))
    corr = src[:, row, col].reshape(1, c) @ tgt.reshape(c, h * w)
    idx = int(corr.argmax())
    py, px = idx // w, idx % w
    px, py = 2.0 * px / (w - 1) - 1, 2.0 * py / (h - 1) - 1
    s = 69.0
    return np.sqrt(((gt_x + 1) / 2 * s - (px + 1) / 2 * s) ** 2 + ((gt_y + 1) / 2 * s - (py + 1) / 2 * s) ** 2)


def test_matching_errors_equal_the_official_find_descriptor_loop():
    from landmarks.metrics import matching_errors

    torch.manual_seed(0)
    src, tgt = F.normalize(torch.randn(2, 8, 9, 9), dim=1), F.normalize(torch.randn(2, 8, 9, 9), dim=1)
    kps_src, kps_tgt = torch.rand(2, 5, 2) * 10 - 0.5, torch.rand(2, 5, 2) * 8  # some outside: clamped
    ours = matching_errors(src, tgt, kps_src, kps_tgt, 9)
    norm_s, norm_t = pixels_to_normalized(kps_src, 9), pixels_to_normalized(kps_tgt, 9)
    for b in range(2):
        for k in range(5):
            expected = _official_find_and_err(*norm_s[b, k].tolist(), src[b], tgt[b], *norm_t[b, k].tolist())
            assert float(ours[b, k]) == pytest.approx(expected, abs=1e-5)


def test_matching_protocol_on_a_known_pair():
    """Identity warps and an image pair whose second face is the first moved 1 px right: the same-identity
    error is 0, and a ground truth 2 px right costs 1 px of the 11 px span of the 12 px input = 69 / 11."""
    from landmarks.augment.tps import TPSStrength
    from landmarks.matching import match_pairs

    stored, border = 16, 2
    ids = np.arange(stored * stored, dtype=np.uint8).reshape(stored, stored)  # a unique value per pixel
    first = np.zeros((stored, stored, 3), np.uint8)
    first[..., 0] = ids
    second = np.roll(first, 1, axis=1)  # the content one pixel right
    kps = np.array([[[7.0, 7.0]], [[9.0, 7.0]]], np.float32)  # stored pixels; the second's truth is 2 px right

    def describe(x):  # one-hot of each pixel's value: a descriptor matches exactly the same source pixel
        values = (x[:, 0] * 255).round().long()
        return F.one_hot(values, 256).permute(0, 3, 1, 2).float()

    none = TPSStrength(0.0, 0.0, 0.0, 0.0, 0.0)
    same, diff = match_pairs(describe, np.stack([first, second]), kps, border, stored - 2 * border, (0.0,) * 3,
                             (1.0,) * 3, torch.Generator().manual_seed(0), torch.device("cpu"), strength=none)
    assert same.shape == diff.shape == (1, 1)
    assert float(same) == pytest.approx(0.0) and float(diff) == pytest.approx(69 / 11)
