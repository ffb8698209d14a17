"""The resumable training state in ``RUN_DIR/last/``, pickle-free.

Tensors (weights, optimizer moments, RNG states) go to safetensors; everything else (optimizer
hyperparameters, scheduler and grad-scaler scalars, history, the run's settings) to JSON. The folder is
written beside and swapped in whole, so an interrupted save leaves the previous state readable.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from aigi.checkpoint import write_json_atomic
from aigi.errors import CheckpointError

logger = logging.getLogger(__name__)

LAST_DIRNAME = "last"
STATE_FILENAME = "state.json"
WEIGHTS = "model.safetensors"
OPTIMIZER = "optimizer.safetensors"
RNG = "rng.safetensors"


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def optimizer_to_flat(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer ``state_dict`` into named tensors and a JSON-ready rest."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state_dict["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`optimizer_to_flat`."""
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = tensor
    for index, entry in rest.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(entry)
    return {"state": state, "param_groups": rest["param_groups"]}


def _rng_tensors() -> dict[str, torch.Tensor]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for device, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{device}"] = state
    return tensors


def _set_rng(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[key] for key in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def save_state(
    run_dir: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
    payload: dict[str, Any],
) -> Path:
    """Write the state after an epoch into ``run_dir/last`` and return that folder.

    ``payload`` carries the run's own JSON (epoch, history, best score, settings).
    """
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    final, staging = run_dir / LAST_DIRNAME, run_dir / (LAST_DIRNAME + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    weights = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    save_file(weights, str(staging / WEIGHTS))
    opt_tensors, opt_rest = optimizer_to_flat(optimizer.state_dict())
    save_file(opt_tensors, str(staging / OPTIMIZER))
    save_file(_rng_tensors(), str(staging / RNG))
    scheduler_state = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas" and _jsonable(v)}
    document = {
        **payload,
        "optimizer": opt_rest,
        "scheduler": scheduler_state,
        "grad_scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
    }
    write_json_atomic(staging / STATE_FILENAME, document)
    old = run_dir / (LAST_DIRNAME + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def read_state(run_dir: str | Path) -> dict[str, Any]:
    """The JSON part of ``run_dir/last`` (settings, epoch, history).

    Raises:
        CheckpointError: no resumable state there.
    """
    path = Path(run_dir) / LAST_DIRNAME / STATE_FILENAME
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: nothing to resume (no {LAST_DIRNAME}/{STATE_FILENAME}); drop --resume")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc


def restore_state(
    run_dir: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
) -> dict[str, Any]:
    """Load ``run_dir/last`` into the given objects and return its JSON document."""
    from safetensors.torch import load_file

    folder = Path(run_dir) / LAST_DIRNAME
    document = read_state(run_dir)
    try:
        model.load_state_dict(load_file(str(folder / WEIGHTS)), strict=True)
        optimizer.load_state_dict(optimizer_from_flat(load_file(str(folder / OPTIMIZER)), document["optimizer"]))
        _set_rng(load_file(str(folder / RNG)))
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        raise CheckpointError(f"{folder}: cannot resume: {str(exc).splitlines()[0]}") from exc
    scheduler.load_state_dict({**document["scheduler"], "lr_lambdas": [None] * len(optimizer.param_groups)})
    if scaler is not None and document.get("grad_scaler"):
        scaler.load_state_dict(document["grad_scaler"])
    return document
