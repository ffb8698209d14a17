"""Open-set attribution: the ``unknown`` label from the val fit (aigi.training.open_set) to a real server's answer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from _export_helpers import make_tiny_checkpoint
from _serve_helpers import encode, running_server

from aigi.checkpoint import CheckpointMeta, load_meta, save_meta
from aigi.errors import CheckpointError, DatasetError, SettingsError
from aigi.labels import UNKNOWN, validate_labels
from aigi.training.open_set import (
    fit_open_set,
    fit_unknown_threshold,
    known_confidence,
    open_set_labels,
)

LABELS = ["real", "gan", "diffusion"]
DECISION = 0.4


def _fakes(confidences: np.ndarray, p_fake: float = 0.8) -> np.ndarray:
    """Probabilities of fakes whose best generator (``gan``) holds ``confidences`` of ``p_fake``."""
    confidences = np.asarray(confidences, dtype=np.float64)
    return np.stack([np.full_like(confidences, 1 - p_fake), p_fake * confidences, p_fake * (1 - confidences)], axis=1)


# -- the fit -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("keep", "named"), [(0.95, 19), (0.5, 10), (1.0, 20)])
def test_fit_unknown_threshold_keeps_exactly_the_asked_share_when_confidences_differ(keep: float, named: int) -> None:
    known = _fakes(np.linspace(0.55, 0.99, 20))
    real = np.array([[0.9, 0.05, 0.05]] * 5)  # confidence 0.5: would pull the threshold down if counted
    novel = _fakes(np.full(5, 0.5))  # a generator the model does not name (target -1): not fitted on either
    probs = np.concatenate([known, real, novel])
    targets = np.array([1] * 20 + [0] * 5 + [-1] * 5)
    threshold = fit_unknown_threshold(probs, LABELS, targets, keep)
    assert threshold is not None
    assert int((known_confidence(known, LABELS) >= threshold).sum()) == named
    ids = open_set_labels(known, LABELS, DECISION, threshold)
    assert int((ids == len(LABELS)).sum()) == 20 - named


def test_fit_unknown_threshold_counts_only_flagged_fakes_when_decision_threshold_is_given() -> None:
    flagged = _fakes(np.linspace(0.6, 0.95, 10), p_fake=0.8)
    unflagged = _fakes(np.full(10, 0.5), p_fake=0.3)  # below the decision threshold: never served as unknown
    probs = np.concatenate([flagged, unflagged])
    targets = np.ones(20, dtype=np.int64)
    everything = fit_unknown_threshold(probs, LABELS, targets, 0.9)
    only_flagged = fit_unknown_threshold(probs, LABELS, targets, 0.9, decision_threshold=DECISION)
    assert only_flagged is not None and everything is not None and only_flagged > everything
    assert int((known_confidence(flagged, LABELS) >= only_flagged).sum()) == 9


@pytest.mark.parametrize("labels", [["real", "fake"], ["real", "gan"]])
def test_open_set_is_skipped_when_model_has_fewer_than_two_generators(labels: list[str]) -> None:
    probs = np.array([[0.2, 0.8], [0.7, 0.3], [0.1, 0.9]])
    targets = np.array([1, 0, 1])
    assert fit_unknown_threshold(probs, labels, targets) is None
    assert fit_open_set(probs, labels, targets, DECISION) == {}
    assert open_set_labels(probs, labels, DECISION, 0.99).tolist() == [1, 0, 1]


def test_fit_unknown_threshold_returns_none_when_val_has_no_known_fake() -> None:
    probs = np.array([[0.9, 0.05, 0.05], [0.1, 0.5, 0.4]])
    assert fit_unknown_threshold(probs, LABELS, np.array([0, -1])) is None
    assert fit_open_set(probs, LABELS, np.array([0, -1]), DECISION)["threshold"] is None


@pytest.mark.parametrize("keep", [0.0, -0.1, 1.5])
def test_fit_unknown_threshold_raises_when_keep_is_outside_zero_one(keep: float) -> None:
    with pytest.raises(SettingsError, match="keep"):
        fit_unknown_threshold(_fakes(np.array([0.6, 0.7])), LABELS, np.array([1, 2]), keep)


def test_known_confidence_stays_in_unit_interval_when_p_fake_is_zero() -> None:
    probs = np.array([[1.0, 0.0, 0.0], [1.0 - 1e-9, 6e-10, 4e-10], [0.0, 0.5, 0.5], [0.0, 1.0, 0.0]])
    confidence = known_confidence(probs, LABELS)
    assert np.isfinite(confidence).all() and ((confidence >= 0) & (confidence <= 1)).all()
    assert confidence[2:].tolist() == [0.5, 1.0]


def test_unknown_is_refused_as_a_class_name_when_labels_are_validated() -> None:
    with pytest.raises(DatasetError, match=UNKNOWN):
        validate_labels(["real", "gan", UNKNOWN])


# -- aigi.json -----------------------------------------------------------------------------------


def test_aigi_json_loads_without_open_set_when_written_before_it_existed(tmp_path: Path) -> None:
    run = make_tiny_checkpoint(tmp_path / "run", labels=LABELS)
    document = json.loads((run / "aigi.json").read_text())
    document.pop("open_set")
    meta = CheckpointMeta.from_dict(document)
    assert meta.open_set == {} and meta.open_set_threshold is None
    meta.open_set = {"threshold": 0.61, "keep": 0.95}
    save_meta(run, meta)
    assert load_meta(run).open_set_threshold == 0.61


@pytest.mark.parametrize("bad", [1.5, -0.1, "0.5", True, float("nan")])
def test_aigi_json_is_rejected_when_open_set_threshold_is_not_in_unit_interval(tmp_path: Path, bad) -> None:
    document = json.loads((make_tiny_checkpoint(tmp_path / "run", labels=LABELS) / "aigi.json").read_text())
    document["open_set"] = {"threshold": bad}
    with pytest.raises(CheckpointError, match="open_set"):
        CheckpointMeta.from_dict(document)


# -- the graph's rule ----------------------------------------------------------------------------


def test_exportable_detector_serves_the_numpy_rule_when_open_set_threshold_is_set() -> None:
    torch = pytest.importorskip("torch")
    from aigi.training.model import ExportableDetector

    logits = torch.tensor(
        [
            [0.0, 3.0, 2.9],  # flagged fake, the two generators tie: unknown
            [0.0, 5.0, 0.0],  # flagged fake, gan confident: gan
            [3.0, 0.5, 0.4],  # not flagged: real, however unsure between the generators
            [0.0, 0.1, 4.0],  # flagged, diffusion confident: diffusion
        ]
    )

    class Fixed(torch.nn.Module):
        threshold, open_set_threshold, temperature = DECISION, 0.7, 2.0

        def forward(self, pixel_values):
            return logits[: len(pixel_values)]

    outputs = ExportableDetector(Fixed())(torch.zeros(4, 3, 8, 8))
    probs, label_id = outputs[1].numpy(), outputs[3].numpy()
    assert label_id.shape == (4, 1) and label_id.dtype == np.int64
    assert label_id[:, 0].tolist() == open_set_labels(probs, LABELS, DECISION, 0.7).tolist() == [3, 1, 0, 2]
    Fixed.open_set_threshold = None
    assert ExportableDetector(Fixed())(torch.zeros(4, 3, 8, 8))[3][:, 0].tolist() == [1, 1, 0, 2]


# -- aigi eval -----------------------------------------------------------------------------------


def test_eval_stores_open_set_threshold_and_reports_unknown_when_model_is_source(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from _training_helpers import make_easy_dataset

    from aigi.cli import main

    classes = ("real", "gen_a", "gen_b")
    data = make_easy_dataset(tmp_path / "data", classes, per_split={"val": 6, "test": 4}, size=64)
    run = make_tiny_checkpoint(tmp_path / "run", labels=list(classes))
    out = tmp_path / "eval"
    argv = ["-q", "eval", "--checkpoint", str(run), "--data", str(data), "--out", str(out), "--open-set-keep", "0.5"]
    # an untrained model separates nothing: a target FPR of 1 flags every val fake, so the open set has data
    assert main([*argv, "--batch-size", "32", "--target-fpr", "1"]) == 0
    report = json.loads((out / "report.json").read_text())
    meta = load_meta(run)
    assert meta.open_set["keep"] == 0.5 and meta.open_set["n_val_known_flagged"] <= 12
    assert meta.open_set_threshold == report["open_set"]["threshold"] is not None
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    probs = np.asarray([row["probs"] for row in rows], dtype=np.float32)
    served = open_set_labels(probs, list(classes), meta.threshold, meta.open_set_threshold)
    assert [row["served"] for row in rows] == [[*classes, UNKNOWN][i] for i in served]
    fakes = [row for row in rows if row["label"] != "real" and row["is_fake"]]
    test = report["open_set"]["test"]
    assert test["flagged_fakes"] == len(fakes)
    assert test["unknown"] == sum(row["served"] == UNKNOWN for row in fakes)
    named = [row for row in fakes if row["served"] != UNKNOWN]
    if named:
        assert test["attribution_accuracy_named"] == pytest.approx(np.mean([r["served"] == r["label"] for r in named]))


# -- exported and served -------------------------------------------------------------------------


def _images() -> list[bytes]:
    rng = np.random.default_rng(5)
    smooth = [np.repeat(np.repeat(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8), 8, 0), 8, 1) for _ in range(3)]
    noise = [rng.integers(0, 256, (230 + 10 * i, 240, 3), dtype=np.uint8) for i in range(5)]
    return [encode(pixels, "PNG") for pixels in smooth + noise]


def _served_reference(run: Path, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
    from aigi.export import parity
    from aigi.training.model import load_checkpoint

    detector, _ = load_checkpoint(run)
    return parity.torch_outputs(detector, pixel_values)


def _between(values: np.ndarray) -> float:
    """A threshold in the widest gap between sorted ``values``, so some fall below it and some above."""
    ranked = np.sort(values)
    gaps = np.diff(ranked)
    widest = int(np.argmax(gaps))
    assert gaps[widest] > 1e-4, f"confidences too close to split reliably: {ranked}"
    return float((ranked[widest] + ranked[widest + 1]) / 2)


@pytest.fixture(scope="module")
def open_set_export(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny source model with temperature 2 and an open-set threshold that makes some test images ``unknown``,
    exported by the real ``aigi export --backend cpu``, with PyTorch's answers for the images."""
    pytest.importorskip("torch")
    from aigi.cli import main
    from aigi.preprocessing import preprocess_batch

    root = tmp_path_factory.mktemp("open_set")
    run = make_tiny_checkpoint(root / "run", labels=LABELS, seed=3)
    meta = load_meta(run)
    meta.temperature = 2.0
    save_meta(run, meta)
    images = _images()
    pixels = preprocess_batch(images, meta.preprocessing)
    before = _served_reference(run, pixels)  # no open set yet: where do the confidences of these images lie?
    assert (before["p_fake"][:, 0] >= meta.threshold).all(), "every image should look generated to this model"
    meta.open_set = {"threshold": _between(known_confidence(before["probs"], LABELS)), "keep": 0.95}
    save_meta(run, meta)
    reference = _served_reference(run, pixels)
    repo = root / "repo"
    argv = ["export", "--checkpoint", str(run), "--repo", str(repo), "--backend", "cpu", "--no-timing"]
    assert main([*argv, "--max-batch", "8", "--intra-op-threads", "1"]) == 0
    return {"run": run, "repo": repo, "images": images, "pixels": pixels, "reference": reference}


