"""read_dataset / read_split_numpy / device_batches over a ToyFaces dataset; a 2-worker Ray Train loop.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from landmarks.data import (
    ManifestError,
    device_batches,
    ingest,
    load_manifest,
    read_dataset,
    read_split_numpy,
)
from test_ingest import TOY, ToyFaces, load_cli_module, make_raw, ray_local, toy_record  # noqa: F401


@pytest.fixture(scope="module")
def toy(ray_local, tmp_path_factory):  # noqa: F811
    """A PNG ToyFaces dataset (lossless, so rows compare exactly): 12/4/4 rows, 5 rows a shard."""
    base = tmp_path_factory.mktemp("toy")
    raw = make_raw(base / "raw")
    ingest(TOY, str(raw), str(base / "ds"), rows_per_shard=5, options={"format": "png"}, progress=False)
    return raw, base / "ds"


def expected_rows(raw, split, **options):
    conv = ToyFaces(root=str(raw), options=options)
    return {it[1]: conv.load(it) for it in conv.splits()[split]}


def copy_of(toy, tmp_path):
    dst = tmp_path / "ds"
    shutil.copytree(toy[1], dst)
    return dst


def test_rows_match_what_was_ingested(toy):
    raw, ds_path = toy
    rows = read_dataset(str(ds_path), "train").take_all()
    want = expected_rows(raw, "train")
    assert sorted(r["image_id"] for r in rows) == sorted(want)
    for r in rows:
        rec = want[r["image_id"]]
        assert set(r) == {"image_id", "image", "keypoints", "visible", "identity", "mask"}
        assert r["image"].dtype == np.uint8 and r["image"].shape == (32, 32, 3)
        np.testing.assert_array_equal(r["image"], rec.image)
        assert r["keypoints"].dtype == np.float32 and r["keypoints"].shape == (3, 2)
        np.testing.assert_array_equal(r["keypoints"], rec.keypoints)
        np.testing.assert_array_equal(r["visible"], rec.visible)
        assert r["visible"].dtype == bool
        assert r["identity"] == rec.identity
        np.testing.assert_array_equal(r["mask"], rec.mask)
    m = load_manifest(str(ds_path))
    assert m.K == 3 and m.image_format == "png" and m.splits["train"].rows == 12


def test_read_split_numpy_in_ingest_order(toy):
    raw, ds_path = toy
    arrays = read_split_numpy(str(ds_path), "val")
    conv = ToyFaces(root=str(raw))
    items = conv.splits()["val"]
    assert arrays["image_id"].tolist() == [it[1] for it in items]
    assert arrays["image"].shape == (4, 32, 32, 3) and arrays["mask"].shape == (4, 32, 32)
    assert arrays["keypoints"].shape == (4, 3, 2) and arrays["visible"].shape == (4, 3)
    recs = [toy_record(it[1], it[2], it[3], it[0], 3, True) for it in items]
    np.testing.assert_array_equal(arrays["keypoints"], np.stack([r.keypoints for r in recs]))
    assert arrays["identity"].tolist() == [r.identity for r in recs]


@pytest.mark.parametrize("reader", [read_dataset, read_split_numpy])
def test_tampered_missing_and_extra_shards_are_refused_by_name(toy, tmp_path, reader):
    ds = copy_of(toy, tmp_path)
    shard = ds / "train" / "part-00001.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte changed
    shard.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=r"altered shard train/part-00001\.parquet: SHA-256"):
        reader(str(ds), "train")
    reader(str(ds), "val")  # other splits are still fine

    shard.unlink()
    with pytest.raises(ManifestError, match=r"missing shard train/part-00001\.parquet"):
        reader(str(ds), "train")

    shutil.copy(ds / "val" / "part-00000.parquet", ds / "val" / "part-00007.parquet")
    with pytest.raises(ManifestError, match=r"extra shard val/part-00007\.parquet"):
        reader(str(ds), "val")


def test_truncated_shard_and_verify_cli(toy, tmp_path, capsys):
    ds = copy_of(toy, tmp_path)
    shard = ds / "test" / "part-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(ManifestError, match=r"altered shard test/part-00000\.parquet: \d+ bytes, recorded"):
        read_dataset(str(ds), "test")
    assert load_cli_module().main(["--verify", "--out", str(ds)]) == 1
    assert "test/part-00000.parquet" in capsys.readouterr().err
    with pytest.raises(ManifestError, match="no split 'nope'; splits: train, val, test"):
        read_dataset(str(ds), "nope")


def test_fraction_is_seeded_exact_and_nested(toy):
    _, ds_path = toy
    ids = lambda ds: sorted(r["image_id"] for r in ds.take_all())
    half = ids(read_dataset(str(ds_path), "train", fraction=0.5, seed=7))
    assert len(half) == 6
    assert half == ids(read_dataset(str(ds_path), "train", fraction=0.5, seed=7))
    assert half == sorted(read_split_numpy(str(ds_path), "train", fraction=0.5, seed=7)["image_id"])
    quarter = sorted(read_split_numpy(str(ds_path), "train", fraction=0.25, seed=7)["image_id"])
    assert len(quarter) == 3 and set(quarter) <= set(half)
    others = {tuple(sorted(read_split_numpy(str(ds_path), "train", fraction=0.5, seed=s)["image_id"]))
              for s in range(8)}
    assert len(others) > 1  # the seed matters
    assert len(read_split_numpy(str(ds_path), "train", fraction=1.0)["image_id"]) == 12
    assert len(read_split_numpy(str(ds_path), "train", fraction=0.01)["image_id"]) == 1
    with pytest.raises(ValueError, match="fraction"):
        read_dataset(str(ds_path), "train", fraction=0.0)


def _by_content(images) -> list[bytes]:
    return sorted(np.ascontiguousarray(im).tobytes() for im in images)


@pytest.mark.parametrize("fmt,torchvision_from", [("png", None), ("jpeg", None), ("jpeg", 0)])
def test_images_only_reads_the_same_pixels_per_shard_file(ray_local, tmp_path, monkeypatch, fmt,  # noqa: F811
                                                          torchvision_from):
    """What pretraining reads: only the image column (decoded by PIL, or by torchvision for big
    JPEG splits: the same pixels), the same `fraction` rows, and at least one read task per shard
    file (the V2 reader packs a small split into one task)."""
    from landmarks.data import reader
    from landmarks.data.reader import _prepare, _read_parquet_per_file

    if torchvision_from is not None:
        monkeypatch.setattr(reader, "TORCHVISION_DECODE_MIN_ROWS", torchvision_from)

    ds_path = tmp_path / "ds"
    ingest(TOY, str(make_raw(tmp_path / "raw")), str(ds_path), rows_per_shard=5, options={"format": fmt},
           progress=False)
    full = read_split_numpy(str(ds_path), "train")
    rows = read_dataset(str(ds_path), "train", images_only=True).take_all()
    assert all(set(r) == {"image"} and r["image"].dtype == np.uint8 for r in rows)
    assert _by_content(r["image"] for r in rows) == _by_content(full["image"])
    half = read_split_numpy(str(ds_path), "train", fraction=0.5, seed=7)
    rows = read_dataset(str(ds_path), "train", fraction=0.5, seed=7, images_only=True).take_all()
    assert len(rows) == 6 and _by_content(r["image"] for r in rows) == _by_content(half["image"])
    _, fs, paths = _prepare(str(ds_path), "train", verify=False)
    assert len(paths) == 3
    assert _read_parquet_per_file(paths, fs, ["image"]).materialize().num_blocks() >= 3


def test_read_and_decode_are_one_task_per_shard(toy):
    """Ray Data fuses the shard read with the decode (one operator, one task and block per shard):
    unfused, the two operators split the CPU budget and decoding ran on half the CPUs."""
    _, ds_path = toy
    for images_only in (True, False):
        ds = read_dataset(str(ds_path), "train", images_only=images_only).materialize()
        assert "ReadParquet->MapBatches(_decode)" in ds.stats()
        assert ds.num_blocks() == 3 and ds.count() == 12


def test_training_reads_are_a_fresh_full_permutation_every_epoch(toy):
    """shuffle_seed: every execution (an epoch) is a new permutation of all the rows (the official
    DataLoader(shuffle=True)), not the ingest order; with a fraction, of the fraction's rows."""
    _, ds_path = toy

    def ids(ds):
        return [r["image_id"] for r in ds.take_all()]

    plain = ids(read_dataset(str(ds_path), "train"))
    shuffled = read_dataset(str(ds_path), "train", shuffle_seed=0)
    epochs = [ids(shuffled) for _ in range(3)]
    assert all(sorted(e) == sorted(plain) for e in epochs) and len(plain) == 12
    assert len({tuple(e) for e in epochs}) == 3 and tuple(plain) not in {tuple(e) for e in epochs}
    assert "RandomShuffle" in shuffled.stats()
    half = read_dataset(str(ds_path), "train", fraction=0.5, seed=3, images_only=True, shuffle_seed=1)
    assert half.count() == 6 and half.count() == len(read_dataset(str(ds_path), "train", fraction=0.5, seed=3,
                                                                  images_only=True).take_all())


