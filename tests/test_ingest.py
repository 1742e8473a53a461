"""Ingest: shard schema, manifest hashes, resume, bad input, skip-bad, the CLI.

`ToyFaces` is a real converter over generated arrays: `annotations.txt` lines
`split image_id identity x0 y0 ... ` under its root, images drawn from a generator
seeded by the image id. test_reader.py and test_s3.py import it from here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from landmarks.data.converters.base import BadItem, Converter, DatasetInfo, Record, parse_float
from landmarks.data.ingest import STATE_NAME, IngestError, ingest, verify_dataset
from landmarks.data.manifest import GEOMETRY_VERSION, Manifest, ManifestError, check_geometry, open_manifest
from landmarks.data.shards import SCHEMA, decode_image
from landmarks.errors import UserError

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
TOY_SIZE = 32


@dataclass
class ToyFaces(Converter):
    """Options: k (landmarks, default 3), masks (default True), format ("jpeg"/"png"),
    log (file that load() appends each image_id to), fail_flag + fail_from (while the
    flag file exists, items from annotation line `fail_from` on raise RuntimeError)."""

    def __post_init__(self) -> None:
        k = int(self.options.get("k", 3))
        self.k = k
        self.info = DatasetInfo(
            name="toy-faces", landmark_names=tuple(f"p{i}" for i in range(k)),
            eye_indices=(0, 1) if k >= 2 else None, stored_size=TOY_SIZE, input_size=TOY_SIZE - 8,
            border=4, has_masks=bool(self.options.get("masks", True)),
            image_format=self.options.get("format", "jpeg"),
        )

    def splits(self) -> dict[str, list]:
        path = os.path.join(self.root, "annotations.txt")
        out: dict[str, list] = {}
        with open(path) as f:
            for lineno, line in enumerate(f, 1):
                parts = line.split()
                try:
                    if len(parts) != 3 + 2 * self.k:
                        raise BadItem(path, lineno, f"expected {3 + 2 * self.k} fields, got {len(parts)}")
                    coords = [parse_float(t, path, lineno) for t in parts[3:]]
                except BadItem as err:
                    if not self.skip_bad:
                        raise
                    self.skipped.append(err)
                    continue
                split, image_id, identity = parts[:3]
                out.setdefault(split, []).append((lineno, image_id, identity, coords))
        return out

    def load(self, item) -> Record:
        lineno, image_id, identity, coords = item
        flag = self.options.get("fail_flag")
        if flag and os.path.exists(flag) and lineno >= self.options["fail_from"]:
            raise RuntimeError(f"simulated crash at line {lineno}")
        if image_id.startswith("corrupt"):
            raise BadItem(os.path.join(self.root, "images", image_id), None, "cannot decode image")
        if image_id.startswith("unreadable"):  # a converter that lets an OSError escape
            Path(self.root, "images", image_id).read_bytes()
        if self.options.get("log"):
            with open(self.options["log"], "a") as f:
                f.write(image_id + "\n")
        return toy_record(image_id, identity, coords, lineno, self.k, self.info.has_masks)


def toy_record(image_id, identity, coords, lineno, k, masks) -> Record:
    rng = np.random.default_rng(zlib.crc32(image_id.encode()))
    base = rng.integers(0, 256, (4, 4, 3)).astype(np.uint8)  # smooth image: JPEG keeps it close
    image = np.kron(base, np.ones((TOY_SIZE // 4, TOY_SIZE // 4, 1), np.uint8))
    kps = np.asarray(coords, np.float32).reshape(k, 2)
    visible = np.array([(lineno + j) % 4 != 0 for j in range(k)], bool)
    mask = ((image[..., 0] > 127) * 255).astype(np.uint8) if masks else None
    return Record(image_id, image, kps, visible, None if identity == "none" else identity, mask)


def make_raw(root: Path, n_train=12, n_val=4, n_test=4, k=3, bad_lines=(), corrupt=(), unreadable=()) -> Path:
    """annotations.txt with the given split sizes; `bad_lines` (1-based) get a non-number;
    items `corrupt` raise BadItem on load, items `unreadable` a FileNotFoundError."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines, i = [], 0
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        for _ in range(n):
            name = f"{'corrupt' if i in corrupt else 'unreadable' if i in unreadable else 'img'}{i:04d}.jpg"
            identity = "none" if i % 5 == 4 else f"person{i // 3}_{split}"
            coords = " ".join(f"{v:.3f}" for v in rng.uniform(0, TOY_SIZE - 1, 2 * k))
            lines.append(f"{split} {name} {identity} {coords}")
            i += 1
    for b in bad_lines:
        parts = lines[b - 1].split()
        lines[b - 1] = " ".join(parts[:3] + ["oops"] + parts[4:])
    (root / "annotations.txt").write_text("\n".join(lines) + "\n")
    return root


