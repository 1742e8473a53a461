"""The synthetic-faces generator: determinism, splits, geometry of landmarks, masks, speed."""

from __future__ import annotations

import math
import pickle
import time

import numpy as np
import pytest

from landmarks.data.converters import get_converter
from landmarks.data.converters.synthetic import LANDMARK_NAMES, SyntheticFaces
from landmarks.errors import ConfigError


def make(num_images=60, seed=0, image_size=96, **opts) -> SyntheticFaces:
    return SyntheticFaces(image_size=image_size, options={"num_images": num_images, "seed": seed, **opts})


def all_items(conv):
    return sorted((it for items in conv.splits().values() for it in items), key=lambda it: it.index)


def luminance(img):
    return img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


@pytest.fixture(scope="module")
def normal_records():
    conv = make(num_images=80, seed=7)
    return conv, [conv.load(it) for it in all_items(conv)]


def test_registered_and_info():
    assert get_converter("synthetic-faces") is SyntheticFaces
    info = make().info
    assert info.landmark_names == LANDMARK_NAMES and info.num_landmarks == 5
    assert info.eye_indices == (0, 1) and info.has_masks
    assert (info.stored_size, info.input_size, info.border) == (136, 96, 20)


@pytest.mark.parametrize("image_size, stored", [(96, 136), (128, 182)])
def test_record_shapes_and_types(image_size, stored):
    conv = make(num_images=10, image_size=image_size)
    rec = conv.load(all_items(conv)[3])
    assert rec.image.shape == (stored, stored, 3) and rec.image.dtype == np.uint8
    assert rec.mask.shape == (stored, stored) and rec.mask.dtype == np.uint8
    assert set(np.unique(rec.mask).tolist()) == {0, 255}
    assert rec.keypoints.shape == (5, 2) and rec.keypoints.dtype == np.float32
    assert rec.visible.dtype == bool and rec.visible.all()
    # the eval border crop leaves exactly the input size
    assert conv.info.stored_size == stored and stored - 2 * conv.info.border == image_size


def test_same_seed_same_bytes_different_seed_different():
    a, b, c = make(seed=3), make(seed=3), make(seed=4)
    for it in all_items(a)[:6]:
        ra, rb, rc = a.load(it), b.load(it), c.load(it)
        assert ra.image.tobytes() == rb.image.tobytes() and ra.mask.tobytes() == rb.mask.tobytes()
        np.testing.assert_array_equal(ra.keypoints, rb.keypoints)
        assert ra.image_id == rb.image_id and ra.identity == rb.identity
        assert ra.image.tobytes() != rc.image.tobytes()
        assert not np.allclose(ra.keypoints, rc.keypoints)
    assert a.splits() == b.splits()


def test_item_independent_of_generation_order():
    items = all_items(make(seed=5))
    in_sequence = make(seed=5)
    records = [in_sequence.load(it) for it in items[:8]]
    shipped = pickle.loads(pickle.dumps(make(seed=5)))  # as a Ray worker gets converter and item
    alone = shipped.load(pickle.loads(pickle.dumps(items[5])))
    assert alone.image.tobytes() == records[5].image.tobytes()
    np.testing.assert_array_equal(alone.keypoints, records[5].keypoints)
    reverse = make(seed=5)
    backwards = [reverse.load(it).image.tobytes() for it in items[7::-1]]
    assert backwards[::-1] == [r.image.tobytes() for r in records]


def test_images_differ_within_an_identity():
    conv = make(num_images=60, seed=1)
    items = [it for it in all_items(conv) if it.identity == all_items(conv)[0].identity]
    assert len(items) >= 4
    imgs = [conv.load(it).image.astype(np.int16) for it in items]
    assert all(np.abs(imgs[0] - other).mean() > 10 for other in imgs[1:])


def test_identities_do_not_cross_splits_and_cover_every_image():
    conv = make(num_images=200, seed=2)
    splits = conv.splits()
    assert list(splits) == ["train", "val", "test"]
    ids = {name: {it.identity for it in items} for name, items in splits.items()}
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"] and not ids["val"] & ids["test"]
    assert sorted(it.index for items in splits.values() for it in items) == list(range(200))
    for name, items in splits.items():
        assert all(it.split == name for it in items)
        assert [it.index for it in items] == sorted(it.index for it in items)
    counts = np.bincount([it.identity for items in splits.values() for it in items])
    assert counts.min() >= 4, counts  # several images per identity (default 6)
    assert len(ids["val"]) >= 2 and len(ids["test"]) >= 2
    n_train = len(splits["train"])
    assert 0.7 * 200 <= n_train <= 0.9 * 200  # 80/10/10 by identity
    rec = conv.load(splits["val"][0])
    assert rec.identity == f"id{splits['val'][0].identity:06d}"


