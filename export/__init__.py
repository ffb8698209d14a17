"""Export: checkpoint -> ONNX (FP32, FP16, INT8) and TensorRT, checked against PyTorch, written as a Triton repository.

Modules: ``onnx_export`` (the graph), ``parity`` (checks), ``variants`` (FP16, INT8, ORT optimization timing),
``tensorrt_build`` (engine and ``build_engine.sh``), ``triton_config`` (typed configs <-> ``config.pbtxt``),
``repo_writer`` (layout, atomic install), ``manifest``, ``repo_check``, ``report``, ``pipeline`` (the steps) and
``commands`` (CLI). Nothing heavy is imported here.
"""
