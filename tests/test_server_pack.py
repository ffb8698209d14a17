"""The trimmed Triton server pack (benchmarks/server_pack.py): built from the installed nvidia-pytriton wheel,
set up in an empty folder, it serves a real exported repository with the wheel kept out of the way."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from _serve_helpers import SERVE_LABELS

from aigi.benchmarks import server_pack

pytestmark = pytest.mark.skipif(importlib.util.find_spec("pytriton") is None, reason="nvidia-pytriton not installed")
HERE_PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}"


def _exports(pack: Path, into: Path) -> dict[str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "aigi.benchmarks.server_pack", "install", str(pack), "--into", str(into)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = [line.removeprefix("export ").split("=", 1) for line in done.stdout.splitlines()]
    return {key: value.strip("'") for key, value in lines}


def test_elf_needed_lists_libc_when_reading_the_packed_server_binary() -> None:
    dist, _, _ = server_pack.installed_wheel_server()
    needed = server_pack.elf_needed(dist / "bin" / "tritonserver")
    assert "libc.so.6" in needed and any(name.startswith("libtritonserver") for name in needed)


@pytest.mark.triton
def test_stub_site_leaves_out_numpy2_only_packages_when_a_folder_holds_them(tmp_path: Path) -> None:
    # the lent H200 image: transformers imported scipy (built for numpy 2) under the stub's numpy 1.26 and failed
    site = tmp_path / "site-packages"
    for entry in ("scipy", "scipy.libs", "scipy-1.16.0.dist-info", "torch", "scikit_learn-1.7.dist-info", "sklearn"):
        (site / entry).mkdir(parents=True)
    (site / "aigi-editable.pth").write_text("/somewhere\n")
    filtered = server_pack.filtered_site(site, tmp_path / "filtered")
    assert sorted(os.listdir(filtered)) == ["aigi-editable.pth", "torch"]
    assert (filtered / "torch").resolve() == (site / "torch").resolve()
    clean = tmp_path / "clean"
    (clean / "torch").mkdir(parents=True)
    assert server_pack.filtered_site(clean, tmp_path / "unused") == clean


def test_server_pack_serves_correct_answers_when_unpacked_into_an_empty_folder_without_the_wheel(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    serve_repo: Path,
    sample_images: list[bytes],
    reference_probs: Callable[[list], np.ndarray],
) -> None:
    pack = tmp_path / "pack"
    manifest = server_pack.build_pack(pack, HERE_PYTHON, wheels=False)
    assert manifest["python"] == HERE_PYTHON and f"libpython{HERE_PYTHON}.so.1.0" in manifest["system_libraries"]
    exports = _exports(pack, tmp_path / "installed")
    assert exports["AIGI_TRITON_DIST"] == str(pack / "pytriton" / "tritonserver")
    for key, value in exports.items():
        monkeypatch.setenv(key, value)

    from aigi.client import Detector
    from aigi.server import TritonServer

    wheel_dist, wheel_libs, _ = server_pack.installed_wheel_server()
    with TritonServer(serve_repo) as server:
        assert server.pid is not None
        # the process runs the packed binary and maps no file of the installed wheel, and so do its stubs
        assert os.readlink(f"/proc/{server.pid}/exe") == str(
            pack / "pytriton" / "tritonserver" / "bin" / "tritonserver"
        )
        for pid in [server.pid, *server.stub_pids()]:
            maps = Path(f"/proc/{pid}/maps").read_text()
            assert str(wheel_dist) not in maps and str(wheel_libs) not in maps
            assert str(pack / "nvidia_pytriton.libs") in maps
        assert server.stub_pids(), "no Python backend stub started"
        stub_python = Path(f"/proc/{server.stub_pids()[0]}/environ").read_bytes().split(b"\0")
        assert any(
            entry.startswith(b"PATH=" + str(tmp_path / "installed" / "stub-env").encode()) for entry in stub_python
        )
        with Detector(server.endpoints["grpc"], protocol="grpc") as detector:
            results = detector.detect(sample_images)
    assert all(result.ok for result in results), [result.error for result in results]
    got = np.array([[result.scores[label] for label in SERVE_LABELS] for result in results])
    np.testing.assert_allclose(got, reference_probs(sample_images), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_server_pack_for_python_312_fits_the_carry_limit_when_built_with_its_wheels(tmp_path: Path) -> None:
    # Python 3.12 is the GPU machine's; there is no 3.12 here to run it, so only its contents are checked
    pack = tmp_path / "aigi-server-pack-3.12"
    try:
        manifest = server_pack.build_pack(pack, "3.12", wheel_cache=Path("/tmp/aigi-wheels/3.12"))
    except server_pack.AigiError as exc:
        pytest.skip(f"wheels could not be fetched here: {exc}")
    assert manifest["stub_libpython"] == "libpython3.12.so.1.0"
    assert (pack / "pytriton/tritonserver/python_backend_stubs/3.12/triton_python_backend_stub").is_file()
    assert {"stub", "client", "grpc"} <= set(manifest["wheels"])
    assert any(name.startswith("numpy-1.") and "cp312" in name for name in manifest["wheels"]["stub"])
    for wheel in (pack / "wheels").rglob("*.whl"):
        with zipfile.ZipFile(wheel) as zf:
            assert zf.testzip() is None
    archive = server_pack.archive(pack)
    assert archive.stat().st_size < 48 * 2**20, "with the repository it must stay well under the 64 MiB carry"
    assert json.loads((pack / "manifest.json").read_text())["python"] == "3.12"
