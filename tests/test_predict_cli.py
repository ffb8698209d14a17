"""``aigi predict`` against the session's Triton server, and its exit codes."""

from __future__ import annotations

import json

import pytest
from _serve_helpers import SERVE_LABELS

from aigi.cli import main
from aigi.client.commands import collect_images
from aigi.server import free_port


@pytest.fixture()
def image_tree(tmp_path, sample_images, bad_images):
    """good/a.png, good/nested/b.jpg, mixed/c.png + mixed/broken.jpg, and a notes.txt that folders skip."""
    (tmp_path / "good" / "nested").mkdir(parents=True)
    (tmp_path / "mixed").mkdir()
    (tmp_path / "good" / "a.png").write_bytes(sample_images[0])
    (tmp_path / "good" / "nested" / "b.jpg").write_bytes(sample_images[1])
    (tmp_path / "good" / "notes.txt").write_text("not an image, and not looked at")
    (tmp_path / "mixed" / "c.png").write_bytes(sample_images[2])
    (tmp_path / "mixed" / "broken.jpg").write_bytes(bad_images["truncated jpeg"])
    return tmp_path


def test_collect_images_recurses_folders_and_keeps_named_files_when_given_both(image_tree) -> None:
    found = collect_images([image_tree / "good", image_tree / "mixed" / "broken.jpg", image_tree / "missing.png"])
    names = [path.relative_to(image_tree).as_posix() for path in found]
    assert names == ["good/a.png", "good/nested/b.jpg", "mixed/broken.jpg", "missing.png"]


@pytest.mark.triton
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_predict_prints_json_lines_and_exits_zero_when_every_image_is_valid(
    triton_server, image_tree, capsys, protocol: str
) -> None:
    url = triton_server.endpoints[protocol]
    code = main(["predict", "--url", url, "--protocol", protocol, "--json", str(image_tree / "good")])
    out = capsys.readouterr()
    assert code == 0, out.err
    rows = [json.loads(line) for line in out.out.splitlines()]
    assert [row["source"] for row in rows] == [
        str(image_tree / "good" / "a.png"),
        str(image_tree / "good/nested/b.jpg"),
    ]
    assert all(row["error"] is None and row["label"] in SERVE_LABELS for row in rows)
    assert all(row["model_version"] == "1" for row in rows)  # the version that answered, in every JSON line
    assert "2 images: " in out.err and "0 failed" in out.err


@pytest.mark.triton
@pytest.mark.parametrize("preprocess", ["server", "client"])
def test_predict_prints_each_failure_and_exits_one_when_some_images_are_bad(
    triton_server, image_tree, capsys, preprocess: str
) -> None:
    argv = ["predict", "--url", triton_server.endpoints["grpc"], "--preprocess", preprocess, str(image_tree)]
    code = main([*argv, str(image_tree / "missing.png")])
    out = capsys.readouterr()
    assert code == 1
    lines = out.out.splitlines()
    assert lines[0].split()[:4] == ["p_fake", "verdict", "label", "version"]
    served = [line for line in lines[1:] if " ERROR " not in line]
    assert all(line.split()[3] == "1" for line in served)  # the version that answered (ensemble or network)
    errors = [line for line in lines if " ERROR " in line]
    assert len(errors) == 2
    assert any("broken.jpg" in line and "truncated" in line for line in errors)
    assert any("missing.png" in line and "cannot read" in line for line in errors)
    assert len(lines) == 1 + 3 + 2  # header, three good images, two failures
    assert "5 images: " in out.err and "2 failed" in out.err


def test_predict_exits_two_with_one_line_when_server_is_unreachable(image_tree, capsys) -> None:
    code = main(["predict", "--url", f"127.0.0.1:{free_port()}", "--retries", "1", str(image_tree / "good")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "no Triton server answered" in err[0]


@pytest.mark.triton
def test_predict_spreads_over_repeated_and_comma_separated_urls_when_one_is_dead(
    triton_server, image_tree, capsys
) -> None:
    live, dead = triton_server.endpoints["grpc"], f"127.0.0.1:{free_port()}"
    code = main(["predict", "--url", dead, "--url", f"{live},grpc://{live}", "--json", str(image_tree / "good")])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "2 images: " in out.err and "0 failed" in out.err


def test_predict_exits_two_with_one_line_when_tls_options_contradict_the_url(image_tree, capsys) -> None:
    code = main(["predict", "--protocol", "http", "--url", "http://127.0.0.1:8000", "--ssl", str(image_tree / "good")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "ssl=True with a plaintext URL" in err[0]
    assert main(["predict", "--ca", str(image_tree / "missing.pem"), str(image_tree / "good")]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["predict", "--header", "no-equals-sign", str(image_tree / "good")])
    assert "expected NAME=VALUE" in capsys.readouterr().err
