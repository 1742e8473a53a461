"""Real-dataset converters on tiny fixtures written in each dataset's on-disk format.

Each builder writes a few images with known landmarks under tmp_path and returns what the
converter must produce: per split, image_id -> expected stored keypoints, computed here by hand
with the formula of the official loader (contrast-landmark data_loader/data_loaders_face.py,
data_loaders_animal.py), not with the converters' helpers. Image content is checked against
`_pixel_map`, the exact map of pixel centres through the official image geometry. Bad-input
cases then corrupt one file each.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from landmarks.data.converters import BadItem, get_converter
from landmarks.data.converters.cub import split_list
from landmarks.errors import ConfigError

S = 136  # stored face size at the default 96 px input
HEADER5 = "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y"


def _image(path: Path, w: int, h: int, marks=(), fmt: str | None = None) -> None:
    """Dark noisy image with a bright 3x3 blob at each integer (x, y) of `marks`."""
    arr = np.random.default_rng(len(str(path))).integers(0, 40, (h, w, 3), dtype=np.uint8)
    for x, y in marks:
        arr[int(y) - 1 : int(y) + 2, int(x) - 1 : int(x) + 2] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt, quality=95)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _edit(path: Path, line: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[line - 1] = text
    path.write_text("\n".join(lines) + "\n")


def _pixel_map(xy, left, top, width, height, out_w, out_h):
    """Where the pixel centred at `xy` lands when box (left, top, width, height) is resized to
    out_w x out_h: the image content, which the official keypoints miss by 0.5 * (1 - scale)."""
    xy = np.asarray(xy, np.float64)
    return np.array([(xy[0] - left + 0.5) * out_w / width - 0.5, (xy[1] - top + 0.5) * out_h / height - 0.5])


def _blob_centre(image):
    w = np.where(image[..., 0] > 120, image[..., 0].astype(np.float64), 0)
    ys, xs = np.mgrid[: w.shape[0], : w.shape[1]]
    return np.array([(w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()])


# ---------------------------------------------------------------- fixture builders

NAMES = [f"{i:06d}.jpg" for i in range(1, 7)]
PARTITION = [0, 0, 0, 1, 2, 0]  # 000003, 000006 are MAFL train, 000005 MAFL test


def build_celeba(root: Path, aligned: bool = True, crop: str = "none"):
    """CelebA files; aligned: landmarks in 178x218 images, else in-the-wild 260x300 images + face boxes.

    Returns image name -> official keypoints for the aligned crop, or for the in-the-wild `crop`.
    """
    rng = np.random.default_rng(0)
    _write(root / "Eval/list_eval_partition.txt", "".join(f"{n} {p}\n" for n, p in zip(NAMES, PARTITION)))
    _write(root / "Anno/identity_CelebA.txt", "".join(f"{n} {10 + i // 2}\n" for i, n in enumerate(NAMES)))
    _write(root / "MAFL/training.txt", "000003.jpg\n000006.jpg\n")
    _write(root / "MAFL/testing.txt", "000005.jpg\n")
    lm_rows, box_rows, expected = [], [], {}
    for name in NAMES:
        if aligned:
            kps = np.stack([rng.integers(10, 168, 5), rng.integers(45, 200, 5)], 1).astype(float)
            _image(root / "Img/img_align_celeba" / name, 178, 218, kps[:1])
            # MAFLAligned: keypoints[:, :, 1] -= 30; keypoints *= imwidth / 178.
            expected[name] = np.stack([kps[:, 0] * S / 178, (kps[:, 1] - 30) * S / 178], 1)
        else:
            bx, by, bw, bh = (int(v) for v in rng.integers(60, 100, 4))
            kps = np.stack([rng.integers(bx, bx + bw, 5), rng.integers(by, by + bh, 5)], 1).astype(float)
            kps[4] = (2, 3)  # outside the face-box crop: visible False there
            _image(root / "Img/img_celeba" / name, 260, 300, kps[:1])
            if crop == "none":  # CelebA_MAFLVal: Resize((imwidth, imwidth)) of the whole image
                expected[name] = np.stack([kps[:, 0] * S / 260, kps[:, 1] * S / 300], 1)
            else:  # ours: square box of side 1.2 max(w, h) centred 0.1 h above the face box centre
                side = 1.2 * max(bw, bh)
                left, top = bx + bw / 2 - side / 2, by + bh / 2 - 0.1 * bh - side / 2
                expected[name] = np.stack([(kps[:, 0] - left) * S / side, (kps[:, 1] - top) * S / side], 1)
            box_rows.append(f"{name} {bx} {by} {bw} {bh}\n")
        lm_rows.append(f"{name} " + " ".join(str(int(v)) for v in kps.ravel()) + "\n")
    lm_file = "list_landmarks_align_celeba.txt" if aligned else "list_landmarks_celeba.txt"
    _write(root / "Anno" / lm_file, f"{len(NAMES)}\n{HEADER5}\n" + "".join(lm_rows))
    if not aligned:
        _write(root / "Anno/list_bbox_celeba.txt", f"{len(NAMES)}\nimage_id x_1 y_1 width height\n" + "".join(box_rows))
    return expected


def build_aflw_mtfl(root: Path):
    rng = np.random.default_rng(1)
    header = "image_file,face_id,crop_file,set," + ",".join(f"x{i},y{i}" for i in range(1, 6)) + ",extra"
    rows, train, test = [header], {}, {}
    for i, setv in enumerate([1, 2, 1]):
        kps = rng.uniform(20, 130, (5, 2)).round(2)  # 1-based
        crop = f"image{i:05d}_{i}.jpg"
        _image(root / "aflw_cropped" / crop, 150, 150)
        rows.append(f"image{i:05d}.jpg,{i},{crop},{setv}," + ",".join(f"{v:g}" for v in kps.ravel()) + ",0")
        if setv == 1:  # AFLW_MTFL: keypoints -= 1; keypoints *= imwidth / 150.
            train[f"aflw_cropped/{crop}"] = (kps - 1) * S / 150
    _write(root / "aflw_cropped/facedata_cropped.csv", "\n".join(rows) + "\n")
    lines = []
    for i in range(2):
        kps = rng.uniform(20, 130, (5, 2)).round(2)
        _image(root / "MTFL/AFLW" / f"{i}-image{i:05d}.jpg", 150, 150)
        lines.append(f"AFLW\\{i}-image{i:05d}.jpg " + " ".join(f"{v:g}" for v in kps.T.ravel()) + " 1 2 2 3")
        test[f"MTFL/AFLW/{i}-image{i:05d}.jpg"] = (kps - 1) * S / 150
    _write(root / "MTFL/testing.txt", "\n".join(lines) + "\n")
    return {"train": train, "test": test}


def build_aflw(root: Path):
    rng = np.random.default_rng(2)
    out = {}
    for split, sizes in (("train", [(120, 100), (90, 90)]), ("test", [(100, 130)])):
        gt, hw, names, out[split] = [], [], [], {}
        for i, (w, h) in enumerate(sizes):
            name = f"{split}/face{i}.jpg"
            kps = np.stack([rng.uniform(5, w - 5, 5), rng.uniform(5, h - 5, 5)], 1)
            scale = 2 if i == 1 else 1  # stored image twice the `hw` frame: landmarks rescaled
            _image(root / "output" / name, w * scale, h * scale)
            gt.append(kps[:, ::-1]), hw.append((h, w)), names.append(name)
            out[split][name] = kps * S / np.array([w, h])  # AFLW: keypoints *= imwidth / sizes (hw)
        _write(root / f"aflw_{split}_images.txt", "\n".join(names) + "\n")
        scipy.io.savemat(root / f"aflw_{split}_keypoints.mat", {"gt": np.array(gt), "hw": np.array(hw, float)})
    return out


def _pts(path: Path, kps) -> None:
    _write(path, "version: 1\nn_points:  68\n{\n" + "".join(f"{x:.3f} {y:.3f}\n" for x, y in kps) + "}\n")


def _bbox_mat(path: Path, entries) -> None:
    cell = np.empty((1, len(entries)), dtype=object)
    for i, (name, bb) in enumerate(entries):
        cell[0, i] = {"imgName": name, "bb_detector": np.array([[0.0, 0, 1, 1]]), "bb_ground_truth": np.array([bb])}
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"bounding_boxes": cell})


def _official_300w(kps, bb, w, h):
    """ThreeHundredW.__getitem__ by hand: keypoints, and the map of a pixel centre through its crop.

    Returns {"kps": (68, 2) official keypoints, "raw": the .pts points,
    "pixel": function (x, y) 0-based pixel -> stored}.
    """
    xmin, ymin, xmax, ymax = bb
    bw, bh = xmax - xmin + 1, ymax - ymin + 1
    bcx, bcy = xmin + (bw + 1) / 2, ymin + (bh + 1) / 2
    fac = 52 / bw
    cutl = int(np.floor(fac * bcx)) - 26 + 1 - 24 - 1  # bx = bcx_ - bw_/2 + 1; int(bx - pp); cutl = bx - 1
    cutt = int(np.floor(fac * bcy)) - 26 + 1 - 24 - 2 - 1
    keypts = np.asarray(kps, np.float64) * fac - (cutl, cutt)
    official = (keypts - 1) * S / 100
    rw, rh = int(w * fac), int(h * fac)  # im.resize((int(im.width * fac), int(im.height * fac)))

    def pixel(xy):
        resized = [(xy[0] + 0.5) * rw / w - 0.5, (xy[1] + 0.5) * rh / h - 0.5]
        return _pixel_map(resized, cutl, cutt, 100, 100, S, S)

    return {"kps": official, "raw": np.asarray(kps, np.float64), "pixel": pixel}


def build_300w(root: Path):
    rng = np.random.default_rng(3)
    layout = {  # bbox file stem -> (folder, [(image name, has .pts)])
        "afw": ("afw", [("a1.jpg", True)]),
        "helen_trainset": ("helen/trainset", [("h1.jpg", True), ("h2.jpg", False)]),
        "ibug": ("ibug", [("image_001.jpg", True), ("other.jpg", True)]),
    }
    out = {"train": {}, "test": {}}
    for stem, (folder, names) in layout.items():
        entries = []
        for name, has_pts in names:
            # 1-based, 3 decimals as in the .pts file
            kps = np.stack([rng.uniform(40, 150, 68), rng.uniform(50, 170, 68)], 1).round(3)
            bb = [kps[:, 0].min(), kps[:, 1].min(), kps[:, 0].max(), kps[:, 1].max()]
            entries.append((name, bb))
            _image(root / folder / name, 200, 220, [kps[36].round() - 1])
            if has_pts:
                _pts((root / folder / name).with_suffix(".pts"), kps)
            if has_pts and not name.startswith("other"):
                split = "test" if stem == "ibug" else "train"
                out[split][f"{folder}/{name}"] = _official_300w(kps, bb, 200, 220)
        _bbox_mat(root / "Bounding Boxes" / f"bounding_boxes_{stem}.mat", entries)
    return out


def build_cub(root: Path, size: int = 96):
    rng = np.random.default_rng(4)
    picks = {"train": split_list("train")[:2], "val": split_list("val")[:1], "test": split_list("test")[:1]}
    rels = [r for v in picks.values() for r in v] + ["001.Black_footed_Albatross/not_in_split.jpg"]
    _write(root / "images.txt", "".join(f"{i} {r}\n" for i, r in enumerate(rels, 1)))
    parts, out, masks = [], {}, {}
    for i, rel in enumerate(rels, 1):
        w, h = 120 + 10 * i, 80 + 7 * i
        kps = np.stack([rng.uniform(2, w - 3, 15), rng.uniform(2, h - 3, 15)], 1).round(1)
        vis = np.arange(15) % 4 != 1
        kps[~vis] = 0
        parts += [f"{i} {p + 1} {x:g} {y:g} {int(v)}" for p, ((x, y), v) in enumerate(zip(kps, vis))]
        _image(root / "images" / rel, w, h)
        soft = np.zeros((h, w), np.uint8)
        soft[10:40, 20:70] = 200
        soft[40:50, 20:70] = 100  # below the 0.5 threshold
        mask_path = (root / "segmentations" / rel).with_suffix(".png")
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(soft).save(mask_path)
        expected = kps * size / np.array([w, h])  # CUB: fractions x / W, y / H times imwidth
        expected[~vis] = 0
        out[rel], masks[rel] = (expected, vis), ((soft >= 128) * 255).astype(np.uint8)
    _write(root / "parts/part_locs.txt", "\n".join(parts) + "\n")
    _write(root / "parts/parts.txt", "".join(f"{i} part {i}\n" for i in range(1, 16)))
    return {s: {r: out[r] for r in v} for s, v in picks.items()}, masks


def build_inat(root: Path):
    _image(root / "Aves/sp1/a.jpg", 200, 100, [(99, 49)])
    _image(root / "Aves/sp2/b.jpg", 90, 150, [(44, 74)])
    _write(root / "aves_100k.txt", "Aves/sp1/a.jpg\ntrain_val_images/Aves/sp2/b.jpg\n")


# ---------------------------------------------------------------- happy paths


def _load_all(conv, items):
    return {item.image_id: conv.load(item) for item in items}


def test_celeba_aligned_geometry_splits_and_mafl_exclusion(tmp_path):
    expected = build_celeba(tmp_path)
    conv = get_converter("celeba")(str(tmp_path))
    splits = conv.splits()
    assert {s: [i.image_id for i in v] for s, v in splits.items()} == {
        "train": ["000001.jpg", "000002.jpg"], "val": ["000004.jpg"], "test": []}
    assert conv.excluded_mafl == 3 and conv.info.stored_size == S and conv.info.border == 20
    for name, rec in _load_all(conv, splits["train"] + splits["val"]).items():
        assert rec.image.shape == (S, S, 3) and rec.image.dtype == np.uint8
        assert rec.keypoints.dtype == np.float32 and rec.visible.all()
        np.testing.assert_allclose(rec.keypoints, expected[name], atol=1e-4)
        raw0 = expected[name][0] * 178 / S + (0, 30)  # landmark 0 as annotated (the blob's pixel)
        blob = _pixel_map(raw0, 0, 30, 178, 178, S, S)  # crop(im, 30, 0, 178, 178), Resize(imwidth)
        assert np.linalg.norm(_blob_centre(rec.image) - blob) < 0.5  # pixels cut and resized officially
    assert rec.identity == "11"


def test_mafl_splits_and_geometry_at_128(tmp_path):
    expected = build_celeba(tmp_path)
    conv = get_converter("mafl")(str(tmp_path), image_size=128)
    splits = conv.splits()
    assert [i.image_id for i in splits["train"]] == ["000003.jpg", "000006.jpg"]
    assert [i.image_id for i in splits["test"]] == ["000005.jpg"]
    size = conv.info.stored_size
    assert size == 182 and conv.info.border == 27  # 128 + 2 * round(128 * 20 / 96)
    rec = conv.load(splits["test"][0])
    # keypoints *= imwidth / 178 at imwidth 182
    np.testing.assert_allclose(rec.keypoints, expected["000005.jpg"] * size / S, atol=1e-4)
    # The split's order is list_eval_partition.txt's (official MAFLAligned), not the MAFL list's.
    _write(tmp_path / "MAFL/training.txt", "000006.jpg\n000003.jpg\n")
    assert [i.image_id for i in get_converter("mafl")(str(tmp_path)).splits()["train"]] == ["000003.jpg", "000006.jpg"]
    lines = (tmp_path / "Eval/list_eval_partition.txt").read_text().splitlines()
    _write(tmp_path / "Eval/list_eval_partition.txt", "\n".join(lines[::-1]) + "\n")
    assert [i.image_id for i in get_converter("mafl")(str(tmp_path)).splits()["train"]] == ["000006.jpg", "000003.jpg"]


def test_celeba_aligned_prefers_the_hq_folder(tmp_path):
    expected = build_celeba(tmp_path)
    (tmp_path / "Img/img_align_celeba").rename(tmp_path / "Img/img_align_celeba_hq")
    (tmp_path / "Img/img_align_celeba").mkdir()  # both folders: the official default, _hq, wins
    for name in ("celeba", "mafl"):
        items = [i for v in get_converter(name)(str(tmp_path)).splits().values() for i in v]
        assert items and all(Path(i.path).parent.name == "img_align_celeba_hq" for i in items)
    # an HQ image at twice the size: the crop box scales, the 178x218-frame landmarks do not
    big = tmp_path / "Img/img_align_celeba_hq/000005.jpg"
    Image.open(big).resize((356, 436), Image.Resampling.NEAREST).save(big, quality=95)
    conv = get_converter("mafl")(str(tmp_path))
    rec = conv.load(conv.splits()["test"][0])
    np.testing.assert_allclose(rec.keypoints, expected["000005.jpg"], atol=1e-4)
    raw0 = expected["000005.jpg"][0] * 178 / S + (0, 30)
    assert np.linalg.norm(_blob_centre(rec.image) - _pixel_map(raw0, 0, 30, 178, 178, S, S)) < 0.5
    forced = get_converter("mafl")(str(tmp_path), options={"image_dir": "Img/img_align_celeba"}).splits()
    assert Path(forced["test"][0].path).parent.name == "img_align_celeba"
    (tmp_path / "Img/img_align_celeba").rmdir()
    (tmp_path / "Img/img_align_celeba_hq").rename(tmp_path / "Img/img_align_celeba")
    only = get_converter("mafl")(str(tmp_path)).splits()  # no _hq folder: img_align_celeba
    assert Path(only["test"][0].path).parent.name == "img_align_celeba"


def test_celeba_wild_default_resizes_the_whole_image(tmp_path):
    expected = build_celeba(tmp_path, aligned=False)
    conv = get_converter("celeba-wild")(str(tmp_path))
    splits = conv.splits()
    assert [i.image_id for i in splits["train"]] == ["000001.jpg", "000002.jpg"]
    assert Path(splits["train"][0].path).parent == tmp_path / "Img/img_celeba"
    for name, rec in _load_all(conv, splits["train"] + splits["val"]).items():
        assert rec.image.shape == (S, S, 3)
        np.testing.assert_allclose(rec.keypoints, expected[name], atol=1e-4)  # x * S / W, y * S / H
        assert rec.visible.all()  # every landmark is in the image
        raw0 = expected[name][0] * (260 / S, 300 / S)  # landmark 0 as annotated (the blob's pixel)
        blob = _pixel_map(raw0, 0, 0, 260, 300, S, S)
        assert np.linalg.norm(_blob_centre(rec.image) - blob) < 0.5  # the whole image, stretched
    # the official folder, Img_in_the_wild, wins over Img/img_celeba when it exists
    (tmp_path / "Img/img_celeba").rename(tmp_path / "Img_in_the_wild")
    (tmp_path / "Img/img_celeba").mkdir()
    splits = get_converter("celeba-wild")(str(tmp_path)).splits()
    assert Path(splits["train"][0].path).parent == tmp_path / "Img_in_the_wild"


def test_celeba_wild_face_box_option(tmp_path):
    expected = build_celeba(tmp_path, aligned=False, crop="face-box")
    conv = get_converter("celeba-wild")(str(tmp_path), options={"crop": "face-box"})
    splits = conv.splits()
    assert [i.image_id for i in splits["train"]] == ["000001.jpg", "000002.jpg"]
    for name, rec in _load_all(conv, splits["train"] + splits["val"]).items():
        np.testing.assert_allclose(rec.keypoints, expected[name], atol=1e-4)  # (x - left) * S / side
        assert rec.visible.tolist() == [True] * 4 + [False]
        assert np.linalg.norm(_blob_centre(rec.image) - expected[name][0]) < 1.0
    with pytest.raises(ConfigError, match="crop must be one of none, face-box"):
        get_converter("celeba-wild")(str(tmp_path), options={"crop": "centre"})


def test_aflw_mtfl(tmp_path):
    expected = build_aflw_mtfl(tmp_path)
    conv = get_converter("aflw-mtfl")(str(tmp_path))
    splits = conv.splits()
    for split in ("train", "test"):
        assert [i.image_id for i in splits[split]] == list(expected[split])
        for name, rec in _load_all(conv, splits[split]).items():
            assert rec.image.shape == (S, S, 3)
            np.testing.assert_allclose(rec.keypoints, expected[split][name], atol=1e-4)


def test_aflw_r(tmp_path):
    expected = build_aflw(tmp_path)
    conv = get_converter("aflw")(str(tmp_path))
    splits = conv.splits()
    for split in ("train", "test"):
        assert [i.image_id for i in splits[split]] == list(expected[split])
        for name, rec in _load_all(conv, splits[split]).items():
            assert rec.image.shape == (S, S, 3)
            np.testing.assert_allclose(rec.keypoints, expected[split][name], atol=1e-4)


def test_300w_crop_and_subsets(tmp_path):
    expected = build_300w(tmp_path)
    conv = get_converter("300w")(str(tmp_path))
    splits = conv.splits()
    assert conv.absent == {"helen/trainset": 1} and conv.info.eye_indices == (36, 45)
    for split in ("train", "test"):
        assert [i.image_id for i in splits[split]] == list(expected[split])
        for name, rec in _load_all(conv, splits[split]).items():
            want = expected[split][name]
            assert rec.keypoints.shape == (68, 2)
            np.testing.assert_allclose(rec.keypoints, want["kps"], atol=1e-4)
            face_w = rec.keypoints[:, 0].max() - rec.keypoints[:, 0].min()
            assert abs(face_w - 52 * S / 100) < 2  # face 52 px of a 100 px crop
            blob = want["pixel"](np.round(want["raw"][36]) - 1)
            assert np.linalg.norm(_blob_centre(rec.image) - blob) < 0.5


def _pil_two_pass(image: np.ndarray, size: tuple[int, int], resample=Image.Resampling.BILINEAR) -> np.ndarray:
    """PIL's resize in Pillow 8.4's order (the official environment): horizontal pass, then vertical."""
    im = Image.fromarray(image)
    if im.size[0] != size[0]:
        im = im.resize((size[0], im.size[1]), resample)
    if im.size[1] != size[1]:
        im = im.resize(size, resample)
    return np.asarray(im)


def test_300w_image_is_the_official_double_resample(tmp_path):
    """ThreeHundredW: im.resize((int(W fac), int(H fac))) with PIL's default (bicubic), pad_and_crop of the
    100 px window (zeros where it leaves the image), then Resize(imwidth), bilinear: pixel for pixel."""
    w, h = 200, 220
    xs, ys = np.meshgrid(np.arange(w), np.arange(h))
    wave = 127.5 + 100 * np.sin(2 * np.pi * xs / 23.0) * np.cos(2 * np.pi * ys / 29.0)
    image = np.repeat(wave[..., None], 3, axis=2).astype(np.uint8)
    bw = 10400 / 94.9  # 200 * 52 / bw = 94.9: the official resized width is 94, not 94.9
    bb = [60.0, 70.0, 60.0 + bw - 1, 70.0 + bw - 1]
    kps = np.stack([np.linspace(bb[0], bb[2], 68), np.linspace(bb[1], bb[3], 68)], 1).round(3)
    (tmp_path / "afw").mkdir()
    Image.fromarray(image).save(tmp_path / "afw/a1.jpg", format="PNG")  # lossless
    _pts(tmp_path / "afw/a1.pts", kps)
    _bbox_mat(tmp_path / "Bounding Boxes/bounding_boxes_afw.mat", [("a1.jpg", bb)])
    conv = get_converter("300w")(str(tmp_path))
    rec = conv.load(conv.splits()["train"][0])
    np.testing.assert_allclose(rec.keypoints, _official_300w(kps, bb, w, h)["kps"], atol=1e-4)
    fac = 52 / bw
    cutl = int(np.floor(fac * (bb[0] + (bw + 1) / 2))) - 50
    cutt = int(np.floor(fac * (bb[1] + (bw + 1) / 2))) - 52
    small = _pil_two_pass(image, (int(w * fac), int(h * fac)), Image.Resampling.BICUBIC)
    canvas = np.zeros((small.shape[0] + 200, small.shape[1] + 200, 3), np.uint8)  # pad_and_crop's zeros
    canvas[100:100 + small.shape[0], 100:100 + small.shape[1]] = small
    window = canvas[100 + cutt:200 + cutt, 100 + cutl:200 + cutl]
    assert cutt < 0 or cutl < 0 or cutt + 100 > small.shape[0] or cutl + 100 > small.shape[1]  # it pads
    np.testing.assert_array_equal(rec.image, _pil_two_pass(window, (S, S)))


def test_cub_parts_masks_and_subset(tmp_path):
    expected, masks = build_cub(tmp_path)
    conv = get_converter("cub")(str(tmp_path))
    splits = conv.splits()
    assert conv.absent == {s: len(split_list(s)) - len(expected[s]) for s in expected}
    assert conv.info.landmark_names[0] == "part 1" and conv.info.border == 0 and conv.info.has_masks
    for split, want in expected.items():
        assert [i.image_id for i in splits[split]] == list(want)
        for name, rec in _load_all(conv, splits[split]).items():
            kps, vis = want[name]
            np.testing.assert_allclose(rec.keypoints, kps, atol=1e-4)
            assert rec.visible.tolist() == vis.tolist()
            src = masks[name]
            h, w = src.shape
            rows = np.floor((np.arange(96) + 0.5) * h / 96).astype(int)
            cols = np.floor((np.arange(96) + 0.5) * w / 96).astype(int)
            np.testing.assert_array_equal(rec.mask, src[rows][:, cols])  # nearest, same grid as the image
            assert rec.mask.shape == rec.image.shape[:2] == (96, 96)
            # CUB's Resize((96, 96)) of the whole photo, PIL renormalising at the edges (no dark ring)
            raw = np.asarray(Image.open(next(tmp_path.glob(f"images/*/{name.split('/')[-1]}"))).convert("RGB"))
            np.testing.assert_array_equal(rec.image, _pil_two_pass(raw, (96, 96)))


def test_inat_unlabeled_and_list_file(tmp_path):
    build_inat(tmp_path)
    conv = get_converter("inat-aves")(str(tmp_path), image_size=64)
    items = conv.splits()["train"]
    assert [i.image_id for i in items] == ["Aves/sp1/a.jpg", "Aves/sp2/b.jpg"]
    for rec in _load_all(conv, items).values():
        assert rec.image.shape == (64, 64, 3) and rec.keypoints.shape == (0, 2) and rec.visible.shape == (0,)
        assert np.linalg.norm(_blob_centre(rec.image) - 31.5) < 1.0  # centred blob stays centred
    (tmp_path / "other.txt").write_text("Aves/sp1/a.jpg\n")
    with pytest.raises(BadItem, match="exactly one"):
        get_converter("inat-aves")(str(tmp_path)).splits()
    assert len(get_converter("inat-aves")(str(tmp_path), options={"list_file": "other.txt"}).splits()["train"]) == 1


def _band_centre(image, axis):
    """Mean column (axis=1) or row (axis=0) of the red pixels of an image."""
    red = (image[..., 0] > 150) & (image[..., 1] < 100)
    return np.nonzero(red)[axis].mean()


@pytest.mark.parametrize("crop, column", [(None, 125 * 64 / 200 - 0.5),
                                          ("center", (125 - 50) * 64 / 100 - 0.5)])
def test_inat_squash_by_default_and_center_crop_option(tmp_path, crop, column):
    """A 200x100 photo with red bands at columns 120..129 and rows 20..29: InatAve's
    Resize((imwidth, imwidth)) stretches it; crop=center keeps the middle 100x100."""
    image = np.full((100, 200, 3), 30, np.uint8)
    image[:, 120:130] = image[20:30, :] = (255, 0, 0)
    path = tmp_path / "Aves/sp1/a.jpg"
    path.parent.mkdir(parents=True)
    Image.fromarray(image).save(path, quality=95)
    _write(tmp_path / "list.txt", "Aves/sp1/a.jpg\n")
    options = {} if crop is None else {"crop": crop}
    conv = get_converter("inat-aves")(str(tmp_path), image_size=64, options=options)
    rec = conv.load(conv.splits()["train"][0])
    assert rec.image.shape == (64, 64, 3)
    vertical = rec.image[40:]  # below the horizontal band
    horizontal = rec.image[:, :10] if crop is None else rec.image[:, 56:]  # away from the vertical band
    assert abs(_band_centre(vertical, 1) - column) < 0.3
    assert abs(_band_centre(horizontal, 0) - (25 * 64 / 100 - 0.5)) < 0.3  # rows: 100 -> 64 either way
    if crop is None:  # InatAve's Resize((imwidth, imwidth)): PIL's, whose edge pixels are not darkened
        raw = np.asarray(Image.open(path).convert("RGB"))
        np.testing.assert_array_equal(rec.image, _pil_two_pass(raw, (64, 64)))
        assert rec.image[0, 0, 0] == rec.image[0, 0, 2] and rec.image[:, 0].mean() > 25  # the 30-gray edge kept
    with pytest.raises(ConfigError, match="crop must be one of none, center"):
        get_converter("inat-aves")(str(tmp_path), options={"crop": "face-box"})


def test_unknown_option_and_missing_root():
    with pytest.raises(ConfigError, match="unknown option"):
        get_converter("cub")("/x", options={"bogus": 1})
    with pytest.raises(ConfigError, match="--root"):
        get_converter("mafl")(None)
    with pytest.raises(ConfigError, match="landmark_col"):
        get_converter("aflw-mtfl")("/x", options={"landmark_col": "5"})


def test_missing_files_are_named(tmp_path):
    looked_for = "image folder not found: looked for Img/img_align_celeba_hq, Img/img_align_celeba"
    with pytest.raises(BadItem, match=looked_for):
        get_converter("celeba")(str(tmp_path)).splits()
    (tmp_path / "Img/img_align_celeba").mkdir(parents=True)
    with pytest.raises(BadItem, match="list_landmarks_align_celeba.txt: list_landmarks_align_celeba.txt not found"):
        get_converter("celeba")(str(tmp_path)).splits()
    with pytest.raises(BadItem, match="bounding_boxes_"):
        get_converter("300w")(str(tmp_path)).splits()


# ---------------------------------------------------------------- bad input


def _drop_line(path: Path, line: int) -> None:
    lines = path.read_text().splitlines()
    del lines[line - 1]
    path.write_text("\n".join(lines) + "\n")


def _garbage(path: Path) -> None:
    path.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")


def _mat_gt(root: Path, row: int, col: int, xy: int, value: float) -> None:
    mat = scipy.io.loadmat(root / "aflw_train_keypoints.mat")
    mat["gt"][row, col, xy] = value
    scipy.io.savemat(root / "aflw_train_keypoints.mat", {"gt": mat["gt"], "hw": mat["hw"]})


LM = "Anno/list_landmarks_align_celeba.txt"
CSV = "aflw_cropped/facedata_cropped.csv"
PTS = "afw/a1.pts"
PARTS = "parts/part_locs.txt"
ROW1 = "000001.jpg 69 109 106 113 77 142 73 152 108 154"
BUILDERS = {
    "celeba": build_celeba, "mafl": build_celeba, "celeba-wild": lambda r: build_celeba(r, aligned=False),
    "celeba-wild-box": lambda r: build_celeba(r, aligned=False, crop="face-box"),
    "aflw-mtfl": build_aflw_mtfl, "aflw": build_aflw, "300w": build_300w, "cub": build_cub, "inat-aves": build_inat,
}
# BAD cases that run a converter with options: case name -> (converter, options)
CONVERTER_OPTIONS = {"celeba-wild-box": ("celeba-wild", {"crop": "face-box"})}
# (dataset, corruption, phase, text the message must contain: file and line)
BAD = [
    ("celeba", lambda r: _edit(r / LM, 3, ROW1.replace("109", "abc")), "splits", "align_celeba.txt:3"),
    ("celeba", lambda r: _edit(r / LM, 4, ROW1.replace("01.jpg", "02.jpg").rsplit(" ", 1)[0]), "splits", "align_celeba.txt:4"),
    ("celeba", lambda r: _edit(r / LM, 3, ROW1.replace("109", "nan")), "splits", "align_celeba.txt:3"),
    ("celeba", lambda r: _edit(r / LM, 3, ROW1.replace("106", "300")), "splits", "align_celeba.txt:3"),
    ("celeba", lambda r: _edit(r / "Eval/list_eval_partition.txt", 2, "000002.jpg 7"), "splits", "partition.txt:2"),
    ("celeba", lambda r: (r / "Img/img_align_celeba/000002.jpg").unlink(), "load", "align_celeba.txt:4"),
    ("celeba", lambda r: _garbage(r / "Img/img_align_celeba/000001.jpg"), "load", "align_celeba.txt:3"),
    ("mafl", lambda r: _edit(r / "MAFL/testing.txt", 1, "999999.jpg"), "splits", "testing.txt:1"),
    ("celeba-wild", lambda r: _edit(r / "Anno/list_landmarks_celeba.txt", 3, ROW1.replace("106", "900")),
     "load", "list_landmarks_celeba.txt:3"),
    ("celeba-wild-box", lambda r: _edit(r / "Anno/list_bbox_celeba.txt", 3, "000001.jpg 10 10 0 50"),
     "splits", "list_bbox_celeba.txt:3"),
    ("aflw-mtfl", lambda r: _edit(r / CSV, 2, "a,b,c"), "splits", "facedata_cropped.csv:2"),
    ("aflw-mtfl", lambda r: _edit(r / CSV, 2, (r / CSV).read_text().splitlines()[1].replace(",1,", ",1,nan,", 1)
                                  .rsplit(",", 1)[0]), "splits", "facedata_cropped.csv:2"),
    ("aflw-mtfl", lambda r: _edit(r / CSV, 2, (r / CSV).read_text().splitlines()[1].replace(",1,", ",1,400,", 1)
                                  .rsplit(",", 1)[0]), "splits", "facedata_cropped.csv:2"),
    ("aflw-mtfl", lambda r: _edit(r / "MTFL/testing.txt", 1, "AFLW\\0-image00000.jpg 1 2 3"), "splits", "testing.txt:1"),
    ("aflw-mtfl", lambda r: _edit(r / "MTFL/testing.txt", 2, "AFLW\\1-image00001.jpg " + "400 " * 10),
     "load", "testing.txt:2"),
    ("aflw-mtfl", lambda r: (r / "MTFL/AFLW/1-image00001.jpg").unlink(), "load", "testing.txt:2"),
    ("aflw", lambda r: _mat_gt(r, 1, 2, 0, np.nan), "splits", "aflw_train_keypoints.mat:2"),
    ("aflw", lambda r: _mat_gt(r, 0, 0, 1, 500.0), "splits", "aflw_train_keypoints.mat:1"),
    ("aflw", lambda r: _garbage(r / "output/test/face0.jpg"), "load", "aflw_test_keypoints.mat:1"),
    ("aflw", lambda r: (r / "aflw_train_images.txt").write_text("a.jpg\nb.jpg\nc.jpg\n"), "fatal",
     "aflw_train_images.txt: 3 lines but aflw_train_keypoints.mat has 2 rows"),
    ("300w", lambda r: _drop_line(r / PTS, 20), "splits", "a1.pts:70"),
    ("300w", lambda r: _edit(r / PTS, 10, "abc 5"), "splits", "a1.pts:10"),
    ("300w", lambda r: _edit(r / PTS, 10, "nan 5"), "splits", "a1.pts:10"),
    ("300w", lambda r: _edit(r / PTS, 2, "n_points: 5"), "splits", "a1.pts:2"),
    ("300w", lambda r: _edit(r / PTS, 11, "900 5"), "load", "a1.pts:11"),
    ("300w", lambda r: (r / "afw/a1.jpg").unlink(), "load", "bounding_boxes_afw.mat:1"),
    ("cub", lambda r: _edit(r / PARTS, 1, "1 1 abc 3 1"), "splits", "part_locs.txt:1"),
    ("cub", lambda r: _edit(r / PARTS, 1, "1 1 nan 3 1"), "splits", "part_locs.txt:1"),
    ("cub", lambda r: _drop_line(r / PARTS, 15), "splits", "part_locs.txt:14"),
    ("cub", lambda r: _edit(r / "images.txt", 2, "2"), "splits", "images.txt:2"),
    ("cub", lambda r: _edit(r / PARTS, 1, "1 1 5000 3 1"), "load", "part_locs.txt:1"),
    ("cub", lambda r: _garbage(r / "images" / split_list("train")[1]), "load", "images.txt:2"),
    ("cub", lambda r: (r / "segmentations" / split_list("train")[0]).with_suffix(".png").unlink(),
     "load", "images.txt:1"),
    ("inat-aves", lambda r: _edit(r / "aves_100k.txt", 1, "../outside.jpg"), "splits", "aves_100k.txt:1"),
    ("inat-aves", lambda r: _edit(r / "aves_100k.txt", 2, "Aves/sp1/a.jpg"), "splits", "aves_100k.txt:2"),
    ("inat-aves", lambda r: _garbage(r / "Aves/sp2/b.jpg"), "load", "aves_100k.txt:2"),
]


def _count(splits):
    return sum(len(v) for v in splits.values())


@pytest.mark.parametrize("dataset, corrupt, phase, where", BAD, ids=[f"{c[0]}-{i}" for i, c in enumerate(BAD)])
def test_bad_input_names_file_and_line(tmp_path, dataset, corrupt, phase, where):
    BUILDERS[dataset](tmp_path)
    name, options = CONVERTER_OPTIONS.get(dataset, (dataset, {}))
    clean = _count(get_converter(name)(str(tmp_path), options=options).splits())
    corrupt(tmp_path)
    conv = get_converter(name)(str(tmp_path), options=options)
    if phase in ("splits", "fatal"):
        with pytest.raises(BadItem) as exc:
            conv.splits()
        assert where in str(exc.value)
        lenient = get_converter(name)(str(tmp_path), skip_bad=True, options=options)
        if phase == "fatal":  # the whole file is unusable: skip_bad cannot help
            with pytest.raises(BadItem):
                lenient.splits()
            return
        assert _count(lenient.splits()) == clean - 1  # the bad item is left out, the rest kept
        assert len(lenient.skipped) == 1 and where in str(lenient.skipped[0])
    else:
        errors = []
        for item in [i for v in conv.splits().values() for i in v]:
            try:
                conv.load(item)
            except BadItem as err:
                errors.append(str(err))
        assert len(errors) == 1 and where in errors[0], errors
