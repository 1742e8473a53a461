"""`make lint` stays clean: ruff (pinned in the dev extra, rules in pyproject.toml) over all our code."""

import subprocess

from conftest import ROOT, VENV_BIN


def test_ruff_finds_nothing():
    out = subprocess.run([str(VENV_BIN / "ruff"), "check", "--output-format", "concise",
                          "platform", "jobs", "tests", "benchmarks"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
