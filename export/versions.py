"""Model versions in a repository: numbering, the saved model-level files, listing, rollback and live reload.

* **Numbering**: ``aigi export`` into an existing repository writes the next number (one more than any version
  of the prefix's models, retired ones included, so a number is never reused) as a new folder of the network,
  the preprocessing model *and* the ensemble; no existing version folder is touched.
* **Honest tags**: the ensemble's steps pin the exact versions of its composing models (``model_version: N``, not
  ``-1``) and the ensemble keeps one version (``latest { num_versions: 1 }``), so a response tagged with ensemble
  version N was computed by network N; the network and preprocessing models keep ``--keep-versions`` (default 2),
  so the version still pinned by the loaded ensemble stays loaded while the new ensemble loads.
* **Model-level files** (``config.pbtxt``, ``labels.txt``) belong to the whole model in Triton; a copy of the
  ones each version was exported with is sealed inside its version folder (:data:`SAVED_FILES`), so a rollback
  restores the previous version's threshold, labels and pins exactly.
* **Rollback** moves the newest version folders into ``R/.retired/PREFIX/N/`` (Triton and MANIFEST.json ignore
  hidden top-level folders without a ``config.pbtxt``) and restores the previous version's model-level files.
* **Reload** (:func:`reload`): one load of the ensemble through the restricted repository API, with the admin
  header (:func:`reload_order` says why only the ensemble).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from aigi.errors import RepositoryError, ServerError
from aigi.manifest import RETIRED_DIR

DEFAULT_KEEP_VERSIONS = 2
# model-level file -> the sealed copy kept in each version folder
SAVED_FILES = {"config.pbtxt": ".aigi-config.pbtxt", "labels.txt": ".aigi-labels.txt"}
ROLES = ("ensemble", "preprocess", "network")


def version_numbers(model_dir: Path) -> list[int]:
    """The numeric version folders of a model folder, ascending (none when the folder is missing)."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def retired_numbers(repo: Path, prefix: str) -> list[int]:
    """Versions of ``prefix`` moved into ``R/.retired/PREFIX/`` by a rollback."""
    return version_numbers(repo / RETIRED_DIR / prefix)


def next_version(repo: str | Path, prefix: str, model_dirs: list[str]) -> int:
    """One more than every version of ``model_dirs`` (the prefix's models) in ``repo``, retired ones included."""
    repo = Path(repo)
    seen = [n for name in model_dirs for n in version_numbers(repo / name)] + retired_numbers(repo, prefix)
    return max(seen, default=0) + 1


def version_policy_text(keep: int) -> str:
    """The ``version_policy`` line appended to a model's config.pbtxt (protobuf text: field order is free)."""
    if keep < 1:
        raise RepositoryError(f"--keep-versions must be at least 1, got {keep}")
    return f"version_policy {{ latest {{ num_versions: {keep} }} }}\n"


def seal_model_files(model_dir: Path, version: int) -> None:
    """Copy the model-level files into version folder ``version`` (see the module docstring)."""
    for source, saved in SAVED_FILES.items():
        if (model_dir / source).is_file():
            shutil.copy2(model_dir / source, model_dir / str(version) / saved)


def incompatibility(current: Path, staged: Path) -> str | None:
    """Why the staged model cannot become a new version beside ``current`` (``None`` when it can).

    Triton loads every kept version with the one model-level config: tensors, batch size, backend and labels
    must stay as they are. Parameters (precision, threshold, ORT settings) may change.
    """
    from aigi.export.triton_config import parse_config

    def shape(directory: Path) -> Any:
        proto = parse_config((directory / "config.pbtxt").read_text(), str(directory / "config.pbtxt"))
        return (list(proto.input), list(proto.output), proto.max_batch_size, proto.backend, proto.platform)

    labels = [(d / "labels.txt").read_text() if (d / "labels.txt").is_file() else None for d in (current, staged)]
    if labels[0] != labels[1]:
        return "its labels differ"
    if shape(current) != shape(staged):
        return "its inputs, outputs, max_batch_size or backend differ"
    return None


def _model_dirs(repo: Path, entry: dict[str, Any]) -> list[Path]:
    names = [entry.get("ensemble", ""), entry.get("preprocess_model", ""), entry.get("network_model", "")]
    return [repo / name for name in names if name]


def _export_entry(repo: Path, prefix: str) -> dict[str, Any]:
    from aigi.manifest import read_manifest

    entry = ((read_manifest(repo) or {}).get("exports") or {}).get(prefix)
    if not entry:
        raise RepositoryError(f"{repo}: MANIFEST.json records no export named {prefix!r}")
    entry.setdefault("ensemble", prefix)
    entry.setdefault("preprocess_model", f"{prefix}_preprocess")
    return entry


