"""Triton Python-backend model ``aigi_torch``: the checkpoint run by PyTorch, on a GPU when there is one.

For a GPU workstation without TensorRT or NVIDIA's container: the ``nvidia-pytriton`` wheel's server has only the
Python backend, and this model brings the GPU to it. ``aigi export --backend torch`` copies this file to
``<repo>/aigi_torch/1/model.py``, next to ``network_common.py`` (shared with ``aigi_cpu``: batching, metrics,
labels) and the run directory's ``model.safetensors`` and ``aigi.json``. The network is
:class:`aigi.export.torch_network.TorchNetwork` from the installed aigi (it needs torch and transformers anyway),
the same code ``aigi export`` checked against PyTorch.

Config parameters (:class:`aigi.export.torch_network.TorchNetSettings`): ``device`` (auto|cpu|cuda), ``precision``
(fp32|bf16|fp16; autocast on CUDA, refused on the CPU), ``compile`` (none|default|reduce-overhead|max-autotune)
and ``intra_op_threads``. A bad value fails the load with a message naming it. A ``KIND_GPU`` instance group (a
config override) puts each instance on the GPU Triton assigns it.

Same tensors as ``aigi_cpu``: ``pixel_values`` FP32 in, the configured outputs back in the config's types. All
requests of one ``execute`` call run as one batch. The network warms up while the model loads (every compiled
batch size, or batch 1 and ``max_batch_size``), so no request pays for compilation or CUDA set-up.
"""

from __future__ import annotations

import importlib.util
import json
import os
from types import ModuleType
from typing import TYPE_CHECKING

import triton_python_backend_utils as pb_utils


def _load_common() -> ModuleType:
    """``network_common.py`` from this file's folder, by path (it is copied beside this file; see its docstring)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "network_common.py")
    spec = importlib.util.spec_from_file_location("aigi_network_common", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if TYPE_CHECKING:
    from aigi.triton_models import network_common as common
else:
    common = _load_common()


class TritonPythonModel:
    """One :class:`~aigi.export.torch_network.TorchNetwork` per model instance."""

    def initialize(self, args: dict) -> None:
        """Load the checkpoint in the version folder onto the configured device and warm it up.

        Raises:
            TritonModelException: a bad parameter, a device this machine lacks, or an unloadable checkpoint.
        """
        from aigi.errors import AigiError
        from aigi.export.torch_network import TorchNetSettings, TorchNetwork

        name = args["model_name"]
        config = json.loads(args["model_config"])
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        gpu = args.get("model_instance_kind") == "GPU"
        try:
            settings = TorchNetSettings.from_parameters(common.string_parameters(config))
            self.network = TorchNetwork(
                version_dir,
                settings,
                max_batch=int(config.get("max_batch_size") or 1),
                device_index=int(args["model_instance_device_id"]) if gpu else None,
            )
        except AigiError as exc:
            raise pb_utils.TritonModelException(f"{name}: {exc}") from exc
        self.output_names = [output["name"] for output in config.get("output", [])]
        missing = sorted(set(self.output_names) - set(self.network.output_names))
        if missing:
            raise pb_utils.TritonModelException(
                f"{name}: the network has no outputs {missing} (it has {list(self.network.output_names)})"
            )
        self.dtypes = common.output_dtypes(config)
        labels = common.labels(args["model_repository"], common.probs_classes(config))
        self.metrics = common.Metrics(name, str(args["model_version"]), labels)
        seconds = self.network.warm_up()
        warmed = ", ".join(f"{size}: {value:.2f} s" for size, value in seconds.items())
        pb_utils.Logger.log_info(f"{name}: {version_dir}, {self.network.describe()}; warm-up by batch {warmed}")

    def execute(self, requests: list) -> list:
        """Run every request's ``pixel_values`` as one batch and split the outputs back."""

        def run(batch):
            outputs = self.network.run(batch)
            return [outputs[name] for name in self.output_names]

        return common.run_batched(requests, run, self.output_names, self.dtypes, self.metrics, "torch")

    def finalize(self) -> None:
        """Drop the network (and its device memory) and the metrics."""
        del self.network
        self.metrics.close()
