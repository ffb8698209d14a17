"""The container image of deploy/docker and ``aigi serve --print-docker``, checked without a Docker daemon.

The Dockerfiles are parsed (their copies, base image and entry command), the build context is filtered with the
``.dockerignore`` rules, the printed ``docker run`` is read back, and the container's entry command is run for real
against a Triton install root laid out like NVIDIA's ``/opt/tritonserver`` from the nvidia-pytriton wheel's files.
Building the image itself is not done here: there is no daemon.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from aigi.errors import ServerError
from aigi.server import TritonServer, free_port, model_folders, serving_args
from aigi.server_commands import (
    CONTAINER_ADMIN_KEY,
    CONTAINER_PORTS,
    CONTAINER_REPO,
    CONTAINER_TRITON,
    CONTAINER_UID,
    admin_key,
    container_command,
    container_tritonserver_command,
    docker_command,
    image_name,
)
from aigi.triton_image import TRITON_IMAGE

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "deploy" / "docker"
# what the serving path must not import: none of it is in the image (deploy/docker/requirements.txt)
NOT_IN_IMAGE = ("torch", "tritonclient", "pytriton", "transformers", "onnx", "safetensors")


# -- reading Dockerfiles and .dockerignore ---------------------------------------------------------------------------


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` in order, continuation lines joined, comments and directives dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in dockerfile.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, rest = (pending + line).strip().partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    return instructions


def _copy_sources(dockerfile: Path) -> list[str]:
    """Sources of every COPY/ADD that reads the build context (``--from`` copies read another stage)."""
    sources: list[str] = []
    for keyword, rest in _instructions(dockerfile):
        if keyword not in ("COPY", "ADD"):
            continue
        words = rest.split()
        flags = [word for word in words if word.startswith("--")]
        if any(flag.startswith("--from=") for flag in flags):
            continue
        sources += [word for word in words if not word.startswith("--")][:-1]
    return sources


def _pattern(rule: str) -> re.Pattern[str]:
    """A .dockerignore rule as a regex over slash-separated paths (Go's filepath.Match plus ``**``)."""
    out = ""
    for token in re.split(r"(\*\*/?|\*|\?)", rule.strip("/")):
        if token in ("**", "**/"):
            out += "(.*/)?" if token == "**/" else ".*"
        elif token == "*":
            out += "[^/]*"
        elif token == "?":
            out += "[^/]"
        else:
            out += re.escape(token)
    return re.compile(out + "$")


def _ignored(path: str, ignore_file: Path) -> bool:
    """Whether ``path`` (relative to the context) stays out of the build context; the last matching rule wins and a
    rule that matches a parent folder covers what is inside it."""
    rules = [line.strip() for line in ignore_file.read_text().splitlines()]
    rules = [line for line in rules if line and not line.startswith("#")]
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: index + 1]) for index in range(len(parts))]
    ignored = False
    for rule in rules:
        negated = rule.startswith("!")
        pattern = _pattern(rule[1:] if negated else rule)
        if any(pattern.match(candidate) for candidate in candidates):
            ignored = not negated
    return ignored


def _build_files(source: Path) -> list[Path]:
    """The files a source copies that the build needs (sources, metadata, package data), bytecode left out."""
    if source.is_file():
        return [source]
    wanted = {".py", ".toml", ".md", ".txt", ".typed", ".sh"}
    return [
        path
        for path in source.rglob("*")
        if path.is_file() and path.suffix in wanted and "__pycache__" not in path.parts
    ]


def _entrypoint(dockerfile: Path) -> list[str]:
    entries = [rest for keyword, rest in _instructions(dockerfile) if keyword == "ENTRYPOINT"]
    assert len(entries) == 1, "one ENTRYPOINT, in the JSON exec form"
    return list(json.loads(entries[0]))


@pytest.fixture
def default_layout(serve_repo: Path, tmp_path: Path) -> Path:
    """An exported repository laid out like the default ``model_repository/``: the ``python_models/`` sources too."""
    repo = tmp_path / "model_repository"
    shutil.copytree(serve_repo, repo)
    shutil.copytree(ROOT / "model_repository" / "python_models", repo / "python_models")
    return repo


# -- the image ------------------------------------------------------------------------------------------------------