def test_device_batches_on_cpu(toy):
    _, ds_path = toy
    batches = list(device_batches(read_dataset(str(ds_path), "train"), batch_size=5))
    assert len(batches) == 2  # 12 rows, drop_last
    b = batches[0]
    assert set(b) == {"image", "keypoints", "visible", "mask"}
    assert b["image"].shape == (5, 32, 32, 3) and str(b["image"].dtype) == "torch.uint8"
    assert str(b["keypoints"].dtype) == "torch.float32" and b["keypoints"].shape == (5, 3, 2)
    assert str(b["visible"].dtype) == "torch.bool" and b["mask"].shape == (5, 32, 32)
    assert b["image"].device.type == "cpu"


def test_unlabeled_dataset_without_masks(ray_local, tmp_path):  # noqa: F811
    raw = make_raw(tmp_path / "raw", k=0)
    out = tmp_path / "ds"
    ingest(TOY, str(raw), str(out), rows_per_shard=8, options={"k": 0, "masks": False}, progress=False)
    assert json.loads((out / "dataset.json").read_text())["eye_indices"] is None
    rows = read_dataset(str(out), "train").take_all()
    assert len(rows) == 12 and "mask" not in rows[0]
    assert rows[0]["keypoints"].shape == (0, 2) and rows[0]["visible"].shape == (0,)


