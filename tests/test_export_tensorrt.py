"""TensorRT: the build script everywhere; the engine build itself only where TensorRT and a CUDA GPU exist."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from aigi.export.tensorrt_build import (
    BUILD_SCRIPT_FILENAME,
    TRITON_IMAGE,
    EngineShapes,
    build_script,
    trtexec_args,
    write_build_script,
)


def test_trtexec_args_cover_profile_when_built():
    args = trtexec_args(EngineShapes(image_size=336, max_batch=32, opt_batch=8))
    assert "--stronglyTyped" in args
    assert "--minShapes=pixel_values:1x3x336x336" in args
    assert "--optShapes=pixel_values:8x3x336x336" in args
    assert "--maxShapes=pixel_values:32x3x336x336" in args
    assert "--saveEngine=model.plan" in args and "--timingCacheFile=timing.cache" in args


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_build_script_is_valid_bash_when_written(tmp_path):
    path = write_build_script(tmp_path, EngineShapes(224, 16, 8))
    assert path.name == BUILD_SCRIPT_FILENAME and path.stat().st_mode & 0o111
    subprocess.run(["bash", "-n", str(path)], check=True)
    assert TRITON_IMAGE in build_script(EngineShapes(224, 16, 8))


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_build_engine_matches_pytorch_when_tensorrt_and_gpu_present(tmp_path):
    pytest.importorskip("tensorrt")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from aigi.export import parity, tensorrt_build, variants
    from aigi.export.onnx_export import export_onnx
    from aigi.training.model import create_detector

    detector, _ = create_detector("tiny", num_labels=3, seed=0)
    detector.eval()
    export_onnx(detector, tmp_path / "model.onnx", 224)
    variants.make_fp16(tmp_path / "model.onnx", tmp_path / tensorrt_build.FP16_ONNX_FILENAME)
    info = tensorrt_build.build_engine(tmp_path, EngineShapes(224, max_batch=8, opt_batch=4))
    assert (tmp_path / "model.plan").is_file() and (tmp_path / "timing.cache").is_file()
    assert info.max_batch == 8 and info.compute_capability
    batches = parity.random_batches(224, sizes=(1, 7))
    references = [parity.torch_outputs(detector, batch.pixel_values) for batch in batches]
    runner = tensorrt_build.engine_runner(tmp_path / "model.plan")
    result = parity.check("model.plan", runner, batches, references, parity.TOLERANCES["trt"], 0.5)
    assert result.passed, result.summary()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_build_script_writes_engine_and_sidecar_when_run_locally(tmp_path):
    import json

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # stand-ins for the two NVIDIA tools the script calls; the script's own logic is what is under test
    (bin_dir / "trtexec").write_text(
        '#!/usr/bin/env bash\necho "&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec $*"\n'
        'for a in "$@"; do case $a in --saveEngine=*) echo plan > "${a#--saveEngine=}";; esac; done\n'
    )
    (bin_dir / "nvidia-smi").write_text('#!/usr/bin/env bash\necho "NVIDIA H200, 9.0"\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    engine_dir = tmp_path / "engine"
    engine_dir.mkdir()
    script = write_build_script(engine_dir, EngineShapes(224, 16, 8))
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    subprocess.run(["bash", str(script), "--local"], check=True, env=env, cwd=tmp_path, capture_output=True)
    assert (engine_dir / "model.plan").read_text() == "plan\n"
    sidecar = json.loads((engine_dir / "model.plan.json").read_text())
    assert sidecar["tensorrt_version"] == "100300"
    assert sidecar["gpu_name"] == "NVIDIA H200" and sidecar["compute_capability"] == "9.0"
    assert sidecar["max_batch"] == 16 and sidecar["strongly_typed"] is True