def test_dockerfile_copies_only_sources_that_exist_and_the_context_keeps_when_built_from_the_repository_root() -> None:
    ignore = ROOT / ".dockerignore"
    sources = _copy_sources(DOCKER / "Dockerfile")
    assert "src/" in sources and "deploy/docker/requirements.txt" in sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        files = _build_files(ROOT / source)
        assert files, f"COPY {source}: nothing to copy"
        for path in files:
            relative = path.relative_to(ROOT).as_posix()
            assert not _ignored(relative, ignore), f"COPY {source}: .dockerignore leaves out {relative}"


def test_dockerignore_keeps_environments_outputs_and_exported_models_out_of_the_context_when_built() -> None:
    ignore = ROOT / ".dockerignore"
    heavy = [
        ".venv/lib/python3.11/site-packages/torch/__init__.py",
        "build/__editable__.aigi-0.1.0/aigi/server.py",
        "runs/tiny/model.safetensors",
        "data/bench/test/real/00000.png",
        "tests/test_server.py",
        ".git/HEAD",
        "model_repository/aigi_cpu/1/model.onnx",
        "model_repository/aigi_trt/1/model.plan",
        "model_repository/MANIFEST.json",
        "src/aigi/__pycache__/server.cpython-311.pyc",
    ]
    assert [path for path in heavy if not _ignored(path, ignore)] == []


def test_dockerfile_takes_the_triton_image_only_as_a_build_argument_when_parsed() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    instructions = _instructions(DOCKER / "Dockerfile")
    assert instructions[0] == ("ARG", "TRITON_IMAGE"), "first ARG TRITON_IMAGE, without a default"
    bases = [rest.split()[0] for keyword, rest in instructions if keyword == "FROM"]
    assert bases and set(bases) == {"${TRITON_IMAGE}"}
    # the tag is pinned in aigi.triton_image only
    assert TRITON_IMAGE not in text and "nvcr.io" not in text and not re.search(r"tritonserver:\d", text)
    baked = _instructions(DOCKER / "Dockerfile.baked")
    assert baked[0] == ("ARG", "AIGI_IMAGE")
    assert [rest for keyword, rest in baked if keyword == "FROM"] == ["${AIGI_IMAGE}"]


def test_image_entrypoint_is_the_container_command_and_runs_as_non_root_when_parsed() -> None:
    dockerfile = DOCKER / "Dockerfile"
    assert _entrypoint(dockerfile) == container_command()
    instructions = _instructions(dockerfile)
    assert "CMD" not in {keyword for keyword, _ in instructions}, "flags given to docker run are appended to aigi serve"
    exposed = {int(port) for keyword, rest in instructions if keyword == "EXPOSE" for port in rest.split()}
    assert exposed == set(CONTAINER_PORTS.values())
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users == [f"{CONTAINER_UID}:{CONTAINER_UID}"]
    argv = container_command()
    flags = dict(zip(argv[2::2], argv[3::2], strict=True))
    assert flags["--repo"] == CONTAINER_REPO and flags["--tritonserver"] == CONTAINER_TRITON
    assert flags["--admin-key-file"] == CONTAINER_ADMIN_KEY and flags["--host"] == "0.0.0.0"
    assert {flags[f"--{name}-port"] for name in CONTAINER_PORTS} == {str(port) for port in CONTAINER_PORTS.values()}


def test_baked_context_keeps_every_sealed_file_and_drops_python_models_when_it_is_the_default_layout(
    default_layout: Path,
) -> None:
    from aigi.manifest import covered_files

    ignore = DOCKER / "Dockerfile.baked.dockerignore"
    assert _copy_sources(DOCKER / "Dockerfile.baked") == ["."], "the context is the repository itself"
    sealed = [path.as_posix() for path in covered_files(default_layout)]
    assert any(path.endswith("/__pycache__") for path in sealed), "the sealed __pycache__ files are covered"
    assert [path for path in sealed if _ignored(path, ignore)] == []
    assert _ignored("python_models/preprocess.py", ignore)


def test_requirements_of_the_image_hold_what_the_python_models_import_and_no_torch_when_read() -> None:
    lines = [line.split("#")[0].strip() for line in (DOCKER / "requirements.txt").read_text().splitlines()]
    names = {re.split(r"[<>=!~\[ ]", line)[0].lower() for line in lines if line}
    assert names == {"numpy", "pillow", "onnxruntime"}
    assert any(line.replace(" ", "").startswith("numpy") and "<2" in line for line in lines)


