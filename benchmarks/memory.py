"""Peak memory during a cell: resident memory of a process tree on the CPU, device memory on a GPU.

On the CPU the kernel's high-water mark (``VmHWM`` in ``/proc``), reset before each cell through
``clear_refs``, gives an exact peak without sampling; Triton cells read the server's process tree (its
Python-backend stubs are child processes) instead of the client. On a GPU the device's used memory
(``cudaMemGetInfo``, so ONNX Runtime's and TensorRT's allocators and a Triton server count too) is sampled
by a background thread.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path

logger = logging.getLogger(__name__)

_MB = 2**20


def _status_kb(pid: int | str, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def process_tree(root_pid: int) -> list[int]:
    """``root_pid`` and all its descendants (Triton's Python backend stubs are child processes)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, frontier = [], [root_pid]
    while frontier:
        pid = frontier.pop()
        tree.append(pid)
        frontier.extend(children.get(pid, []))
    return tree


class RssProbe:
    """Resident memory of a set of processes (this one by default), with an exact per-window peak."""

    kind = "rss"

    def __init__(self, root_pid: int | None = None) -> None:
        self.root_pid = root_pid if root_pid is not None else os.getpid()

    def _pids(self) -> Iterable[int]:
        return process_tree(self.root_pid) if self.root_pid != os.getpid() else [self.root_pid]

    def current_mb(self) -> float:
        """Resident memory now, MiB (summed over the tree)."""
        return sum(_status_kb(pid, "VmRSS") for pid in self._pids()) / 1024

    def reset_peak(self) -> None:
        """Restart the kernel's high-water marks (``echo 5 > /proc/PID/clear_refs``)."""
        for pid in self._pids():
            try:
                with open(f"/proc/{pid}/clear_refs", "w") as handle:
                    handle.write("5")
            except OSError as exc:
                logger.debug("cannot reset the RSS peak of %s: %s", pid, exc)

    def peak_mb(self) -> float:
        """Highest resident memory since :meth:`reset_peak`, MiB (per-process peaks summed)."""
        return sum(_status_kb(pid, "VmHWM") for pid in self._pids()) / 1024


class GpuProbe:
    """Used memory of the first CUDA device, with the peak sampled every few milliseconds."""

    kind = "gpu"

    def __init__(self, interval_s: float = 0.005) -> None:
        import torch

        self._torch = torch
        self.interval_s = interval_s
        self._peak = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def current_mb(self) -> float:
        """Device memory in use now (every process), MiB."""
        free, total = self._torch.cuda.mem_get_info()
        return (total - free) / _MB

    def reset_peak(self) -> None:
        """Start sampling from now."""
        self.stop()
        self._peak = self.current_mb()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._peak = max(self._peak, self.current_mb())

    def stop(self) -> None:
        """Stop the sampler thread."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def peak_mb(self) -> float:
        """Highest device use since :meth:`reset_peak`, MiB."""
        self.stop()
        self._peak = max(self._peak, self.current_mb())
        return self._peak


def default_probe(on_gpu: bool, root_pid: int | None = None) -> RssProbe | GpuProbe:
    """The GPU probe for GPU runtimes, else the RSS probe of ``root_pid`` (this process when ``None``)."""
    return GpuProbe() if on_gpu else RssProbe(root_pid)