@pytest.mark.parametrize("n", [3, 16, 40])
def test_small_datasets_still_have_every_split(n):
    splits = make(num_images=n).splits()
    ids = {name: {it.identity for it in items} for name, items in splits.items()}
    assert all(len(v) >= (2 if n >= 10 else 1) for v in ids.values()), ids


def test_landmarks_inside_crop_and_in_mafl_order(normal_records):
    conv, records = normal_records
    size, border = conv.info.stored_size, conv.info.border
    for rec in records:
        kp = rec.keypoints.astype(np.float64)
        assert kp.min() >= border and kp.max() <= size - 1 - border, rec.image_id
        le, re, _, lm, rm = kp
        assert le[0] < re[0] and lm[0] < rm[0], rec.image_id  # image-left first, as CelebA
        # unrotate by the eye line: eyes above the nose, nose above the mouth corners
        ang = math.atan2(re[1] - le[1], re[0] - le[0])
        c, s = math.cos(-ang), math.sin(-ang)
        y = [s * x0 + c * y0 for x0, y0 in kp]
        assert max(y[0], y[1]) < y[2] < min(y[3], y[4]), rec.image_id
        iod = np.linalg.norm(re - le)
        assert 12 < iod < 45, (rec.image_id, iod)  # ~30 px at 136 as in MAFL, shrunk by yaw


def test_mask_covers_every_landmark_and_not_the_corners(normal_records):
    _, records = normal_records
    for rec in records:
        x, y = np.round(rec.keypoints).astype(int).T
        assert (rec.mask[y, x] == 255).all(), rec.image_id
        assert 0.1 < (rec.mask > 0).mean() < 0.8, rec.image_id


def test_eyes_darker_than_the_cheek_below(normal_records):
    """The eye landmark sits on visible dark structure (iris/pupil, lashes), not on bare skin."""
    _, records = normal_records
    darker = []
    for rec in records:
        lum = luminance(rec.image)
        le, re = rec.keypoints[:2].astype(np.float64)
        axis = (re - le) / np.linalg.norm(re - le)
        down = np.array([-axis[1], axis[0]])  # perpendicular to the eye line, towards the mouth
        iod = np.linalg.norm(re - le)
        for eye in (le, re):
            x, y = np.round(eye).astype(int)
            centre = lum[y - 1:y + 2, x - 1:x + 2].mean()
            cheek = [lum[tuple(np.round(eye + iod * (0.4 * down + t * axis)).astype(int)[::-1])]
                     for t in (-0.08, 0.0, 0.08)]
            darker.append(centre < np.median(cheek) - 10)
    assert np.mean(darker) >= 0.95, np.mean(darker)


def test_difficulty_controls_pose_range_and_keeps_the_guarantees():
    def eye_angles(difficulty):
        conv = make(num_images=60, seed=9, difficulty=difficulty)
        lo, hi = conv.info.border, conv.info.stored_size - 1 - conv.info.border
        records = [conv.load(it) for it in all_items(conv)]
        for rec in records:  # extreme poses and occluders still leave every landmark inside and on the head
            x, y = np.round(rec.keypoints).astype(int).T
            assert rec.keypoints.min() >= lo and rec.keypoints.max() <= hi, rec.image_id
            assert (rec.mask[y, x] == 255).all(), rec.image_id
        d = np.stack([rec.keypoints[1] - rec.keypoints[0] for rec in records])
        return np.degrees(np.abs(np.arctan2(d[:, 1], d[:, 0])))

    easy, hard = eye_angles("easy"), eye_angles("hard")
    assert easy.max() < 12 and hard.max() > 25


def test_options_are_validated():
    with pytest.raises(ConfigError, match="num_imgs"):
        SyntheticFaces(options={"num_imgs": 10})
    with pytest.raises(ConfigError, match="difficulty"):
        make(difficulty="brutal")
    with pytest.raises(ConfigError, match="seed"):
        make(seed=-1)
    with pytest.raises(ConfigError, match="num_images"):
        make(num_images=2)
    with pytest.raises(ConfigError, match="images_per_identity"):
        make(images_per_identity=0)


def test_fast_enough_for_tests_and_demo():
    """Target >= 200 images/s on one idle core; CPU time, and 4x slack, so a busy CI machine passes."""
    conv = make(num_images=100, seed=1)
    items = all_items(conv)
    start = time.process_time()
    for it in items:
        conv.load(it)
    elapsed = time.process_time() - start
    assert elapsed < 2.0, f"100 images took {elapsed:.2f} s of CPU time"
