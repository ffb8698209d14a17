"""The machine a benchmark ran on: CPU, cores, memory, GPU and driver, library versions."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import logging
import os
import platform
import shutil
import subprocess
from typing import Any

logger = logging.getLogger(__name__)

LIBRARIES = (
    "aigi",
    "numpy",
    "torch",
    "transformers",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "tensorrt",
    "tritonclient",
    "nvidia-pytriton",
    "perf-analyzer",
)


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (or ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_total_gb() -> float | None:
    """Physical memory in GiB, from ``/proc/meminfo``."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries a cell may use (absent ones are left out)."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _nvidia_smi() -> dict[str, str]:
    if not shutil.which("nvidia-smi"):
        return {}
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    fields = [field.strip() for field in out.splitlines()[0].split(",")] if out else []
    keys = ("name", "driver", "memory_total", "max_sm_clock")
    return dict(zip(keys, fields, strict=False))


def gpu_info() -> dict[str, Any] | None:
    """The first CUDA GPU's name, memory, compute capability, driver and CUDA version; ``None`` without one."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    info: dict[str, Any] = {
        "name": props.name,
        "count": torch.cuda.device_count(),
        "memory_gb": round(props.total_memory / 2**30, 1),
        "compute_capability": f"{props.major}.{props.minor}",
        "multiprocessors": props.multi_processor_count,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
    }
    smi = _nvidia_smi()
    if smi:
        info["driver"] = smi.get("driver")
        info["max_sm_clock"] = smi.get("max_sm_clock")
    return info


def collect_environment() -> dict[str, Any]:
    """Everything :mod:`aigi.benchmarks` records about the machine, JSON-ready."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    env: dict[str, Any] = {
        "timestamp": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_cores_logical": os.cpu_count(),
        "cpu_cores_usable": affinity,
        "memory_gb": memory_total_gb(),
        "gpu": gpu_info(),
        "libraries": library_versions(),
        "tools": {
            "tritonserver": _tritonserver_path(),
            "perf_analyzer": shutil.which("perf_analyzer"),
            "nvidia-smi": shutil.which("nvidia-smi"),
        },
    }
    try:
        import torch

        env["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    try:
        import onnxruntime

        env["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        pass
    return env


def _tritonserver_path() -> str | None:
    found = shutil.which("tritonserver")
    if found:
        return found
    try:
        import pytriton  # noqa: F401 - only to locate its bundled server

        candidate = os.path.join(os.path.dirname(pytriton.__file__), "tritonserver", "bin", "tritonserver")
        return candidate if os.path.isfile(candidate) else None
    except ImportError:
        return None
