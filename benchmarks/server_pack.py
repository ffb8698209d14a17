"""A trimmed Triton server, with the wheels it needs, to carry to a machine that has neither nvidia-pytriton nor
tritonclient and cannot install them (the lent GPU machine: no network, only carried files).

Two steps, each a subcommand of ``python -m aigi.benchmarks.server_pack``:

``build --python 3.12 --out DIR`` (here, with the ``nvidia-pytriton`` wheel installed and the package registry
reachable) copies from the installed wheel only what the server needs, laid out as the wheel has it so the
binaries' ``$ORIGIN``-relative search paths still hold: ``pytriton/tritonserver/{bin/tritonserver, backends/python,
caches, python_backend_stubs/<python>}`` and ``nvidia_pytriton.libs/`` with the libraries those files link
(followed through their ``DT_NEEDED`` entries; what the wheel does not carry is the system's, listed in
``manifest.json``). It adds wheels for the target Python: numpy<2 for the backend stub (it misreads numpy 2
arrays), tritonclient with what it needs beyond the GPU image (its HTTP stack), and grpcio + protobuf, used only
when the machine's own are too old for tritonclient. ``--archive`` also writes ``DIR.tar.xz``.

``install PACK --into DIR`` (there, with the machine's Python) unpacks the pack when it is an archive, installs the
wheels with ``pip install --no-index --no-deps --target``, makes the stub's Python environment and prints the
``export`` lines that make aigi use all of it: ``AIGI_TRITON_DIST`` (the packed server instead of the wheel's),
``AIGI_TRITON_PYTHON`` (the stub's environment) and ``PYTHONPATH`` (tritonclient for the client side). The stub's
environment is a venv of the machine's Python whose ``site-packages`` holds numpy<2 and a ``.pth`` that appends
everything the installing Python sees (torch, onnxruntime, aigi): the stub embeds the ``python3`` first on its
``PATH``, and Triton drops ``PYTHONPATH``, so a venv is how the stub finds numpy<2 first and the rest after it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import struct
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from pathlib import Path

from aigi.errors import AigiError

logger = logging.getLogger(__name__)

# (group, requirement): "stub" goes into the backend stub's environment, "client" onto the client's PYTHONPATH,
# "grpc" onto it only when tritonclient.grpc does not import with the machine's own grpcio and protobuf
WHEELS: tuple[tuple[str, str], ...] = (
    ("stub", "numpy==1.26.4"),
    ("client", "tritonclient==2.73.0"),
    ("client", "python-rapidjson==1.25"),
    ("client", "geventhttpclient==2.6.1"),
    ("client", "gevent==26.9.0"),
    ("client", "greenlet==3.3.2"),
    ("client", "zope.event==6.2"),
    ("client", "zope.interface==8.7"),
    ("client", "brotli==1.2.1"),
    ("grpc", "grpcio==1.85.3"),
    ("grpc", "protobuf==6.33.6"),
)
# pip matches manylinux tags exactly: name every one these wheels use
PLATFORMS = tuple(f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28)) + (
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
    "manylinux_2_5_x86_64",
)
DIST = Path("pytriton") / "tritonserver"
LIBS = Path("nvidia_pytriton.libs")
MANIFEST = "manifest.json"
STUB = "triton_python_backend_stub"


def elf_needed(path: Path) -> list[str]:
    """The ``DT_NEEDED`` entries of a 64-bit little-endian ELF file (the libraries it links by name).

    Raises:
        AigiError: ``path`` is not such an ELF file.
    """
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise AigiError(f"{path}: not a 64-bit little-endian ELF file")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    needed: list[str] = []
    for _name, kind, _flags, _addr, offset, size, link, *_ in sections:
        if kind != 6:  # SHT_DYNAMIC; its sh_link is the string table it points into
            continue
        strtab = sections[link][4]
        for pos in range(offset, offset + size, 16):
            tag, value = struct.unpack_from("<qQ", data, pos)
            if tag == 0:
                break
            if tag == 1:  # DT_NEEDED
                end = data.index(b"\0", strtab + value)
                needed.append(data[strtab + value : end].decode())
    return needed


def library_closure(roots: list[Path], libs: Path) -> tuple[list[Path], list[str]]:
    """The libraries of ``libs`` that ``roots`` need, directly or through each other, and the names needed that
    ``libs`` lacks (the system's: libc, libstdc++, libz, libpython)."""
    found: dict[str, Path] = {}
    system: set[str] = set()
    todo = list(roots)
    while todo:
        for name in elf_needed(todo.pop()):
            if name in found or name in system:
                continue
            if (libs / name).is_file():
                found[name] = libs / name
                todo.append(libs / name)
            else:
                system.add(name)
    return sorted(found.values()), sorted(system)


def installed_wheel_server() -> tuple[Path, Path, str]:
    """``(tritonserver_dir, libs_dir, version)`` of the installed ``nvidia-pytriton`` wheel (never a pack's).

    Raises:
        AigiError: the wheel is not installed.
    """
    import importlib.metadata
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        raise AigiError("nvidia-pytriton is not installed here: pip install 'aigi[serve]' first")
    package = Path(spec.origin).parent
    return package / "tritonserver", package.parent / LIBS.name, importlib.metadata.version("nvidia-pytriton")


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)


