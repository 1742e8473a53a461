"""S3 round trip against a local moto server: jobs/ingest.py --out s3://..., read_dataset("s3://...").

The server runs as a subprocess on a free 127.0.0.1 port for this module and is stopped
by its PID. Credentials are fake but distinctive, so the tests can check that they
appear in no output, manifest or error message.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from landmarks.data import ManifestError, load_manifest, read_dataset, read_split_numpy
from test_ingest import TOY, cli, make_raw, ray_local  # noqa: F401

pytestmark = pytest.mark.slow

KEY_ID = "AKIATESTKEYID0000042"
SECRET = "s3cr3t/Sekrit+Value-0042"
BUCKET = "landmarks-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    moto = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or shutil.which("moto_server")
    if moto is None:
        pytest.skip("moto_server not installed (pip install 'moto[server]')")
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "w") as log_file:
        proc = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)], stdout=log_file,
                                stderr=subprocess.STDOUT)
        try:
            yield from _serve(proc, port, log)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _serve(proc: subprocess.Popen, port: int, log: Path):
    """Wait for the server, point the AWS variables at it, create the bucket; restore env after."""
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET,
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}
    for _ in range(150):
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"moto_server exited: {log.read_text()}")
            time.sleep(0.2)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        import boto3

        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        yield client, env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _no_secrets(text: str) -> None:
    assert SECRET not in text and KEY_ID not in text


def _download(client, prefix: str, dest: Path) -> None:
    for obj in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/").get("Contents", []):
        if obj["Key"].endswith("/"):
            continue
        target = dest / obj["Key"][len(prefix) + 1:]
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(BUCKET, obj["Key"], str(target))


def _by_id(rows):
    return {r["image_id"]: r for r in rows}


def test_ingest_to_s3_and_read_back(s3, ray_local, tmp_path):  # noqa: F811
    client, env = s3
    raw = make_raw(tmp_path / "raw")
    uri = f"s3://{BUCKET}/datasets/toy"
    proc = cli(TOY, "--root", str(raw), "--out", uri, "--rows-per-shard", "5", env=env)
    assert proc.returncode == 0, proc.stderr
    _no_secrets(proc.stdout + proc.stderr)
    assert "train: 12 rows in 3 shard(s)" in proc.stdout

    objects = client.list_objects_v2(Bucket=BUCKET, Prefix="datasets/toy/")["Contents"]
    # pyarrow may leave an empty "dir/" marker object when it deletes the ingest state file
    keys = sorted(o["Key"] for o in objects if not o["Key"].endswith("/"))
    assert keys == ["datasets/toy/dataset.json"] + [f"datasets/toy/{s}/part-0000{i}.parquet"
                                                    for s, n in (("test", 1), ("train", 3), ("val", 1))
                                                    for i in range(n)]
    manifest_text = client.get_object(Bucket=BUCKET, Key="datasets/toy/dataset.json")["Body"].read().decode()
    _no_secrets(manifest_text)

    local = tmp_path / "copy"
    _download(client, "datasets/toy", local)
    assert load_manifest(uri).to_dict() == load_manifest(str(local)).to_dict()
    remote_rows, local_rows = (_by_id(read_dataset(p, "train").take_all()) for p in (uri, str(local)))
    assert sorted(remote_rows) == sorted(local_rows) and len(remote_rows) == 12
    for image_id, r in remote_rows.items():
        for key, value in r.items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(value, local_rows[image_id][key])
            else:
                assert value == local_rows[image_id][key]
    a, b = read_split_numpy(uri, "val"), read_split_numpy(str(local), "val")
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])

    ok = cli("--verify", "--out", uri, env=env)
    assert ok.returncode == 0 and "OK" in ok.stdout


def test_s3_errors_name_the_shard_and_hide_credentials(s3, tmp_path):
    client, env = s3
    raw = make_raw(tmp_path / "raw", n_train=4, n_val=2, n_test=2)
    uri = f"s3://{BUCKET}/datasets/small"
    proc = cli(TOY, "--root", str(raw), "--out", uri, "--rows-per-shard", "4", env=env)
    assert proc.returncode == 0, proc.stderr

    key = "datasets/small/train/part-00000.parquet"
    body = bytearray(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    body[100] ^= 0xFF
    client.put_object(Bucket=BUCKET, Key=key, Body=bytes(body))
    with pytest.raises(ManifestError, match=r"altered shard train/part-00000\.parquet") as exc:
        read_dataset(uri, "train")
    _no_secrets(str(exc.value))
    bad = cli("--verify", "--out", uri, env=env)
    assert bad.returncode == 1 and "train/part-00000.parquet" in bad.stderr
    _no_secrets(bad.stdout + bad.stderr)

    client.put_object(Bucket=BUCKET, Key="datasets/small/val/part-00009.parquet", Body=b"x")
    with pytest.raises(ManifestError, match=r"extra shard val/part-00009\.parquet"):
        read_split_numpy(uri, "val")
    with pytest.raises(ManifestError, match="no dataset.json") as exc:
        read_dataset(f"s3://{BUCKET}/nothing/here", "train")
    _no_secrets(str(exc.value))
