"""The frozen-representation cache (landmarks.features) and the backbone/projector sources."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

from landmarks import features
from landmarks.data.normalization import CELEBA_MEAN, CELEBA_STD
from landmarks.data.reader import eval_geometry, load_split
from landmarks.errors import UserError
from landmarks.features import get_features
from landmarks.models import LandmarkRegressor, build_backbone
from landmarks.models.formats import save_backbone
from landmarks.models.representation import assemble, conv4, hypercolumn, landmarks_from_blocks, stage_blocks
from landmarks.sources import fingerprint, load_backbone, load_projector


@pytest.fixture
def random_r18():
    return load_backbone("random", "resnet18", seed=0)


def test_assemble_is_the_hypercolumn():
    torch.manual_seed(0)
    backbone = build_backbone("resnet18").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        stages = backbone.stages(x)
        for layers in (1, 4):
            torch.testing.assert_close(assemble(stages, "hypercolumn", layers, (16, 16)),
                                       hypercolumn(backbone, x, layers=layers, size=(16, 16)))
        torch.testing.assert_close(assemble(stages, "conv4", 4, (16, 16)), conv4(backbone, x))  # its own 2x2 map


def test_eval_geometry_crops_and_rescales_keypoints():
    images = np.zeros((1, 20, 20, 3), np.uint8)
    images[0, 5, 7] = 255  # the keypoint's pixel
    batch = {"image": images, "keypoints": np.array([[[7.0, 5.0]]], np.float32), "visible": np.ones((1, 1), bool)}
    same = eval_geometry(batch, border=2, image_size=16)
    assert same["image"].shape == (1, 16, 16, 3)
    np.testing.assert_allclose(same["keypoints"], [[[5.0, 3.0]]])
    assert same["image"][0, 3, 5].max() == 255
    doubled = eval_geometry(batch, border=2, image_size=32)  # pixel centres: x' = (x + 0.5) * 2 - 0.5
    np.testing.assert_allclose(doubled["keypoints"], [[[10.5, 6.5]]])


def test_fingerprint_follows_weights_not_head(random_r18):
    backbone, info = random_r18
    assert info["init"] == "random" and info["fingerprint"] == fingerprint(backbone)
    assert load_backbone("random", "resnet18", seed=0)[1]["fingerprint"] == info["fingerprint"]
    assert load_backbone("random", "resnet18", seed=1)[1]["fingerprint"] != info["fingerprint"]
    with torch.no_grad():
        backbone.fc.weight.add_(1.0)
    assert fingerprint(backbone) == info["fingerprint"]


def test_cache_is_computed_once_and_identical(eval_data, random_r18, tmp_path):
    backbone, info = random_r18
    path = str(eval_data["faces"])
    before = dict(features.CACHE_STATS)
    first = get_features(backbone, info["fingerprint"], path, "test", "hypercolumn", 32, cache_dir=str(tmp_path))
    second = get_features(backbone, info["fingerprint"], path, "test", "conv4", 32, cache_dir=str(tmp_path))
    assert features.CACHE_STATS["misses"] == before["misses"] + 1
    assert features.CACHE_STATS["hits"] == before["hits"] + 1
    assert not first.hit and second.hit and first.key == second.key
    idx = np.arange(len(first))
    torch.testing.assert_close(first.dense(idx), get_features(
        backbone, info["fingerprint"], path, "test", "hypercolumn", 32, cache_dir=str(tmp_path)).dense(idx))
    assert first.dense(idx).shape == (len(first), 960, 16, 16) and first.channels == 960
    assert second.dense(idx).shape == (len(first), 256, 2, 2)  # conv4 at its own resolution

    # The cached stage outputs are the backbone's on the same inputs, float32 as it computed them.
    split = load_split(path, "test", 32)
    np.testing.assert_array_equal(first.keypoints, split["keypoints"])
    assert list(first.image_ids) == list(split["image_id"]) and first.masks.shape == (len(first), 32, 32)
    mean, std = torch.tensor(CELEBA_MEAN).view(1, 3, 1, 1), torch.tensor(CELEBA_STD).view(1, 3, 1, 1)  # a face set
    x = (torch.from_numpy(split["image"]).permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.no_grad():
        direct = hypercolumn(backbone, x, size=(16, 16))
    torch.testing.assert_close(first.dense(idx), direct, atol=1e-5, rtol=1e-5)
    assert all(s.dtype == np.float32 for s in first.stages)
    # ... so a regressor reads the same landmarks from the cache as from the images (float16 moved them
    # by 0.15 px on average at 96 px): here to within 1e-3 px of the 32 px input
    regressor = LandmarkRegressor(960, 5, points_per_landmark=4)
    with torch.no_grad():
        cached = landmarks_from_blocks(regressor, stage_blocks(first.stage_batch(idx), "hypercolumn"), (16, 16))
        fresh = regressor(direct)
    assert (cached - fresh).abs().max().item() * 31 / 2 < 1e-3

    meta = json.loads((tmp_path / first.key / "meta.json").read_text())
    assert meta["backbone_fingerprint"] == info["fingerprint"] and meta["split"] == "test"
    other = load_backbone("random", "resnet18", seed=3)
    assert get_features(other[0], other[1]["fingerprint"], path, "test", "hypercolumn", 32,
                        cache_dir=str(tmp_path)).key != first.key


def test_concurrent_requests_compute_once(eval_data, random_r18, tmp_path):
    backbone, info = random_r18
    before = dict(features.CACHE_STATS)
    results = []

    def request():
        results.append(get_features(backbone, info["fingerprint"], str(eval_data["faces"]), "val",
                                    "hypercolumn", 32, cache_dir=str(tmp_path)))

    threads = [threading.Thread(target=request) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert features.CACHE_STATS["misses"] == before["misses"] + 1
    assert features.CACHE_STATS["hits"] == before["hits"] + 1
    assert sorted(r.hit for r in results) == [False, True]
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == [results[0].key]  # no temp dirs left


def test_default_cache_dir_is_inside_a_local_dataset(eval_data, random_r18):
    backbone, info = random_r18
    fs = get_features(backbone, info["fingerprint"], str(eval_data["faces"]), "val", "hypercolumn", 32)
    assert fs.directory == eval_data["faces"] / "_features" / fs.key


def test_backbone_files_and_mismatches(tmp_path):
    r18 = build_backbone("resnet18")
    save_backbone(r18, {"backbone": "resnet18", "low_dim": 128}, tmp_path / "ours")
    _, info = load_backbone(str(tmp_path / "ours" / "backbone.pt"), "resnet18")
    assert info["init"] == "pretrained" and info["fingerprint"] == fingerprint(r18)
    with pytest.raises(UserError, match="'resnet18' backbone but model.backbone='resnet50'"):
        load_backbone(str(tmp_path / "ours" / "backbone.pt"), "resnet50")

    imagenet = build_backbone("resnet18", low_dim=1000).state_dict()  # torchvision layout: 1000-way fc
    torch.save(imagenet, tmp_path / "resnet18-imagenet.pth")
    assert load_backbone(str(tmp_path / "resnet18-imagenet.pth"), "resnet18")[1]["init"] == "imagenet"

    torch.save(build_backbone("resnet50_half").state_dict(), tmp_path / "half.pth")
    with pytest.raises(UserError, match="resnet50_half.*resnet18"):
        load_backbone(str(tmp_path / "half.pth"), "resnet18")
    with pytest.raises(UserError, match="no such checkpoint"):
        load_backbone(str(tmp_path / "missing.pt"), "resnet18")


def test_projector_must_match_the_backbone(tmp_path, random_r18):
    _, info = random_r18
    weight = torch.randn(8, 960, 1, 1)
    torch.save({"proj.weight": weight, "proj.bias": torch.zeros(8)}, tmp_path / "projector.pt")
    (tmp_path / "meta.json").write_text(json.dumps({"backbone_fingerprint": info["fingerprint"], "dim": 8,
                                                    "in_channels": 960, "layers": 4, "backbone": "resnet18"}))
    projector = load_projector(str(tmp_path / "projector.pt"), info["fingerprint"], 960)
    torch.testing.assert_close(projector.proj.weight, weight)
    with pytest.raises(UserError, match="trained on another backbone"):
        load_projector(str(tmp_path), "0" * 24, 960)
    with pytest.raises(UserError, match="maps 960 channels"):
        load_projector(str(tmp_path), info["fingerprint"], 256)


def test_ray_checkpoint_dir_and_mlflow_run_sources(tmp_path, monkeypatch):
    from landmarks import tracking
    from landmarks.models import MoCo
    from landmarks.train.checkpoint import save_checkpoint_dir

    moco = MoCo(build_backbone("resnet18"), dim=128, K=64)
    ckpt = save_checkpoint_dir({"model": moco.state_dict(), "epoch": 0, "step": 1},
                               {"backbone": "resnet18", "low_dim": 128}, tmp_path / "checkpoint_000000")
    _, info = load_backbone(str(ckpt), "resnet18")
    assert info["init"] == "pretrained" and info["fingerprint"] == fingerprint(moco.encoder_q)
    with pytest.raises(UserError, match="'resnet18' backbone but model.backbone='resnet50'"):
        load_backbone(str(ckpt), "resnet50")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    run = tracking.start_run("pretrain", "pretrain-test")
    save_backbone(moco.encoder_q, {"backbone": "resnet18", "low_dim": 128}, tmp_path / "art")
    run.log_artifact(tmp_path / "art", "backbone")
    _, from_run = load_backbone(run.run_id, "resnet18")
    assert from_run["fingerprint"] == info["fingerprint"] and from_run["mlflow_run_id"] == run.run_id
    with pytest.raises(UserError, match="does not exist"):
        load_backbone("0" * 32, "resnet18")
