"""Export: checkpoint -> ONNX (FP32, FP16, INT8) and TensorRT, checked against PyTorch, written as a Triton repository.

Modules: ``onnx_export`` (the graph), ``parity`` (checks), ``variants`` (FP16, INT8, ORT optimization timing),
``tensorrt_build`` (engine and ``build_engine.sh``), ``triton_config`` (typed configs <-> ``config.pbtxt``),
``repo_writer`` (layout, atomic install, what of aigi.json is served), ``repo_check``, ``report``, ``pipeline``
(the steps) and ``commands`` (CLI). ``MANIFEST.json`` lives in the core, :mod:`aigi.manifest`, so ``aigi serve``
can verify a repository without this package. Nothing heavy is imported here.
"""
