"""Session fixtures for the serving tests: one tiny exported repository, one real Triton server.

``triton_server`` exports a random-init ``tiny`` checkpoint with the real ``aigi export --backend
cpu`` and serves it with :class:`aigi.server.TritonServer` on free ports, once per session (start
~2 s, stop ~4 s). ``reference_probs`` is in-process PyTorch on the same checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from _serve_helpers import SERVE_LABELS, SERVE_MAX_BATCH, SERVE_THRESHOLD, encode, png_claiming, running_server


@pytest.fixture(scope="session")
def sample_images() -> list[bytes]:
    """Encoded images the detector must classify: sizes below and above 224, PNG and JPEG, gray and RGBA."""
    rng = np.random.default_rng(7)
    return [
        encode(rng.integers(0, 256, (180, 200, 3), dtype=np.uint8), "PNG"),
        encode(rng.integers(0, 256, (300, 260, 3), dtype=np.uint8), "JPEG", quality=90),
        encode(rng.integers(0, 256, (240, 240), dtype=np.uint8), "PNG"),
        encode(rng.integers(0, 256, (230, 250, 4), dtype=np.uint8), "PNG"),
        encode(rng.integers(0, 256, (400, 320, 3), dtype=np.uint8), "PNG"),
    ]


@pytest.fixture(scope="session")
def bad_images(sample_images: list[bytes]) -> dict[str, bytes]:
    """Inputs the server must refuse, one request each, while it keeps serving."""
    jpeg = sample_images[1]
    return {
        "random bytes": np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "empty": b"",
        "truncated jpeg": jpeg[: len(jpeg) // 3],
        "text file": b"these are not the pixels you are looking for\n" * 20,
        "png claiming 50000x50000": png_claiming(50000, 50000),
    }


@pytest.fixture(scope="session")
def serve_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init ``tiny`` detector with three labels (no training)."""
    pytest.importorskip("torch")
    from aigi.checkpoint import CheckpointMeta
    from aigi.preprocessing import PreprocessSpec
    from aigi.training.model import create_detector, save_checkpoint

    run = tmp_path_factory.mktemp("serve_run")
    detector, arch = create_detector("tiny", num_labels=len(SERVE_LABELS), seed=11)
    meta = CheckpointMeta(
        architecture=arch,
        task="source",
        labels=SERVE_LABELS,
        preprocessing=PreprocessSpec(size=224),
        threshold=SERVE_THRESHOLD,
    )
    save_checkpoint(run, detector, meta)
    return run


@pytest.fixture(scope="session")
def serve_repo(serve_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkpoint exported by the real ``aigi export --backend cpu``."""
    from aigi.cli import main

    repo = tmp_path_factory.mktemp("serve_repo") / "repo"
    argv = ["export", "--checkpoint", str(serve_checkpoint), "--repo", str(repo), "--backend", "cpu"]
    code = main([*argv, "--max-batch", str(SERVE_MAX_BATCH), "--no-timing", "--intra-op-threads", "1"])
    assert code == 0, f"aigi export failed with exit code {code}"
    return repo


@pytest.fixture(scope="session")
def triton_server(serve_repo: Path) -> Iterator[object]:
    """A running :class:`aigi.server.TritonServer` on the exported repository, on free ports."""
    with running_server(serve_repo, log_file=serve_repo.parent / "tritonserver.log") as server:
        yield server


@pytest.fixture(scope="session")
def reference_probs(serve_checkpoint: Path) -> Callable[[list], np.ndarray]:
    """In-process PyTorch: images -> probs ``[N, C]``, through the same aigi.preprocessing."""
    import torch

    from aigi.preprocessing import preprocess_batch
    from aigi.training.model import load_checkpoint

    detector, meta = load_checkpoint(serve_checkpoint)

    def run(images: list) -> np.ndarray:
        with torch.inference_mode():
            logits = detector(torch.from_numpy(preprocess_batch(images, meta.preprocessing)))
            return torch.softmax(logits.float(), dim=-1).numpy()

    return run
