"""``aigi update-check``: a live model update under concurrent clients, with nothing lost and every answer honest.

1. Export ``--checkpoint`` (version 1) into a fresh repository and serve it.
2. Export ``--update-to`` into the *same* repository: version 2, written beside version 1 while it serves.
3. References, before the switch: every payload through each version's own ``model.onnx`` in ONNX Runtime, in
   process (the served network runs the same file), and version 1's references checked against the server.
4. ``--clients`` threads call the ensemble for ``--duration`` s; at ``--switch-at`` of it the check loads the
   new version through the restricted repository API (:func:`aigi.export.versions.reload`).
5. Every image of every call is judged: an answer must carry a version the repository holds and match *that*
   version's reference (``|p_fake - ref| <= tolerance``, same label); a call that raised or an image with an error
   is *lost*; once the reload has returned, an answer from version 1 (to a call sent after that) is *stale*.

The tags are honest because the ensemble pins its composing models' versions (:mod:`aigi.export.versions`).
"""

from __future__ import annotations

import argparse
import io
import json
import random
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOLERANCE = 1e-4  # FP32 network: the export's parity tolerance (see aigi.benchmarks.fault_check.TOLERANCES)
EXAMPLES_KEPT = 8


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``aigi update-check``."""
    parser = subparsers.add_parser(
        "update-check",
        help="serve a model, export and load version 2 under concurrent clients: nothing may be lost or mislabeled",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="run directory served first (version 1)")
    parser.add_argument("--update-to", required=True, type=Path, help="run directory exported live (version 2)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent client threads (default 4)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load (default 10)")
    parser.add_argument("--switch-at", type=float, default=0.5, help="fraction of the run at which v2 loads")
    parser.add_argument("--images", type=int, default=16, help="distinct payloads (default 16)")
    parser.add_argument("--out", type=Path, help="folder for update_check.json and UPDATE_CHECK.md")
    parser.set_defaults(handler=_handler)


def _handler(args: argparse.Namespace) -> int:
    settings = UpdateSettings(args.checkpoint, args.update_to, args.clients, args.duration, args.switch_at, args.images)
    result = run_update_check(settings)
    if args.out:
        write_report(result, args.out)
    print(summary_line(result))
    return 0 if result["passed"] else 1


@dataclass
class UpdateSettings:
    """The check's inputs (see the module docstring)."""

    checkpoint: Path
    update_to: Path
    clients: int = 4
    duration_s: float = 10.0
    switch_at: float = 0.5
    images: int = 16
    max_batch: int = 8