TOY = "test_ingest:ToyFaces"


@pytest.fixture(scope="session")
def ray_local():
    """One small local Ray for the session; ToyFaces is shipped to workers by value."""
    import ray
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


def cli(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    """Run jobs/ingest.py as a user would; tests/ on PYTHONPATH so `test_ingest:ToyFaces` loads."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), full_env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, str(REPO / "jobs" / "ingest.py"), *args], capture_output=True,
                          text=True, env=full_env, cwd=REPO, timeout=timeout, check=False)


def load_cli_module():
    """jobs/ingest.py's command line, in this process (`landmarks.data.ingest_cli`)."""
    from landmarks.data import ingest_cli

    return ingest_cli


# --- no Ray ---------------------------------------------------------------------------------

def test_bad_annotation_line_fails_through_cli_naming_file_and_line(tmp_path):
    raw = make_raw(tmp_path / "raw", bad_lines=(4,))
    out = tmp_path / "out"
    proc = cli(TOY, "--root", str(raw), "--out", str(out))
    assert proc.returncode == 1, proc.stderr
    assert f"{raw / 'annotations.txt'}:4" in proc.stderr
    assert "not a number" in proc.stderr and "Traceback" not in proc.stderr
    assert not (out / "dataset.json").exists()


@pytest.mark.parametrize("argv", [
    ["--out", "x"],                                               # no DATASET
    ["nope", "--root", "r", "--out", "x"],                       # unknown DATASET
    ["synthetic-faces", "--root", "r", "--out", "x"],            # synthetic takes no --root
    ["mafl", "--out", "x"],                                      # real dataset needs --root
    ["mafl", "--root", "r", "--out", "x", "--num-images", "3"],  # --num-images only for synthetic
    ["mafl", "--root", "r"],                                     # no --out
])
def test_cli_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        load_cli_module().main(argv)
    assert exc.value.code == 2


def test_out_holding_something_else_is_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    raw = make_raw(tmp_path / "raw")
    code = load_cli_module().main([TOY, "--root", str(raw), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and "is not empty and holds no ingest" in err and "Traceback" not in err
    assert (out / "notes.txt").read_text() == "mine"
    code = load_cli_module().main([TOY, "--root", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert code == 1 and "nope does not exist" in capsys.readouterr().err


def test_manifest_round_trip_and_validation(tmp_path):
    data = {
        "name": "x", "K": 2, "landmark_names": ["a", "b"], "eye_indices": [0, 1], "stored_size": 8,
        "input_size": 8, "border": 0, "mean": [0.5] * 3, "std": [0.2] * 3, "has_masks": False,
        "image_format": "png", "source": {"dataset": "x"},
        "splits": {"train": {"rows": 3, "shards": [{"path": "train/part-00000.parquet", "rows": 3,
                                                    "sha256": "ab" * 32}]}},
    }
    m = Manifest.from_dict(data)
    assert m.K == 2 and m.extra == {"source": {"dataset": "x"}} and m.splits["train"].shards[0].bytes is None
    m.save(str(tmp_path))
    again = Manifest.load(str(tmp_path))
    assert again == m
    with pytest.raises(ManifestError, match="missing key"):
        Manifest.from_dict({k: v for k, v in data.items() if k != "K"})
    bad = json.loads(json.dumps(data))
    bad["splits"]["train"]["rows"] = 4
    with pytest.raises(ManifestError, match="rows 4"):
        Manifest.from_dict(bad)
    with pytest.raises(ManifestError, match="no dataset.json"):
        Manifest.load(str(tmp_path / "nothing"))
    with pytest.raises(ManifestError, match="no split 'val'"):
        m.split("val")


def test_manifest_written_before_stored_size_reads():
    """dataset.json files written before the stored side was named `stored_size` call it "image_size"."""
    new = {"name": "x", "K": 0, "landmark_names": [], "eye_indices": None, "stored_size": 136, "input_size": 96,
           "border": 20, "mean": [0.5] * 3, "std": [0.2] * 3, "has_masks": False, "image_format": "jpeg",
           "splits": {}, "ingest_params": {"image_size": 96}}
    old = {("image_size" if k == "stored_size" else k): v for k, v in new.items()}
    m = Manifest.from_dict(old)
    assert (m.stored_size, m.input_size, m.border) == (136, 96, 20) and m == Manifest.from_dict(new)
    assert m.extra == {"ingest_params": {"image_size": 96}}  # the network input it was ingested for
    assert m.to_dict()["stored_size"] == 136 and "image_size" not in m.to_dict()


def _old_manifest(name: str, k: int, **extra) -> Manifest:
    """A dataset.json as ingest wrote it before geometry_version (no shards needed here)."""
    return Manifest.from_dict({
        "name": name, "K": k, "landmark_names": [f"p{i}" for i in range(k)], "eye_indices": None,
        "image_size": 96, "input_size": 96, "border": 0, "mean": [0.5] * 3, "std": [0.2] * 3,
        "has_masks": False, "image_format": "png", "splits": {},
        "source": {"dataset": name, "root": "/raw/CUB_200_2011"},
        "ingest_params": {"dataset": name, "root": "/raw/CUB_200_2011", "image_size": 96}, **extra,
    })


def test_check_geometry_refuses_old_cub_and_warns_for_faces(tmp_path, caplog):
    with pytest.raises(UserError, match=r"ingested before keypoints followed the official scaling.*re-ingest "
                                        r"with `python jobs/ingest.py cub --root /raw/CUB_200_2011 --out "):
        check_geometry(_old_manifest("cub", 15), str(tmp_path / "cub"))
    with pytest.raises(UserError, match="geometry_version 1 < 3"):
        check_geometry(_old_manifest("cub", 15, geometry_version=1), str(tmp_path / "cub"))
    check_geometry(_old_manifest("cub", 15, geometry_version=3), str(tmp_path / "cub"))  # re-ingested: fine
    with caplog.at_level("WARNING", logger="landmarks.data.manifest"):
        check_geometry(_old_manifest("mafl", 5), str(tmp_path / "mafl"))  # a warning, no error
    assert "'mafl' was ingested before keypoints followed the official scaling" in caplog.text
    assert "under one stored pixel" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="landmarks.data.manifest"):
        check_geometry(_old_manifest("mafl", 5, geometry_version=2), str(tmp_path / "mafl"))
        check_geometry(_old_manifest("cub", 15, geometry_version=2), str(tmp_path / "cub"))  # pixels: a warning
    assert "before its pixels were the official ones (geometry_version 2 < 3)" in caplog.text
    assert "matching's different-identity pairs are not the official ones" in caplog.text
    assert "python jobs/ingest.py cub --root /raw/CUB_200_2011" in caplog.text


def test_open_manifest_checks_geometry_only_for_landmark_jobs(tmp_path):
    _old_manifest("cub", 15).save(str(tmp_path))
    with pytest.raises(UserError, match="re-ingest"):
        open_manifest(str(tmp_path), need_landmarks=True)
    assert open_manifest(str(tmp_path), need_landmarks=False).name == "cub"  # pretraining-style jobs


# --- Ray ------------------------------------------------------------------------------------

def test_schema_manifest_and_stats(ray_local, tmp_path):
    raw = make_raw(tmp_path / "raw")
    out = tmp_path / "out"
    m = ingest(TOY, str(raw), str(out), rows_per_shard=5, progress=False)
    assert {s: m.splits[s].rows for s in m.splits} == {"train": 12, "val": 4, "test": 4}
    assert [sh.path for sh in m.splits["train"].shards] == [
        "train/part-00000.parquet", "train/part-00001.parquet", "train/part-00002.parquet"]
    assert [sh.rows for sh in m.splits["train"].shards] == [5, 5, 2]
    on_disk = json.loads((out / "dataset.json").read_text())
    for key in ("name", "K", "landmark_names", "eye_indices", "stored_size", "input_size", "border", "mean",
                "std", "has_masks", "image_format", "splits", "source", "created_at", "skipped"):
        assert key in on_disk, key
    assert on_disk["K"] == 3 and on_disk["stored_size"] == TOY_SIZE and on_disk["border"] == 4
    assert on_disk["geometry_version"] == GEOMETRY_VERSION == 3
    check_geometry(m, str(out))  # a fresh dataset passes
    assert not (out / STATE_NAME).exists()
    assert sorted(p.name for p in out.rglob("*") if p.is_file() and p.name.startswith(".")) == []
    verify_dataset(str(out))  # every hash and row count matches

    table = pq.read_table(out / "train" / "part-00000.parquet")
    assert table.schema.equals(SCHEMA, check_metadata=False)
    assert table.schema.field("keypoints").type == pa.list_(pa.float32())
    assert table.schema.field("height").type == pa.int32()
    row = table.slice(0, 1).to_pylist()[0]
    assert row["image"][:2] == b"\xff\xd8" and row["mask"][:4] == b"\x89PNG"
    assert len(row["keypoints"]) == 6 and len(row["visible"]) == 3
    ids = pq.read_table(out / "train", columns=["identity"]).column("identity").to_pylist()
    assert None in ids  # identity is nullable

    # mean/std over the train split's original pixels, [0, 1] units
    conv = ToyFaces(root=str(raw))
    pix = np.concatenate([conv.load(it).image.reshape(-1, 3) for it in conv.splits()["train"]]) / 255.0
    np.testing.assert_allclose(m.mean, pix.mean(0), atol=1e-9)
    np.testing.assert_allclose(m.std, pix.std(0), atol=1e-9)

    # image_format="png" (the real datasets' default): lossless, the stored pixels are the converter's
    png = ingest(TOY, str(raw), str(tmp_path / "png"), rows_per_shard=20, progress=False, image_format="png")
    assert png.image_format == "png" and png.extra["ingest_params"]["image_format"] == "png"
    first = pq.read_table(tmp_path / "png" / "train" / "part-00000.parquet").slice(0, 1).to_pylist()[0]
    assert first["image"][:4] == b"\x89PNG"
    np.testing.assert_array_equal(decode_image(first["image"]), conv.load(conv.splits()["train"][0]).image)
    with pytest.raises(IngestError, match="png, jpeg"):
        ingest(TOY, str(raw), str(tmp_path / "gif"), progress=False, image_format="gif")


def test_resume_after_interrupted_ingest(ray_local, tmp_path):
    raw = make_raw(tmp_path / "raw")
    out, flag, log = tmp_path / "out", tmp_path / "crash.flag", tmp_path / "loads.txt"
    flag.touch()
    opts = {"fail_flag": str(flag), "fail_from": 9, "log": str(log)}  # line 9 is in train shard 2
    with pytest.raises(Exception, match="simulated crash"):
        ingest(TOY, str(raw), str(out), rows_per_shard=4, options=opts, progress=False)
    assert not (out / "dataset.json").exists()
    state = json.loads((out / STATE_NAME).read_text())
    finished = {p: (out / p).stat() for p in state["done"]}
    assert finished and "train/part-00002.parquet" not in finished

    # a rerun with other parameters is refused, naming the way out
    with pytest.raises(IngestError, match="rows_per_shard.*--overwrite"):
        ingest(TOY, str(raw), str(out), rows_per_shard=3, options=opts, progress=False)

    flag.unlink()
    log.write_text("")
    m = ingest(TOY, str(raw), str(out), rows_per_shard=4, options=opts, progress=False)
    verify_dataset(str(out))
    for p, st in finished.items():  # finished shards were not rewritten
        now = (out / p).stat()
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns), p
    reloaded = set(log.read_text().split())
    kept_ids = set(pq.read_table([str(out / p) for p in finished], columns=["image_id"])
                   .column("image_id").to_pylist())
    assert reloaded.isdisjoint(kept_ids)
    assert len(reloaded) == sum(s.rows for s in m.splits.values()) - len(kept_ids)

    # a finished dataset: same command is a no-op, another one needs --overwrite
    before = (out / "dataset.json").stat().st_mtime_ns
    ingest(TOY, str(raw), str(out), rows_per_shard=4, options=opts, progress=False)
    assert (out / "dataset.json").stat().st_mtime_ns == before
    with pytest.raises(IngestError, match="different parameters"):
        ingest(TOY, str(raw), str(out), rows_per_shard=5, options=opts, progress=False)
    m5 = ingest(TOY, str(raw), str(out), rows_per_shard=5, options=opts, progress=False, overwrite=True)
    assert [sh.rows for sh in m5.splits["train"].shards] == [5, 5, 2]
    assert not (out / "train" / "part-00003.parquet").exists()
    verify_dataset(str(out))


def test_bad_image_fails_without_manifest(ray_local, tmp_path):
    raw = make_raw(tmp_path / "raw", corrupt=(6,))
    out = tmp_path / "out"
    with pytest.raises(BadItem, match=r"images/corrupt0006\.jpg: cannot decode image"):
        ingest(TOY, str(raw), str(out), rows_per_shard=4, progress=False)
    assert not (out / "dataset.json").exists()


def test_skip_bad_reports_and_counts(ray_local, tmp_path, capfd):
    raw = make_raw(tmp_path / "raw", bad_lines=(2,), corrupt=(6,), unreadable=(13,))
    out = tmp_path / "out"
    m = ingest(TOY, str(raw), str(out), rows_per_shard=4, skip_bad=True, progress=False)
    err = capfd.readouterr().err
    assert f"skipped: {raw / 'annotations.txt'}:2: not a number" in err
    assert "skipped: " + str(raw / "images" / "corrupt0006.jpg") in err
    assert "FileNotFoundError" in err and "unreadable0013.jpg" in err
    assert m.extra["skipped"] == 3 and m.splits["train"].rows == 10 and m.splits["val"].rows == 3
    assert json.loads((out / "dataset.json").read_text())["skipped"] == 3
    verify_dataset(str(out))


@pytest.mark.slow
def test_synthetic_faces_through_cli(tmp_path):
    out = tmp_path / "faces"
    proc = cli("synthetic-faces", "--num-images", "30", "--seed", "1", "--rows-per-shard", "8",
               "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    m = verify_dataset(str(out))
    assert set(m.splits) == {"train", "val", "test"} and sum(s.rows for s in m.splits.values()) == 30
    for split, s in m.splits.items():
        assert f"{split}: {s.rows} rows in {len(s.shards)} shard(s)" in proc.stdout
    assert m.has_masks and m.stored_size == 136 and m.input_size == 96 and m.border == 20
    ids = {s: set(pq.read_table(out / s, columns=["identity"]).column("identity").to_pylist())
           for s in m.splits}
    assert ids["train"].isdisjoint(ids["val"]) and ids["train"].isdisjoint(ids["test"])
    ok = cli("--verify", "--out", str(out))
    assert ok.returncode == 0 and "OK" in ok.stdout
