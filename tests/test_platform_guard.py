"""The src layout: `platform/` holds the package but must never shadow the stdlib module."""

import subprocess
import sys

from conftest import ROOT


def test_stdlib_platform_not_shadowed_from_repo_root():
    code = "import platform, landmarks; print(platform.system()); print(platform.__file__); print(landmarks.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    system, platform_file, landmarks_file = out.stdout.split()
    assert system == "Linux"
    assert "platform/landmarks" not in platform_file and platform_file.endswith("platform.py")
    assert landmarks_file.endswith("platform/landmarks/__init__.py")
    assert not (ROOT / "platform" / "__init__.py").exists()