@dataclass
class Judge:
    """Per-image outcomes of one client thread (merged at the end)."""

    calls: int = 0
    sent: int = 0
    answered: dict[str, int] = field(default_factory=dict)
    wrong: int = 0
    lost: int = 0
    stale: int = 0
    unknown_version: int = 0
    max_dp_fake: float = 0.0
    examples: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if len(self.examples) < EXAMPLES_KEPT:
            self.examples.append(text[:300])

    def judge(self, picks: list[int], results: list[Any], refs: dict[str, list[tuple[str, float]]], stale: bool):
        """Judge the results of one call (``stale``: it was sent after the reload returned)."""
        for index, result in zip(picks, results, strict=False):
            if not result.ok:
                self.lost += 1
                self.note(f"payload {index}: {result.error}")
                continue
            version = str(result.model_version)
            if version not in refs:
                self.unknown_version += 1
                self.note(f"payload {index}: answered by unknown version {version!r}")
                continue
            label, p_fake = refs[version][index]
            delta = abs(float(result.p_fake) - p_fake)
            self.max_dp_fake = max(self.max_dp_fake, delta)
            if delta > TOLERANCE or result.label != label:
                self.wrong += 1
                self.note(f"payload {index} v{version}: {result.label} {result.p_fake} != ref {label} {p_fake}")
                continue
            self.answered[version] = self.answered.get(version, 0) + 1
            if stale and version == "1":
                self.stale += 1
        self.lost += max(0, len(picks) - len(results))

    def merge(self, other: Judge) -> None:
        for name in ("calls", "sent", "wrong", "lost", "stale", "unknown_version"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for key, value in other.answered.items():
            self.answered[key] = self.answered.get(key, 0) + value
        self.max_dp_fake = max(self.max_dp_fake, other.max_dp_fake)
        self.examples.extend(other.examples[: max(0, EXAMPLES_KEPT - len(self.examples))])


def payloads(count: int, seed: int = 0) -> list[bytes]:
    """``count`` PNG/JPEG images of varied sizes (some below 224 px, some cropped)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = []
    for index in range(count):
        side = int(rng.integers(180, 320))
        buffer = io.BytesIO()
        pixels = rng.integers(0, 256, (side, side + 8 * (index % 3), 3), dtype=np.uint8)
        Image.fromarray(pixels).save(buffer, format="PNG" if index % 2 else "JPEG", quality=92)
        images.append(buffer.getvalue())
    return images


def local_reference(repo: Path, network: str, version: int, images: list[bytes]) -> list[tuple[str, float]]:
    """``(label, p_fake)`` per image from ``network/version/model.onnx`` in ONNX Runtime, through aigi.preprocessing."""
    import onnxruntime as ort

    from aigi.checkpoint import CheckpointMeta
    from aigi.preprocessing import preprocess_batch

    saved = repo / "aigi" / str(version) / ".aigi-config.pbtxt"
    meta_json = _parameter(saved.read_text(), "aigi_json")
    meta = CheckpointMeta.from_dict(json.loads(meta_json))
    session = ort.InferenceSession(
        str(repo / network / str(version) / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    probs, p_fake = session.run(["probs", "p_fake"], {"pixel_values": preprocess_batch(images, meta.preprocessing)})
    return [(meta.labels[int(row.argmax())], float(p[0])) for row, p in zip(probs, p_fake, strict=True)]


def _parameter(config_text: str, key: str) -> str:
    from aigi.export.triton_config import parse_config

    return str(parse_config(config_text).parameters[key].string_value)


def _export(checkpoint: Path, repo: Path, max_batch: int) -> None:
    from aigi.cli import main

    argv = ["export", "--checkpoint", str(checkpoint), "--repo", str(repo), "--backend", "cpu", "--no-timing"]
    code = main([*argv, "--max-batch", str(max_batch), "--intra-op-threads", "1"])
    if code != 0:
        raise RuntimeError(f"aigi export {checkpoint} failed with exit code {code}")


def _client(url: str, images: list[bytes], refs, clock: dict[str, float], stop: threading.Event, judge: Judge):
    from aigi.client.detector import Detector

    rng = random.Random(id(judge))
    with Detector(url, protocol="grpc", timeout=30.0, retry_timeout=30.0) as detector:
        while not stop.is_set():
            picks = [rng.randrange(len(images)) for _ in range(rng.randint(1, 4))]
            sent_at = time.monotonic()
            stale = sent_at > clock.get("switched", float("inf"))
            judge.calls += 1
            judge.sent += len(picks)
            try:
                results = detector.detect([images[i] for i in picks])
            except Exception as exc:  # every image of a call that raised is lost, and the run goes on
                judge.lost += len(picks)
                judge.note(f"call raised {type(exc).__name__}: {exc}")
                continue
            judge.judge(picks, results, refs, stale)


def _load_phase(settings: UpdateSettings, server: Any, images: list[bytes], refs) -> dict[str, Any]:
    """The clients run for the duration; the new version is loaded at ``switch_at`` of it."""
    from aigi.export.versions import ready_versions, reload

    stop, clock = threading.Event(), dict[str, float]()
    judges = [Judge() for _ in range(settings.clients)]
    url, key = server.endpoints["http"], server.admin_key
    threads = [
        threading.Thread(target=_client, args=(server.endpoints["grpc"], images, refs, clock, stop, judge))
        for judge in judges
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    time.sleep(settings.duration_s * settings.switch_at)
    clock["begin"] = time.monotonic()
    loads = reload(url, key, "aigi")
    clock["switched"] = time.monotonic()
    ready_after = ready_versions(url, key)
    time.sleep(max(0.0, started + settings.duration_s - time.monotonic()))
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    total = Judge()
    for judge in judges:
        total.merge(judge)
    return {
        "judge": total,
        "switch_begin_s": round(clock["begin"] - started, 3),
        "switch_s": round(clock["switched"] - clock["begin"], 3),
        "loads": [{"model": name, "seconds": round(seconds, 3)} for name, seconds in loads],
        "ready_after_switch": ready_after,
        "run_s": round(time.monotonic() - started, 3),
        "stuck_threads": sum(thread.is_alive() for thread in threads),
    }


def run_update_check(settings: UpdateSettings, workdir: Path | None = None) -> dict[str, Any]:
    """Run the check (module docstring); the result dict that :func:`write_report` writes."""
    from aigi.client.detector import Detector
    from aigi.server import TritonServer

    with tempfile.TemporaryDirectory(prefix="aigi-update-check-") as scratch:
        repo = Path(workdir or scratch) / "repo"
        _export(settings.checkpoint, repo, settings.max_batch)
        images = payloads(settings.images)
        with TritonServer(repo, log_file=repo.parent / "tritonserver.log") as server:
            with Detector(server.endpoints["grpc"], protocol="grpc") as detector:
                served_v1 = detector.detect(images)
            _export(settings.update_to, repo, settings.max_batch)  # version 2, beside the served version 1
            refs = {str(v): local_reference(repo, "aigi_cpu", v, images) for v in (1, 2)}
            check = max(abs(float(r.p_fake or 0.0) - refs["1"][i][1]) for i, r in enumerate(served_v1))
            phase = _load_phase(settings, server, images, refs)
    judge: Judge = phase.pop("judge")
    differing = sum(abs(a[1] - b[1]) > TOLERANCE for a, b in zip(refs["1"], refs["2"], strict=True))
    passed = (
        judge.lost == judge.wrong == judge.stale == judge.unknown_version == phase["stuck_threads"] == 0
        and judge.answered.get("2", 0) > 0
        and check <= TOLERANCE
    )
    return {
        "passed": passed,
        "settings": {key: str(value) for key, value in vars(settings).items()},
        "tolerance_p_fake": TOLERANCE,
        "reference": {"v1_server_vs_local_max_dp_fake": check, "payloads_differing_v1_v2": differing},
        "calls": judge.calls,
        "images_sent": judge.sent,
        "answered_by_version": judge.answered,
        "lost": judge.lost,
        "wrong": judge.wrong,
        "stale_v1_after_switch": judge.stale,
        "unknown_version": judge.unknown_version,
        "max_dp_fake": judge.max_dp_fake,
        "examples": judge.examples,
        **phase,
    }


def summary_line(result: dict[str, Any]) -> str:
    """One line: passed or not, and the counts."""
    verdict = "PASSED" if result["passed"] else "FAILED"
    return (
        f"update check {verdict}: {result['images_sent']} images in {result['calls']} calls, answered by version "
        f"{result['answered_by_version']}, lost {result['lost']}, wrong {result['wrong']}, stale v1 after the "
        f"switch {result['stale_v1_after_switch']}; reload took {result['switch_s']} s"
    )


def write_report(result: dict[str, Any], out: Path) -> None:
    """``update_check.json`` and ``UPDATE_CHECK.md`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "update_check.json").write_text(json.dumps(result, indent=2) + "\n")
    loads = ", ".join(f"{row['model']} {row['seconds']} s" for row in result["loads"])
    lines = [
        "# Live model update",
        "",
        f"**{summary_line(result)}**",
        "",
        "| figure | value |",
        "|---|---|",
        f"| clients, duration | {result['settings']['clients']}, {result['settings']['duration_s']} s |",
        f"| reload began at | {result['switch_begin_s']} s |",
        f"| reload (repository API loads) | {result['switch_s']} s: {loads} |",
        f"| versions ready after the reload | {result['ready_after_switch']} |",
        f"| answers by version | {result['answered_by_version']} |",
        f"| lost / wrong / stale v1 / unknown version | {result['lost']} / {result['wrong']} / "
        f"{result['stale_v1_after_switch']} / {result['unknown_version']} |",
        f"| max abs p_fake difference from the answering version's reference | {result['max_dp_fake']:.3g} "
        f"(tolerance {result['tolerance_p_fake']}) |",
        f"| payloads whose v1 and v2 references differ | {result['reference']['payloads_differing_v1_v2']} |",
        f"| v1 served vs local reference | {result['reference']['v1_server_vs_local_max_dp_fake']:.3g} |",
        "",
        "References: each version's `model.onnx` in ONNX Runtime, in process, computed before the switch.",
        "Stale: an answer from version 1 to a call sent after the reload returned.",
    ]
    if result["examples"]:
        lines += ["", "Examples:", "", *[f"- {text}" for text in result["examples"]]]
    (out / "UPDATE_CHECK.md").write_text("\n".join(lines) + "\n")