def copy_server(out: Path, python: str) -> dict:
    """Copy the wheel's server, its Python backend, the stub for ``python`` and their libraries into ``out``.

    Returns:
        The manifest's server part: versions, files copied and the system libraries they expect.
    """
    dist, libs, version = installed_wheel_server()
    stub = dist / "python_backend_stubs" / python / STUB
    if not stub.is_file():
        have = sorted(p.name for p in (dist / "python_backend_stubs").iterdir())
        raise AigiError(f"nvidia-pytriton {version} has no backend stub for Python {python} (has: {', '.join(have)})")
    files = [dist / "bin" / "tritonserver", stub, *sorted((dist / "backends" / "python").glob("*.*"))]
    files += sorted(p for p in (dist / "caches").rglob("*") if p.is_file())
    for src in files:
        _copy(src, out / DIST / src.relative_to(dist))
    elves = [f for f in files if f.suffix == ".so" or f.name in ("tritonserver", STUB)]
    closure, system = library_closure(elves, libs)
    for lib in closure:
        _copy(lib, out / LIBS / lib.name)
    licences = sorted(libs.parent.glob("nvidia_pytriton-*.dist-info/LICEN[CS]E*"))
    for licence in licences:
        _copy(licence, out / "licenses" / licence.name)
    stub_python = [name for name in elf_needed(stub) if name.startswith("libpython")]
    return {
        "nvidia_pytriton": version,
        "python": python,
        "files": [str(DIST / f.relative_to(dist)) for f in files] + [str(LIBS / lib.name) for lib in closure],
        "system_libraries": system,
        "stub_libpython": stub_python[0] if stub_python else None,
    }


def download_wheels(python: str, cache: Path) -> list[tuple[str, Path]]:
    """Fetch :data:`WHEELS` for CPython ``python`` on manylinux x86-64 into ``cache`` (reused when already there).

    Raises:
        AigiError: pip could not fetch one (no network, or no wheel for that Python).
    """
    cache.mkdir(parents=True, exist_ok=True)
    tag = "cp" + python.replace(".", "")
    found: list[tuple[str, Path]] = []
    for group, requirement in WHEELS:
        name, wanted = requirement.split("==")
        stem = name.replace("-", "_").replace(".", "_").lower()
        have = [w for w in cache.glob("*.whl") if w.name.lower().startswith(f"{stem}-{wanted}-")]
        have = [w for w in have if f"-{tag}-" in w.name or "-py3-" in w.name or "-abi3-" in w.name]
        if not have:
            platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
            cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
            cmd += ["--python-version", python, "--implementation", "cp", *platforms, "-d", str(cache), requirement]
            logger.info("downloading %s for Python %s", requirement, python)
            result = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise AigiError(f"pip could not download {requirement}: {result.stderr.strip()[-400:]}")
            return download_wheels(python, cache)
        found.append((group, have[0]))
    return found


def build_pack(out: Path, python: str, wheels: bool = True, wheel_cache: Path | None = None) -> dict:
    """Write the pack into the empty or missing folder ``out``.

    Args:
        out: the pack's folder.
        python: the target's ``major.minor`` (chooses the backend stub and the wheels).
        wheels: add :data:`WHEELS` (needs the package registry unless ``wheel_cache`` has them).
        wheel_cache: where downloaded wheels are kept between builds (default: the temp folder).

    Returns:
        The manifest, also written to ``out/manifest.json``.
    """
    if out.exists() and any(out.iterdir()):
        raise AigiError(f"{out} is not empty")
    out.mkdir(parents=True, exist_ok=True)
    manifest = copy_server(out, python)
    manifest["wheels"] = {}
    if wheels:
        cache = wheel_cache or Path(tempfile.gettempdir()) / "aigi-wheels" / python
        for group, wheel in download_wheels(python, cache):
            stored_wheel(wheel, out / "wheels" / group / wheel.name)
            manifest["wheels"].setdefault(group, []).append(wheel.name)
    manifest["bytes"] = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def stored_wheel(src: Path, dst: Path) -> None:
    """Copy a wheel with its members stored, not deflated: still a valid wheel (``RECORD`` hashes the contents), and
    the pack's xz then compresses it far better (31 MiB of wheels carry as about 19)."""
    import zipfile

    dst.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            member = zipfile.ZipInfo(info.filename, info.date_time)
            member.external_attr = info.external_attr
            zout.writestr(member, zin.read(info.filename))


