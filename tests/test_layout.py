"""The package layout: a plain ``pip install .`` works from the repository root, and static tools can see it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(600)
def test_installed_client_imports_from_repository_root_when_installed_without_editable_mode(tmp_path: Path) -> None:
    target = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
    subprocess.run([*install, "--target", str(target), str(ROOT)], check=True, capture_output=True, timeout=540)
    code = "import sys, aigi, aigi.client, aigi.client.commands\nprint(aigi.__file__)\nprint('torch' in sys.modules)\n"
    env = {**os.environ, "PYTHONPATH": str(target)}
    # run from the repository root, where a top-level aigi/ folder would shadow the installed package
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    where, torch_loaded = out.stdout.split()
    assert Path(where).is_relative_to(target)
    assert torch_loaded == "False"
    assert (target / "aigi" / "py.typed").is_file()  # type information ships with the package


def test_repository_root_has_no_folder_named_like_the_package_when_checked_out() -> None:
    assert not (ROOT / "aigi").exists()
    assert (ROOT / "src" / "aigi" / "__init__.py").is_file()
