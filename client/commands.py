"""``aigi predict``: classify image files through a running Triton server.

Exit codes: 0 every image got a verdict, 1 some images failed (each failure is printed and
counted), 2 no server answered or the model is not ready.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
DEFAULT_PORTS = {"grpc": 8001, "http": 8000}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``aigi predict``."""
    parser = subparsers.add_parser(
        "predict",
        help="classify images through a Triton server",
        description=(
            "Send image files (folders are searched recursively for image files) to a Triton server and "
            "print one verdict per image. Exit code 0: all images classified; 1: some images failed; "
            "2: server unreachable or model not ready."
        ),
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image files or folders")
    parser.add_argument(
        "--url",
        action="append",
        default=None,
        help=(
            "where the server is: HOST:PORT, https:// or grpcs:// (TLS), or dns:///NAME:PORT (every address of a "
            "headless Service); repeat it or separate by commas for replicas (default 127.0.0.1:8001, HTTP :8000)"
        ),
    )
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    parser.add_argument("--model", default="aigi", help="the ensemble to call (default aigi)")
    parser.add_argument(
        "--preprocess",
        choices=("server", "client"),
        default="server",
        help="server: send encoded files to the ensemble; client: preprocess here, send pixel_values to the network",
    )
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default 30)")
    parser.add_argument(
        "--retry-timeout",
        type=float,
        default=30.0,
        help="seconds to keep re-sending a call no server answers (default 30: rides out a restart)",
    )
    parser.add_argument("--retries", type=int, default=None, help="also cap the re-sends of one call (default: none)")
    parser.add_argument("--ssl", action="store_true", help="use TLS (implied by https://, grpcs:// or a certificate)")
    parser.add_argument("--ca", default=None, metavar="FILE", help="CA certificates (PEM) to verify the server with")
    parser.add_argument("--cert", default=None, metavar="FILE", help="client certificate (PEM), for mutual TLS")
    parser.add_argument("--key", default=None, metavar="FILE", help="client private key (PEM), for mutual TLS")
    parser.add_argument(
        "--header",
        action="append",
        default=[],
        type=_header,
        metavar="NAME=VALUE",
        help="send this header with every request (repeatable), e.g. for an authenticating proxy",
    )
    parser.add_argument("--max-in-flight", type=int, default=4, help="requests outstanding at once (default 4)")
    parser.set_defaults(handler=run_predict)


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip(), value


def urls_of(args: argparse.Namespace) -> list[str]:
    """The ``--url`` values (each may list several, comma-separated), or the protocol's local default."""
    urls = [part.strip() for value in args.url or [] for part in value.split(",") if part.strip()]
    return urls or [f"127.0.0.1:{DEFAULT_PORTS[args.protocol]}"]


def iter_images(paths: list[Path]) -> Iterator[Path]:
    """Files named on the command line (whatever their suffix), then image files under folders, lazily.

    Folders are walked one directory at a time, in sorted order, so a folder of millions of images starts
    printing at once and costs the memory of one directory listing. Links to folders are not followed
    (a link loop would never end). A path that does not exist is kept, so it is reported as a failed image.
    """
    for path in paths:
        if not path.is_dir():
            yield path
            continue
        for folder, dirs, names in os.walk(path):
            dirs.sort()
            for name in sorted(names):
                if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                    yield Path(folder) / name


def collect_images(paths: list[Path]) -> list[Path]:
    """All of :func:`iter_images` as a list."""
    return list(iter_images(paths))


def _progress() -> Any:
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is not part of the slim client install
        return None
    # no total: folders are walked while images are sent
    return tqdm(unit="img", file=sys.stderr, disable=not sys.stderr.isatty())


def format_row(result: Any) -> str:
    """One table line: p_fake, verdict, label, the model version that answered, source (or the error)."""
    if result.error:
        return f"{'-':>7}  {'ERROR':<7}  {'-':<12}  {'-':>7}  {result.source}: {result.error}"
    verdict = "FAKE" if result.is_fake else "real"
    return f"{result.p_fake:7.4f}  {verdict:<7}  {result.label:<12}  {result.model_version or '-':>7}  {result.source}"


def run_predict(args: argparse.Namespace) -> int:
    """Handler of ``aigi predict``."""
    from aigi.client.detector import Detector
    from aigi.client.images import batched

    found = iter_images(args.paths)
    first = next(found, None)
    if first is None:  # before connecting: a wrong path should not wait for a server
        print("aigi predict: no image files found under " + " ".join(map(str, args.paths)), file=sys.stderr)
        return 1
    counts = {"images": 0, "fake": 0, "real": 0, "failed": 0}
    with Detector(
        urls_of(args),
        protocol=args.protocol,
        model=args.model,
        preprocess=args.preprocess,
        timeout=args.timeout,
        retry_timeout=args.retry_timeout,
        retries=args.retries,
        max_in_flight=args.max_in_flight,
        ssl=args.ssl,
        root_certificates=args.ca,
        private_key=args.key,
        certificate_chain=args.cert,
        headers=dict(args.header),
    ) as detector:
        info = detector.info  # fails fast, before any output, when the server is not there
        if not args.json:
            header = f"{'p_fake':>7}  {'verdict':<7}  {'label':<12}  {'version':>7}"
            print(f"{header}  image (threshold {info.threshold:g})")
        bar = _progress()
        group_size = info.max_batch_size * detector.max_in_flight * 2
        for group in batched(itertools.chain([first], found), group_size):
            for result in detector.detect(group):
                counts["images"] += 1
                counts["failed" if result.error else "fake" if result.is_fake else "real"] += 1
                print(json.dumps(result.to_dict()) if args.json else format_row(result), flush=True)
            if bar is not None:
                bar.update(len(group))
        if bar is not None:
            bar.close()
    summary = f"{counts['images']} images: {counts['fake']} fake, {counts['real']} real, {counts['failed']} failed"
    print(summary, file=sys.stderr)
    return 1 if counts["failed"] else 0