# -- aigi serve --print-docker ----------------------------------------------------------------------------------------


def test_print_docker_loads_only_model_folders_publishes_on_loopback_and_mounts_the_key_when_run_on_the_default_layout(
    default_layout: Path, tmp_path: Path, capsys
) -> None:
    from aigi.cli import main

    key = tmp_path / "admin-key"
    assert main(["serve", "--repo", str(default_layout), "--admin-key-file", str(key), "--print-docker"]) == 0
    captured = capsys.readouterr()
    line = captured.out.strip()
    assert line == docker_command(default_layout, "127.0.0.1", None, key)
    for port in CONTAINER_PORTS.values():
        assert f" -p 127.0.0.1:{port}:{port} " in f" {line} "
    assert f"-v {default_layout.resolve()}:{CONTAINER_REPO}:ro" in line
    assert f"--mount type=bind,src={key},dst={CONTAINER_ADMIN_KEY},readonly" in line
    assert "--gpus" not in line and line.endswith(f" {image_name()}")
    assert not key.exists(), "printing creates nothing"
    notes = [note for note in captured.err.splitlines() if note.startswith("note: ")]
    assert any(f"--build-arg TRITON_IMAGE={TRITON_IMAGE} -t {image_name()}" in note for note in notes)
    assert any(str(key) in note and "does not exist" in note for note in notes)
    ran = shlex.split(next(note for note in notes if "runs: " in note).split("runs: ", 1)[1])
    assert ran == container_tritonserver_command(default_layout)
    assert ran[0] == f"{CONTAINER_TRITON}/bin/tritonserver"
    loaded = [arg.split("=", 1)[1] for arg in ran if arg.startswith("--load-model=")]
    assert sorted(loaded) == model_folders(default_layout) == ["aigi", "aigi_cpu", "aigi_preprocess"]
    assert "--model-control-mode=explicit" in ran and f"--model-repository={CONTAINER_REPO}" in ran
    # the same flags a laptop's server gets, from the one function that builds them
    shown = [arg.replace(f"<key in {CONTAINER_ADMIN_KEY}>", "K" * 16) for arg in ran]
    expected = serving_args(default_layout, "K" * 16, CONTAINER_REPO)
    assert shown[1 : 1 + len(expected)] == expected


