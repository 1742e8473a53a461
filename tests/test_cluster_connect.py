"""Connecting to Ray: a stale cluster file from a killed `ray start` falls back to a local instance."""

import subprocess
import sys
import textwrap

import pytest

from landmarks import cluster


def test_resolve_prefers_explicit_and_env(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert cluster.resolve_address() == "10.0.0.1:6379"
    assert cluster.resolve_address("127.0.0.1:1234") == "127.0.0.1:1234"


def test_stale_cluster_file_warns_and_goes_local(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(cluster, "_recorded_cluster", lambda: "127.0.0.1:1")  # nothing listens on port 1
    with pytest.warns(UserWarning, match="stale Ray cluster file"):
        assert cluster.resolve_address() == "local"


@pytest.mark.slow
def test_connect_with_stale_file_starts_local(tmp_path):
    """End to end in a fresh process: a cluster file pointing nowhere, then connect()."""
    code = textwrap.dedent("""
        import warnings
        from landmarks import cluster
        cluster._recorded_cluster = lambda: "127.0.0.1:1"
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            res = cluster.connect(num_cpus=1)
        print("CPU", res["CPU"], any("stale" in str(x.message) for x in w))
        cluster.shutdown()
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "RAY_ADDRESS": ""}, cwd=tmp_path, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "CPU 1.0 True" in out.stdout