def list_versions(repo: str | Path, prefix: str = "aigi") -> list[dict[str, Any]]:
    """Every recorded version of ``prefix``: ``version``, ``state`` (current, available, retired), checkpoint,
    created, metrics and hashes, from MANIFEST.json, newest first."""
    repo = Path(repo)
    entry = _export_entry(repo, prefix)
    on_disk = version_numbers(repo / entry["network_model"])
    retired = retired_numbers(repo, prefix)
    current = max(on_disk, default=None)
    rows = []
    for key, record in sorted((entry.get("versions") or {}).items(), key=lambda item: -int(item[0])):
        number = int(key)
        state = "current" if number == current else "available" if number in on_disk else "retired"
        if state == "retired" and number not in retired:
            state = "removed"
        rows.append({"version": number, "state": state, **record})
    return rows


def rollback(repo: str | Path, prefix: str = "aigi") -> tuple[int, int]:
    """Retire the newest version of ``prefix`` and make the previous one current; re-seal MANIFEST.json.

    Returns:
        ``(retired version, now current version)``.

    Raises:
        RepositoryError: no export of ``prefix``, or fewer than two versions on disk.
    """
    from aigi.manifest import write_manifest

    repo = Path(repo)
    entry = _export_entry(repo, prefix)
    models = _model_dirs(repo, entry)
    versions = version_numbers(repo / entry["network_model"])
    if len(versions) < 2:
        raise RepositoryError(f"{repo}: {prefix} has {len(versions)} version(s) on disk; nothing to roll back to")
    newest, previous = versions[-1], versions[-2]
    for model in models:
        if not (model / str(previous)).is_dir():
            raise RepositoryError(f"{model.name}/{previous} is missing; cannot roll back")
    target = repo / RETIRED_DIR / prefix / str(newest)
    target.mkdir(parents=True, exist_ok=False)
    for model in models:
        if (model / str(newest)).is_dir():
            os.replace(model / str(newest), target / model.name)
        for source, saved in SAVED_FILES.items():
            if (model / str(previous) / saved).is_file():
                shutil.copy2(model / str(previous) / saved, model / f".{source}.tmp")
                os.replace(model / f".{source}.tmp", model / source)
    entry["version"] = previous
    entry["rolled_back"] = {"from": newest, "to": previous, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_manifest(repo, {prefix: entry})
    return newest, previous


# -- the restricted repository API ----------------------------------------------------------------


def _http(url: str, path: str, headers: dict[str, str], body: bytes | None = None, timeout: float = 300.0) -> Any:
    base = url if url.startswith(("http://", "https://")) else f"http://{url}"
    request = urllib.request.Request(base + path, data=body, headers=headers, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read().decode() or "null"
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:500]
        raise ServerError(f"{path}: HTTP {exc.code}: {detail}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise ServerError(f"{base}: {exc}") from exc
    return json.loads(text)


def composing_models(url: str, ensemble: str) -> list[str]:
    """The models the served ensemble's steps call, in step order (from its config, an unrestricted read)."""
    config = _http(url, f"/v2/models/{ensemble}/config", {})
    steps = ((config or {}).get("ensemble_scheduling") or {}).get("step") or []
    if not steps:
        raise ServerError(f"{ensemble} is not an ensemble (its config has no ensemble_scheduling steps)")
    return [step["model_name"] for step in steps]


def load_model(url: str, name: str, admin_key: str) -> float:
    """``POST /v2/repository/models/NAME/load`` with the admin header; returns the seconds it took."""
    from aigi.server import ADMIN_HEADER

    start = time.monotonic()
    _http(url, f"/v2/repository/models/{name}/load", {ADMIN_HEADER: admin_key}, body=b"{}")
    return time.monotonic() - start


def ready_versions(url: str, admin_key: str) -> dict[str, list[str]]:
    """``name -> versions READY`` from the repository index."""
    from aigi.server import ADMIN_HEADER

    index = _http(url, "/v2/repository/index", {ADMIN_HEADER: admin_key}, body=b"{}")
    ready: dict[str, list[str]] = {}
    for row in index or []:
        if row.get("state") == "READY":
            ready.setdefault(row["name"], []).append(str(row.get("version", "")))
    return ready


def reload_order(ensemble: str) -> list[str]:
    """Only the ensemble, measured on Triton 2.51 (wheel): loading an ensemble first loads its composing models
    whose files changed (new versions join the old, which the loaded ensemble still pins), then switches the
    ensemble; 0 of 804 answers mislabeled under load after an export, 0 of 346 after a rollback. Loading a
    composing model alone also reloads the ensembles that depend on it at once, before the other composing model
    has its new version: 174 of 644 answers came back tagged with the new version but computed by the old network.
    """
    return [ensemble]


def reload(url: str, admin_key: str, ensemble: str = "aigi") -> list[tuple[str, float]]:
    """Make the server load what the repository holds now (:func:`reload_order`); ``(model, seconds)`` per load.

    Raises:
        ServerError: ``ensemble`` is not a served ensemble, the key is wrong, or a load failed.
    """
    composing_models(url, ensemble)  # an ensemble, served: else a load would not reload its models
    return [(name, load_model(url, name, admin_key)) for name in reload_order(ensemble)]