def archive(folder: Path) -> Path:
    """``folder`` as ``folder.tar.xz`` (its contents at the archive's top; xz: the carry limit is tight)."""
    target = folder.with_name(folder.name + ".tar.xz")
    with tarfile.open(target, "w:xz", preset=9) as tar:
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=path.name)
    return target


# -- on the target -------------------------------------------------------------------------------------------------


def unpack(pack: Path, into: Path) -> Path:
    """The pack's folder: ``pack`` itself, or ``pack`` (a ``.tar.xz``) extracted into ``into/server``."""
    if pack.is_dir():
        return pack.absolute()
    if not pack.is_file():
        raise AigiError(f"no server pack at {pack}")
    folder = into / "server"
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(pack) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(folder, filter="data")
        else:  # pragma: no cover - Pythons before 3.11.4
            tar.extractall(folder)  # noqa: S202 - our own archive
    return folder.absolute()


def pip_target(wheels: list[Path], target: Path) -> None:
    """Install ``wheels`` into ``target`` with this interpreter's pip, offline and without dependencies."""
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile"]
    cmd += ["--disable-pip-version-check", "--target", str(target), *map(str, wheels)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise AigiError(f"pip could not install {', '.join(w.name for w in wheels)}: {result.stderr.strip()[-400:]}")


def import_error(module: str, prefix: list[Path]) -> str | None:
    """Why ``module`` does not import here with ``prefix`` first on ``PYTHONPATH`` (``None``: it does)."""
    paths = [str(p) for p in prefix] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    result = subprocess.run([sys.executable, "-c", f"import {module}"], env=env, capture_output=True, text=True)
    return None if result.returncode == 0 else (result.stderr.strip().splitlines() or ["exit code"])[-1]


# Packages built against numpy 2 that break under the stub's numpy<2 and that the models import only when present:
# transformers imports scipy (scipy.optimize, for a detection loss) whenever it is installed, and scipy built for
# numpy 2 fails on `np.long` (seen on the lent H200 image: "Could not import module 'CLIPVisionModel'").
HIDDEN_FROM_STUB = ("scipy", "sklearn", "scikit_learn")


def _hides(entry: str) -> bool:
    """Whether a ``site-packages`` entry (package, ``.libs`` folder or ``-x.y.dist-info``) is in HIDDEN_FROM_STUB."""
    return any(entry == name or entry.startswith((f"{name}-", f"{name}.")) for name in HIDDEN_FROM_STUB)


def filtered_site(folder: Path, into: Path) -> Path:
    """``folder`` itself, or, when it holds a hidden package, a folder of links to everything else in it."""
    entries = sorted(os.listdir(folder))
    if not any(_hides(entry) for entry in entries):
        return folder
    into.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        if not _hides(entry):
            (into / entry).symlink_to(folder / entry)
    return into


def stub_environment(env: Path, numpy_wheels: list[Path]) -> Path:
    """A venv of this interpreter for the backend stub: numpy<2 in its ``site-packages``, then (through a ``.pth``)
    every folder this interpreter imports from, so the stub finds numpy<2 first and torch, onnxruntime and aigi
    where this interpreter does; packages in :data:`HIDDEN_FROM_STUB` are left out (through links)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, capture_output=True)
    site = env / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    if numpy_wheels:
        pip_target(numpy_wheels, site)
    here = {"", os.getcwd()}
    folders = [Path(p) for p in sys.path if p not in here and Path(p).is_dir()]
    paths = [str(filtered_site(folder, env / "machine-paths" / str(i))) for i, folder in enumerate(folders)]
    # one line: a .pth line that starts with "import" is executed; addsitedir also reads those folders' .pth files
    # (editable installs), and appends, so this venv's own site-packages (numpy<2) stays first
    (site / "zz_aigi_machine_paths.pth").write_text(f"import site; list(map(site.addsitedir, {json.dumps(paths)}))\n")
    return env


def link_libpython(name: str | None, libs: Path) -> str:
    """Make the stub's libpython findable through the pack's library folder (on the server's ``LD_LIBRARY_PATH``).

    Returns:
        Where it was found, or a warning that it was not (the Triton models then cannot load).
    """
    if not name:
        return "the stub links no libpython"
    candidates = [Path(str(sysconfig.get_config_var(v) or "")) / name for v in ("LIBDIR", "LIBPL")]
    candidates += [Path(sys.base_prefix) / "lib" / name]
    for candidate in candidates:
        if candidate.is_file():
            if not (libs / name).exists():
                (libs / name).symlink_to(candidate)
            return f"{name} from {candidate}"
    listed = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=False).stdout
    if name in listed:
        return f"{name} from the loader's cache"
    return f"WARNING: {name} not found on this machine: Triton's Python backend cannot start its models"


# what the Python-backend models import, tried in the stub's environment before any server starts; the torch
# network builds its model through transformers, whose imports fail late (at model load) when a dependency breaks
STUB_IMPORT_CHECK = (
    "import importlib.util, numpy, aigi\n"
    "if importlib.util.find_spec('transformers'):\n"
    "    from transformers import CLIPVisionModel  # noqa\n"
    "print(numpy.__version__)"
)


def install_pack(pack: Path, into: Path) -> dict[str, str]:
    """Set the pack up for this interpreter under ``into`` (see the module's docstring).

    Returns:
        The environment variables to export, plus ``notes`` (what was found and chosen, one line).

    Raises:
        AigiError: the pack is for another Python, or a step failed.
    """
    into.mkdir(parents=True, exist_ok=True)
    into = into.absolute()
    folder = unpack(pack, into)
    manifest = json.loads((folder / MANIFEST).read_text())
    mine = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if manifest["python"] != mine:
        raise AigiError(f"{pack} is for Python {manifest['python']}, this is {mine} ({sys.executable})")
    wheels = {
        group: [folder / "wheels" / group / name for name in names] for group, names in manifest["wheels"].items()
    }
    notes = [link_libpython(manifest.get("stub_libpython"), folder / LIBS)]
    client: list[Path] = []
    if wheels.get("client"):
        client.append(into / "client")
        pip_target(wheels["client"], client[0])
    why = import_error("tritonclient.grpc, tritonclient.http", client)
    if why and wheels.get("grpc"):
        notes.append(f"carried grpcio/protobuf used ({why})")
        client.append(into / "grpc")
        pip_target(wheels["grpc"], client[-1])
        why = import_error("tritonclient.grpc, tritonclient.http", client)
    notes.append(f"WARNING: tritonclient does not import: {why}" if why else "tritonclient imports")
    env = stub_environment(into / "stub-env", wheels.get("stub", []))
    check = subprocess.run(
        [str(env / "bin" / "python3"), "-c", STUB_IMPORT_CHECK],
        capture_output=True,
        text=True,
        check=False,
    )
    if check.returncode != 0 or not check.stdout.strip().startswith("1."):
        raise AigiError(
            f"the stub's environment {env} lacks numpy<2, aigi or transformers' CLIPVisionModel: "
            f"{(check.stdout + check.stderr)[-400:]}"
        )
    notes.append(f"stub numpy {check.stdout.strip()}")
    pythonpath = [str(p) for p in client] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    exports = {"AIGI_TRITON_DIST": str(folder / DIST), "AIGI_TRITON_PYTHON": str(env)}
    if pythonpath:
        exports["PYTHONPATH"] = os.pathsep.join(pythonpath)
    return {**exports, "notes": "; ".join(notes)}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m aigi.benchmarks.server_pack",
        description="Build a trimmed Triton server pack here (build), or set one up on the target (install).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="copy the installed nvidia-pytriton server and fetch the target's wheels")
    build.add_argument("--python", required=True, help="the target's Python, major.minor (e.g. 3.12)")
    build.add_argument("--out", type=Path, required=True, help="the pack's folder (must be empty or missing)")
    build.add_argument("--archive", action="store_true", help="also write OUT.tar.xz (what to carry)")
    build.add_argument("--no-wheels", action="store_true", help="the server only (no registry needed)")
    build.add_argument("--wheel-cache", type=Path, help="keep downloaded wheels here (default: a temp folder)")
    install = sub.add_parser("install", help="set a pack up for this interpreter; prints the export lines")
    install.add_argument("pack", type=Path, help="the pack's folder or its .tar.xz")
    install.add_argument("--into", type=Path, required=True, help="where to install wheels and the stub's venv")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command line of :mod:`aigi.benchmarks.server_pack`; 0 on success, 2 with a one-line error otherwise."""
    logging.basicConfig(level=logging.INFO, format="server_pack: %(message)s", stream=sys.stderr)
    args = _parser().parse_args(argv)
    try:
        if args.command == "build":
            manifest = build_pack(args.out, args.python, wheels=not args.no_wheels, wheel_cache=args.wheel_cache)
            size = f"{manifest['bytes'] / 2**20:.1f} MiB"
            if args.archive:
                target = archive(args.out)
                size += f"; {target} {target.stat().st_size / 2**20:.1f} MiB"
            print(f"pack for Python {args.python} in {args.out}: {size}")
            return 0
        exports = install_pack(args.pack, args.into)
        print(f"server_pack: {exports.pop('notes')}", file=sys.stderr)
        for key, value in exports.items():
            print(f"export {key}={shlex.quote(value)}")
        return 0
    except (AigiError, OSError, subprocess.CalledProcessError) as exc:
        print(f"server_pack: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
