"""Metrics against hand-computed values."""

import numpy as np
import pytest
import torch

from landmarks.metrics import (
    headline_metric,
    inter_ocular_error,
    landmark_score,
    landmark_scores,
    mask_iou,
    matching_error,
    matching_errors,
    pck,
    pck_official,
)


def test_inter_ocular_error_hand_values():
    gt = torch.tensor(
        [
            [[0.0, 0.0], [10.0, 0.0], [5.0, 5.0]],  # IOD 10
            [[0.0, 0.0], [0.0, 20.0], [5.0, 5.0]],  # IOD 20
        ]
    )
    pred = gt.clone()
    pred[0, 2] += torch.tensor([3.0, 4.0])  # error 5 -> 0.5 IOD
    pred[1, 0] += torch.tensor([2.0, 0.0])  # error 2 -> 0.1 IOD
    # mean over 6 landmarks of (0, 0, 0.5, 0.1, 0, 0), in percent
    assert inter_ocular_error(pred, gt, (0, 1)) == pytest.approx(60.0 / 6)
    visible = torch.tensor([[True, True, False], [True, False, True]])  # hides the 0.5 error
    assert inter_ocular_error(pred, gt, (0, 1), visible=visible) == pytest.approx(10.0 / 4)
    assert inter_ocular_error(pred.numpy(), gt.numpy(), [0, 1]) == pytest.approx(10.0)
    assert inter_ocular_error(pred[0], gt[0], (0, 1)) == pytest.approx(50.0 / 3)  # single (K, 2)


def test_inter_ocular_error_zero_distance_names_the_image():
    gt = torch.tensor([[[0.0, 0.0], [10.0, 0.0]], [[4.0, 4.0], [4.0, 4.0]]])
    with pytest.raises(ValueError, match="image index 1"):
        inter_ocular_error(gt, gt, (0, 1))
    with pytest.raises(ValueError, match=r"\(B, K, 2\)"):
        inter_ocular_error(gt[:, :1], gt, (0, 1))


def test_pck_hand_values_with_invisible_landmarks():
    gt = torch.zeros(1, 4, 2)
    pred = torch.tensor([[[3.0, 0.0], [0.0, 5.0], [7.0, 0.0], [0.0, 0.0]]])
    visible = torch.tensor([[True, True, True, False]])
    # threshold 0.05 * 100 = 5 px, strict: 3 < 5 yes, 5 < 5 no, 7 no; the perfect one is invisible
    assert pck(pred, gt, visible, image_size=100) == pytest.approx(100.0 / 3)
    assert pck(pred, gt, visible, image_size=100, threshold=0.06) == pytest.approx(200.0 / 3)  # 6 px
    assert pck(pred, gt, visible, image_size=100, threshold=0.1) == pytest.approx(100.0)  # 10 px
    # numpy, per-image size 120 -> 6 px, all four visible: 3, 5, 0 pass, 7 fails
    assert pck(
        pred.numpy(), gt.numpy(), np.ones((1, 4), bool), image_size=np.array([120.0])
    ) == pytest.approx(75.0)
    with pytest.raises(ValueError, match="no visible"):
        pck(pred, gt, torch.zeros(1, 4, dtype=torch.bool), image_size=100)
    with pytest.raises(ValueError, match="one size per image"):
        pck(pred, gt, visible, image_size=(96, 96))


def test_mask_iou_hand_values():
    pred = torch.zeros(3, 2, 3, dtype=torch.bool)
    gt = torch.zeros(3, 2, 3, dtype=torch.bool)
    pred[0, 0, :2] = True  # image 0: pred {(0,0), (0,1)}
    gt[0, 0, 1:] = True  # gt {(0,1), (0,2), (1,2)}: intersection 1, union 4 -> 1/4
    gt[0, 1, 2] = True
    pred[1] = True  # image 1: pred all 6 px, gt the top row (3 px) -> 1/2
    gt[1, 0] = True
    # image 2: both empty -> 1
    assert mask_iou(pred, gt) == pytest.approx((0.25 + 0.5 + 1.0) / 3)
    assert mask_iou(pred[0].numpy().astype(np.uint8) * 255, gt[0].numpy()) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="shape"):
        mask_iou(pred, gt[:, :1])


def _one_hot_cells(b, h, w):
    """Descriptor whose channel c is the indicator of cell c: nearest neighbours are exact."""
    return torch.eye(h * w).reshape(h * w, h, w).expand(b, -1, -1, -1).clone()


def test_matching_error_hand_values():
    # An 8 px image with an 8 x 8 descriptor map: cell j sits at pixel j (linspace(-1, 1, 8)).
    desc_a = _one_hot_cells(1, 8, 8)
    desc_b = desc_a.roll(shifts=1, dims=-1)  # content moves one cell (1 px) right in image b
    kps_a = torch.tensor([[[1.4, 2.6], [5.0, 6.0]]])  # query cells round(1.4), round(2.6) = (1, 3); (5, 6)
    moved = torch.tensor([[[2.0, 3.0], [6.0, 6.0]]])
    assert matching_error(desc_a, desc_b, kps_a, moved, 8) == pytest.approx(0.0)
    # ground truth says "did not move" for the second: 1 px of the 7 px span = 69 / 7 px of a 70 px image
    errors = matching_errors(desc_a, desc_b, kps_a, torch.tensor([[[2.0, 3.0], [5.0, 6.0]]]), 8)
    torch.testing.assert_close(errors, torch.tensor([[0.0, 69 / 7]], dtype=torch.float64))
    # off-cell ground truth counts as it is: the prediction is the cell, the truth (2.5, 3)
    assert matching_error(desc_a, desc_b, kps_a[:, :1], torch.tensor([[[2.5, 3.0]]]), 8) == pytest.approx(0.5 * 69 / 7)
    # a query at x = 2.5 rounds half to even (np.round): cell 2, matched to cell 3
    half = matching_errors(desc_a, desc_b, torch.tensor([[[2.5, 0.0]]]), torch.tensor([[[3.0, 0.0]]]), 8)
    assert float(half) == pytest.approx(0.0)


def test_landmark_scores_choose_iod_for_faces_and_the_official_pck_otherwise():
    """One choice: eye indices -> {"iod"}; none -> {"pck" (official), "pck_float"}, each the metric's own value."""
    gen = torch.Generator().manual_seed(0)
    gt = torch.rand(40, 5, 2, generator=gen, dtype=torch.float64) * 95
    pred = gt + torch.randn(40, 5, 2, generator=gen, dtype=torch.float64) * 3
    vis = torch.rand(40, 5, generator=gen) > 0.2
    assert headline_metric((0, 1)) == "iod" and headline_metric(None) == "pck" and headline_metric([]) == "pck"
    assert landmark_scores(pred, gt, vis, 96, (0, 1)) == {"iod": inter_ocular_error(pred, gt, (0, 1), visible=vis)}
    assert landmark_scores(pred, gt, vis, 96, None) == {"pck": pck_official(pred, gt, vis, 96),
                                                        "pck_float": pck(pred, gt, vis, 96, threshold=0.05)}
    assert landmark_score("pck", pred, gt, vis, 96) == pck_official(pred, gt, vis, 96)
    with pytest.raises(ValueError, match="unknown landmark metric"):
        landmark_score("nme", pred, gt, vis, 96)