def test_onnx_graph_matches_pytorch_when_temperature_and_open_set_are_baked_in(open_set_export) -> None:
    from aigi.export import parity
    from aigi.training.calibration import softmax

    runner = parity.onnx_runner(open_set_export["repo"] / "aigi_cpu" / "1" / "model.onnx")
    batches = [open_set_export["pixels"], *(b.pixel_values for b in parity.random_batches(224, sizes=(3,)))]
    for batch in batches:
        served = runner(batch)
        reference = parity.torch_outputs(_loaded(open_set_export["run"]), batch)
        for name in parity.OUTPUTS:
            np.testing.assert_allclose(served[name], reference[name], atol=1e-5)
        assert served["label_id"].dtype == np.int64
        np.testing.assert_array_equal(served["label_id"], reference["label_id"])
        np.testing.assert_allclose(served["probs"], softmax(served["logits"], 2.0), atol=1e-5)
    ids = open_set_export["reference"]["label_id"][:, 0]
    assert (ids == len(LABELS)).any() and (ids < len(LABELS)).any(), ids


def _loaded(run: Path):
    from aigi.training.model import load_checkpoint

    return load_checkpoint(run)[0]


def _legacy_copy(repo: Path) -> None:
    """``legacy``: the same models as a repository exported before ``label_id`` existed (configs without it)."""
    from aigi.export.triton_config import config_from_proto, parse_config, render_config

    for old, new in (("aigi", "legacy"), ("aigi_cpu", "legacy_cpu")):
        shutil.copytree(repo / old, repo / new)
        config = config_from_proto(parse_config((repo / new / "config.pbtxt").read_text()))
        config.name = new
        config.outputs = [spec for spec in config.outputs if spec.name != "label_id"]
        for step in config.ensemble_steps:
            step.output_map.pop("label_id", None)
            step.model_name = step.model_name.replace("aigi_cpu", "legacy_cpu")
        if "network_model" in config.parameters:
            config.parameters["network_model"] = "legacy_cpu"
        (repo / new / "config.pbtxt").write_text(render_config(config))