def test_print_docker_adds_gpus_and_publishes_on_the_given_host_when_the_network_model_needs_a_gpu(
    tmp_path: Path, capsys
) -> None:
    from aigi.cli import main

    repo = tmp_path / "repo"
    (repo / "aigi_onnx").mkdir(parents=True)
    (repo / "aigi_onnx" / "config.pbtxt").write_text('backend: "onnxruntime"\ninstance_group [{ kind: KIND_GPU }]\n')
    argv = ["serve", "--repo", str(repo), "--host", "0.0.0.0", "--http-port", "9000", "--print-docker"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    line = captured.out.strip()
    assert "--gpus all" in line and "-p 0.0.0.0:9000:8000" in line and "-p 0.0.0.0:8001:8001" in line
    assert "warning: serving on 0.0.0.0" in captured.err
    (repo / "aigi_onnx" / "config.pbtxt").write_text("# KIND_GPU once\ninstance_group [{ kind: KIND_CPU }]\n")
    assert "--gpus" not in docker_command(repo)


def test_print_docker_refuses_in_one_line_when_the_repository_holds_no_model(tmp_path: Path, capsys) -> None:
    from aigi.cli import main

    shutil.copytree(ROOT / "model_repository" / "python_models", tmp_path / "python_models")
    assert main(["serve", "--repo", str(tmp_path), "--print-docker"]) != 0
    captured = capsys.readouterr()
    assert "holds no model" in captured.err and captured.out == ""


def test_print_triton_image_prints_the_pinned_tag_when_asked_without_a_repository(capsys) -> None:
    from aigi.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["serve", "--print-triton-image"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == TRITON_IMAGE + "\n"


# -- the admin key as a mounted secret ------------------------------------------------------------------------------


def test_admin_key_file_is_read_when_group_readable_and_refused_in_one_line_when_missing_and_not_creatable(
    tmp_path: Path,
) -> None:
    secret = tmp_path / "admin-key"
    secret.write_text("k" * 24 + "\n")
    secret.chmod(0o440)  # a Kubernetes secret mounted for a non-root pod: root:fsGroup, 0440
    assert admin_key(secret) == "k" * 24
    (tmp_path / "file").write_text("")
    with pytest.raises(ServerError, match="admin key file") as caught:
        admin_key(tmp_path / "file" / "admin-key")  # nothing can be created under a file, as under a read-only /run
    assert "\n" not in str(caught.value)


# -- --tritonserver: an installed Triton -----------------------------------------------------------------------------


def _wheel_dist() -> Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        pytest.skip("nvidia-pytriton (the tritonserver binary) is not installed")
    return Path(spec.origin).parent / "tritonserver"


def _install_root(tmp_path: Path) -> Path:
    """The wheel's real files laid out as NVIDIA's /opt/tritonserver is: the stub for this Python sits in
    ``backends/python`` (the wheel keeps its stubs apart, one per Python version). Links, not copies."""
    dist = _wheel_dist()
    root = tmp_path / "opt-tritonserver"
    (root / "bin").mkdir(parents=True)
    (root / "backends" / "python").mkdir(parents=True)
    (root / "bin" / "tritonserver").symlink_to(dist / "bin" / "tritonserver")
    (root / "caches").symlink_to(dist / "caches")
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        (root / "backends" / "python" / name).symlink_to(dist / "backends" / "python" / name)
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    (root / "backends" / "python" / stub.name).symlink_to(stub)
    return root


def test_tritonserver_option_refuses_in_one_line_when_the_root_is_the_wheels_folder_without_a_stub(
    serve_repo: Path,
) -> None:
    server = TritonServer(serve_repo, tritonserver=_wheel_dist())
    with pytest.raises(ServerError, match="no Python backend stub") as caught:
        server.start()
    assert "\n" not in str(caught.value) and not server.running


def _container_argv(repo: Path, root: Path, key: Path, ports: dict[str, int]) -> list[str]:
    """:func:`container_command` with the container's paths and ports replaced by this machine's."""
    replace = {"--repo": str(repo), "--tritonserver": str(root), "--admin-key-file": str(key), "--host": "127.0.0.1"}
    replace.update({f"--{name}-port": str(port) for name, port in ports.items()})
    argv = container_command()
    assert set(argv[2::2]) == set(replace), "every flag of the entry command is replaced"
    return argv[:2] + [word for flag in argv[2::2] for word in (flag, replace[flag])]


_BLOCKED_RUN = """
import importlib.abc, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"{{name}} is not in the image", name=name)
sys.meta_path.insert(0, Absent())
from aigi.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.triton
def test_container_command_serves_with_the_images_packages_when_run_on_an_installed_triton_root(
    default_layout: Path, tmp_path: Path
) -> None:
    root = _install_root(tmp_path)
    key = tmp_path / "secret" / "admin-key"
    key.parent.mkdir()
    key.write_text("s" * 32 + "\n")
    key.chmod(0o400)
    ports = {name: free_port() for name in CONTAINER_PORTS}
    # the image has no tritonclient, torch or nvidia-pytriton: the entry command must not need them
    code = _BLOCKED_RUN.format(blocked=set(NOT_IN_IMAGE))
    argv = [sys.executable, "-c", code, *_container_argv(default_layout, root, key, ports)[1:]]
    env = {name: value for name, value in os.environ.items() if name != "LD_LIBRARY_PATH"}
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = []
        for line in process.stdout:  # until ready and canaried (or the command fails)
            lines.append(line)
            if line.startswith("health "):
                break
        ready = json.loads(next(line for line in lines if line.startswith("{")))
        cmdline = Path(f"/proc/{ready['pid']}/cmdline").read_bytes().decode().split("\0")[:-1]
        environ = Path(f"/proc/{ready['pid']}/environ").read_bytes().decode().split("\0")
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['health']}/ready", timeout=5) as response:
            health = json.loads(response.read())
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert health["ready"] is True, health
    assert process.returncode == 0, stderr
    # the install's own binary and backends, as they are: no copy, no library path
    assert cmdline[0] == str(root / "bin" / "tritonserver")
    assert f"--backend-directory={root / 'backends'}" in cmdline
    assert not any(variable.startswith("LD_LIBRARY_PATH=") for variable in environ)
    expected = serving_args(default_layout.resolve(), "s" * 32)
    assert cmdline[1 : 1 + len(expected)] == expected
    assert "--load-model=python_models" not in cmdline
