"""The command lines the README shows are the ones the scripts take: every `--flag` after `python jobs/X.py`
is in that script's --help (jobs/predict.py's --overlays N and --skip-bad included)."""

from __future__ import annotations

import re

import pytest

from conftest import ROOT
from landmarks.cli import main


def _readme_commands() -> list[tuple[str, str]]:
    """(script, the rest of its command line) for each `python jobs/X.py ...` in README.md (continued lines joined)."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "README.md").read_text())
    return [(m.group(1), m.group(2).split("#")[0]) for m in re.finditer(r"python jobs/(\w+)\.py([^\n`]*)", text)]


def _help(script: str, capsys) -> str:
    with pytest.raises(SystemExit) as done:
        main(script, argv=["--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def test_every_flag_the_readme_shows_is_in_the_scripts_help(capsys):
    commands = _readme_commands()
    assert {"predict", "pretrain", "ingest", "report"} <= {script for script, _ in commands}
    shown: dict[str, set[str]] = {}
    for script, rest in commands:
        shown.setdefault(script, set()).update(re.findall(r"(?<![\w-])--[a-z][\w-]*", rest))
    assert {"--overlays", "--skip-bad"} <= shown["predict"]
    for script, flags in shown.items():
        text = _help(script, capsys)
        missing = sorted(f for f in flags if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", text))
        assert not missing, f"jobs/{script}.py --help lacks {missing}"


def test_predict_shorthands_stand_for_their_keys(capsys):
    text = " ".join(_help("predict", capsys).split())  # argparse wraps lines
    assert "--overlays N" in text and "(= output.overlays=N)" in text
    assert "--skip-bad" in text and "(= input.skip_bad=true)" in text
