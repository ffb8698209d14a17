"""The one place the production Triton container tag is pinned.

``aigi export --backend trt`` writes it into ``build_engine.sh`` (TensorRT engines only load in the TensorRT
version that built them, so the engine is built in the image that serves it), ``aigi serve --print-docker`` runs
it, and docs/SECURITY.md explains why production serves this container rather than the wheel's server: re-pin it
here when NVIDIA publishes a Triton security bulletin. Core module: no imports, so every stage can read it.
"""

TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:26.06-py3"
