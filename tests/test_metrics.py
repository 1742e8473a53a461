"""Metrics against hand-computed values."""

import numpy as np
import pytest
import torch

from landmarks.metrics import inter_ocular_error, mask_iou, matching_error, pck


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
    # 32 px image, 8x8 descriptor: cell j covers pixels 4j-0.5 .. 4j+3.5, centre 4j + 1.5
    desc_a = _one_hot_cells(1, 8, 8)
    kps_a = torch.tensor([[[5.5, 9.5], [13.5, 25.5]]])  # centres of cells (x=1, y=2) and (x=3, y=6)
    desc_b = desc_a.roll(shifts=1, dims=-1)  # content moves one cell (4 px) right in image b
    assert matching_error(desc_a, desc_b, kps_a, kps_a + torch.tensor([4.0, 0.0]), 32) == pytest.approx(0.0)
    # ground truth says "did not move": 4 px error on a 32 px image = 4 * 70 / 32 on a 70 px image
    assert matching_error(desc_a, desc_b, kps_a, kps_a, 32) == pytest.approx(4 * 70 / 32)
    # a landmark off the cell centre is sampled bilinearly but still matches its cell
    kps_off = kps_a + torch.tensor([0.4, -0.3])
    expected = torch.tensor([[4.0 - 0.4, 0.3]]).norm().item() * 70 / 32
    assert matching_error(desc_a, desc_b, kps_off, kps_off, 32) == pytest.approx(expected, rel=1e-5)
    visible = torch.tensor([[True, False]])
    kps_b = kps_a + torch.tensor([[[4.0, 0.0], [100.0, 0.0]]])
    assert matching_error(desc_a, desc_b, kps_a, kps_b, 32, visible=visible) == pytest.approx(0.0)
    # non-square image: x scaled by 70 / W, y by 70 / H
    desc_c = desc_a.roll(shifts=1, dims=-2)  # one cell down: 8 px in a 64 px tall image
    kps_ns = torch.tensor([[[5.5, 2 * 9.5 + 0.5]]])
    assert matching_error(desc_a, desc_c, kps_ns, kps_ns, (64, 32)) == pytest.approx(8 * 70 / 64, rel=1e-5)