@pytest.mark.slow
def test_two_worker_train_loop_gets_disjoint_covering_shards(toy, tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    _, ds_path = toy
    out_dir = tmp_path / "seen"
    out_dir.mkdir()

    def loop(config):
        import json as _json

        import ray.train as rt

        from landmarks.data import device_batches as batches

        shard = rt.get_dataset_shard("train")
        n, shapes = 0, set()
        for b in batches(shard, batch_size=2, drop_last=False):
            assert str(b["image"].dtype) == "torch.uint8" and str(b["visible"].dtype) == "torch.bool"
            shapes.add(tuple(b["image"].shape[1:]))
            n += b["image"].shape[0]
        ids = [i for b in shard.iter_batches(batch_size=4, batch_format="numpy") for i in b["image_id"]]
        rank = rt.get_context().get_world_rank()
        with open(f"{config['out']}/rank{rank}.json", "w") as f:
            _json.dump({"ids": [str(i) for i in ids], "n": n, "shapes": sorted(shapes)}, f)
        rt.report({"n": n})

    trainer = TorchTrainer(
        loop, train_loop_config={"out": str(out_dir)},
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False, resources_per_worker={"CPU": 0.5}),
        datasets={"train": read_dataset(str(ds_path), "train")},
        run_config=RunConfig(storage_path=str(tmp_path / "runs"), name="shards"),
    )
    trainer.fit()
    seen = [json.loads((out_dir / f"rank{r}.json").read_text()) for r in (0, 1)]
    a, b = set(seen[0]["ids"]), set(seen[1]["ids"])
    assert a and b and a.isdisjoint(b)
    assert a | b == {f"img{i:04d}.jpg" for i in range(12)}
    assert seen[0]["n"] + seen[1]["n"] == 12 and seen[0]["shapes"] == [[32, 32, 3]]