@pytest.mark.triton
def test_client_returns_unknown_with_closest_known_when_served_model_has_open_set(open_set_export) -> None:
    import asyncio

    from aigi.client import AsyncDetector, Detector

    repo, images = open_set_export["repo"], open_set_export["images"]
    reference = open_set_export["reference"]
    names = [*LABELS, UNKNOWN]
    expected = [names[i] for i in reference["label_id"][:, 0]]
    closest = [LABELS[1 + int(np.argmax(row[1:]))] for row in reference["probs"]]
    _legacy_copy(repo)
    with running_server(repo, log_file=repo.parent / "tritonserver.log") as server:
        answers = {}
        for protocol, preprocess in (("grpc", "server"), ("http", "client")):
            with Detector(server.endpoints[protocol], protocol=protocol, preprocess=preprocess) as detector:
                answers[protocol, preprocess] = detector.detect(images)
                assert detector.info.label_ids

        async def run_async():
            async with AsyncDetector(server.endpoints["grpc"]) as detector:
                return await detector.detect(images)

        answers["async", "server"] = asyncio.run(run_async())
        with Detector(server.endpoints["http"], protocol="http", model="legacy") as detector:
            legacy = detector.detect(images)
            assert not detector.info.label_ids
    for results in answers.values():
        assert [r.label for r in results] == expected
        assert [r.closest_known for r in results] == [
            guess if label == UNKNOWN else None for label, guess in zip(expected, closest, strict=True)
        ]
        assert all(r.is_fake for r in results)
    # a repository without label_id: the client names the argmax, as before open-set attribution
    assert [r.label for r in legacy] == [LABELS[int(np.argmax(row))] for row in reference["probs"]]
    assert all(r.closest_known is None for r in legacy)
