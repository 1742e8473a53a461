"""landmarks.storage on the local filesystem: paths, atomic writes, listing, redaction (no Ray)."""

from __future__ import annotations

import os

import pyarrow.fs as pafs
import pytest

from landmarks import storage
from landmarks.storage import StorageError


def test_join_and_resolve(tmp_path, monkeypatch):
    assert storage.join("s3://bucket/pre/", "train", "part-00000.parquet") == "s3://bucket/pre/train/part-00000.parquet"
    assert storage.join("/data/x", "a/", "/b") == "/data/x/a/b"
    assert storage.join("/", "a") == "/a"
    fs, path = storage.resolve(str(tmp_path))
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path)
    fs, path = storage.resolve(f"file://{tmp_path}/x")
    assert path == f"{tmp_path}/x"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    fs, path = storage.resolve("s3://bucket/some/prefix/")
    assert isinstance(fs, pafs.S3FileSystem) and path == "bucket/some/prefix"
    with pytest.raises(StorageError, match="unsupported scheme"):
        storage.resolve("gs://bucket/x")
    with pytest.raises(StorageError, match="needs a bucket"):
        storage.resolve("s3://")


def test_atomic_write_read_list_delete(tmp_path):
    uri = str(tmp_path / "a" / "b" / "file.bin")
    storage.write_bytes_atomic(uri, b"hello")
    assert storage.read_bytes(uri) == b"hello" and storage.exists(uri)
    storage.write_bytes_atomic(uri, b"world!")
    assert storage.read_bytes(uri) == b"world!"
    storage.write_json_atomic(str(tmp_path / "x.json"), {"k": [1, 2]})
    assert storage.read_json(str(tmp_path / "x.json")) == {"k": [1, 2]}
    assert storage.list_files(str(tmp_path)) == {"a/b/file.bin": 6, "x.json": len((tmp_path / "x.json").read_bytes())}
    assert storage.list_files(str(tmp_path / "nowhere")) == {}
    assert b"".join(storage.iter_chunks(uri, chunk_size=2)) == b"world!"
    storage.delete(str(tmp_path / "a"))
    assert not storage.exists(uri) and not (tmp_path / "a").exists()
    storage.delete(str(tmp_path / "a"))  # missing is fine by default
    with pytest.raises(StorageError, match="no such file or directory"):
        storage.delete(str(tmp_path / "a"), missing_ok=False)


def test_failed_write_keeps_old_content_and_no_temp_file(tmp_path, monkeypatch):
    uri = str(tmp_path / "f.json")
    storage.write_bytes_atomic(uri, b"old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(StorageError, match="cannot write .*f.json: disk full"):
        storage.write_bytes_atomic(uri, b"new content")
    monkeypatch.undo()
    assert storage.read_bytes(uri) == b"old"
    assert os.listdir(tmp_path) == ["f.json"]


def test_tmp_names_are_recognised():
    name = storage.tmp_name("part-00000.parquet")
    assert storage.is_tmp_name(name) and storage.is_tmp_name("train/" + name)
    assert not storage.is_tmp_name("train/part-00000.parquet")


def test_errors_name_the_path(tmp_path):
    with pytest.raises(StorageError, match="missing.bin: no such file"):
        storage.read_bytes(str(tmp_path / "missing.bin"))
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(StorageError, match="bad.json: not valid JSON"):
        storage.read_json(str(tmp_path / "bad.json"))


def test_redaction(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "VerySecretValue123")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEY")
    text = "GET http://user:pw@minio:9000/b?x=VerySecretValue123 as AKIAEXAMPLEKEY"
    red = storage.redact(text)
    assert "pw" not in red and "VerySecretValue123" not in red and "AKIAEXAMPLEKEY" not in red
    assert "http://***@minio:9000/b" in red
    with pytest.raises(StorageError) as exc:
        storage.resolve("s3://AKIAEXAMPLEKEY:VerySecretValue123@bucket/x")
    assert "VerySecretValue123" not in str(exc.value) and "AKIAEXAMPLEKEY" not in str(exc.value)
    assert "AWS_ACCESS_KEY_ID" in str(exc.value)
