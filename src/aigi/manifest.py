"""``MANIFEST.json``: sha256 and size of every file in a model repository, so tampering or a stale copy shows.

Covered: every top-level file except ``MANIFEST.json`` itself, a top-level ``README.md`` and hidden files, and
*every* file under each model folder (a folder with a ``config.pbtxt``), hidden files and Python bytecode
included: a planted ``__pycache__/model.cpython-311.pyc`` is what Python would run instead of ``model.py``, so
it must show as a file the manifest does not list. (``aigi export`` puts a *file* named ``__pycache__`` beside
each Python source, so the server cannot write caches there: Triton's Python backend stub runs an isolated
interpreter that ignores ``PYTHONDONTWRITEBYTECODE``.) Folders that are not models (no ``config.pbtxt``), such as
the ``python_models`` sources that live in the default repository folder, are not covered, nor are hidden
top-level folders: ``.retired/`` holds the versions ``aigi repo rollback`` took out of service (Triton never loads
them; the manifest records them under ``exports.PREFIX.versions``, and a later export never reuses their numbers).

Core (standard library plus :mod:`aigi.checkpoint`): ``aigi serve`` verifies a repository with it before starting
a server, without importing the export stage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aigi import __version__
from aigi.checkpoint import write_json_atomic

logger = logging.getLogger(__name__)

MANIFEST_FILENAME = "MANIFEST.json"
MANIFEST_FORMAT = 1
CONFIG_FILENAME = "config.pbtxt"
# where `aigi repo rollback` moves retired version folders (aigi.export.versions); hidden, so neither covered here
# nor a model folder for Triton or aigi serve
RETIRED_DIR = ".retired"
# the repository's own documentation is edited by people, not written by export
UNCOVERED_TOP_LEVEL = (MANIFEST_FILENAME, "README.md")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _model_folders(repo: Path) -> list[Path]:
    return [
        entry
        for entry in sorted(repo.iterdir())
        if entry.is_dir() and not entry.name.startswith(".") and (entry / CONFIG_FILENAME).is_file()
    ]


def _walk(folder: Path) -> tuple[list[Path], list[Path]]:
    """``(files, links to folders)`` under ``folder``; linked folders are reported, not followed."""
    files: list[Path] = []
    linked: list[Path] = []
    for root, dirs, names in os.walk(folder, followlinks=False):
        here = Path(root)
        linked.extend(here / name for name in dirs if (here / name).is_symlink())
        files.extend(here / name for name in names if (here / name).is_file())
    return sorted(files), sorted(linked)


def covered_files(repo: str | Path) -> list[Path]:
    """Files the manifest covers, relative to ``repo``, sorted: see the module docstring."""
    repo = Path(repo)
    files: list[Path] = []
    for entry in sorted(repo.iterdir()):
        if entry.is_file() and entry.name not in UNCOVERED_TOP_LEVEL and not entry.name.startswith("."):
            files.append(entry.relative_to(repo))
    for folder in _model_folders(repo):
        files.extend(path.relative_to(repo) for path in _walk(folder)[0])
    return sorted(files)


def write_manifest(repo: str | Path, exports: dict[str, Any]) -> Path:
    """Hash every covered file and write ``MANIFEST.json`` atomically.

    Args:
        repo: the repository root.
        exports: per model-name prefix, what produced it (checkpoint, backend, precision, time); merged into the
            existing manifest's entries so several prefixes can share one repository.
    """
    repo = Path(repo)
    previous = read_manifest(repo) or {}
    merged = {**previous.get("exports", {}), **exports}
    # prefixes whose ensemble is gone no longer belong in the manifest
    merged = {prefix: entry for prefix, entry in merged.items() if (repo / prefix / CONFIG_FILENAME).is_file()}
    files = {
        relative.as_posix(): {"sha256": sha256_file(repo / relative), "size": (repo / relative).stat().st_size}
        for relative in covered_files(repo)
    }
    latest: dict[str, Any] = max(merged.values(), key=lambda entry: entry.get("created", ""), default={})
    payload = {
        "format": MANIFEST_FORMAT,
        "aigi_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "checkpoint": latest.get("checkpoint"),
        "exports": merged,
        "files": files,
    }
    path = repo / MANIFEST_FILENAME
    write_json_atomic(path, payload)
    return path


def read_manifest(repo: str | Path) -> dict[str, Any] | None:
    """The parsed manifest, or ``None`` when there is none or it is not JSON."""
    path = Path(repo) / MANIFEST_FILENAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


@dataclass
class ManifestProblem:
    """One mismatch between the manifest and the files."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def verify_manifest(repo: str | Path) -> tuple[list[ManifestProblem], int]:
    """Compare the files with ``MANIFEST.json``.

    Returns:
        ``(problems, files_verified)``: missing manifest, missing files, size or sha256 mismatches, and
        unexpected files: any file in a model folder (``__pycache__`` and ``.pyc`` included) or at the top level
        that the manifest does not list, and links to folders inside a model folder (their contents cannot be
        sealed).
    """
    repo = Path(repo)
    manifest = read_manifest(repo)
    if manifest is None:
        exists = (repo / MANIFEST_FILENAME).is_file()
        return [ManifestProblem(MANIFEST_FILENAME, "not valid JSON" if exists else "missing")], 0
    listed: dict[str, dict] = manifest.get("files", {})
    problems: list[ManifestProblem] = []
    verified = 0
    for relative, entry in sorted(listed.items()):
        path = repo / relative
        if not path.is_file():
            problems.append(ManifestProblem(relative, "listed in MANIFEST.json but missing"))
        elif path.stat().st_size != entry.get("size"):
            problems.append(
                ManifestProblem(
                    relative, f"size {path.stat().st_size} differs from MANIFEST.json ({entry.get('size')})"
                )
            )
        elif sha256_file(path) != entry.get("sha256"):
            problems.append(ManifestProblem(relative, "sha256 differs from MANIFEST.json (modified after export)"))
        else:
            verified += 1
    for covered in covered_files(repo):
        if covered.as_posix() not in listed:
            problems.append(ManifestProblem(covered.as_posix(), "not listed in MANIFEST.json (unexpected file)"))
    for folder in _model_folders(repo):
        for link in _walk(folder)[1]:
            problems.append(
                ManifestProblem(link.relative_to(repo).as_posix(), "link to a folder; MANIFEST.json cannot cover it")
            )
    return problems, verified
