"""The ``aigi`` command: one entry point, one subcommand per stage.

Each stage registers its subcommands from a light ``commands`` module that imports nothing heavy;
torch, ONNX and friends are imported inside the handlers, so ``aigi --help`` and the client-only
commands work on the slim install. ``main(argv)`` is callable from tests.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from aigi import __version__
from aigi.errors import AigiError

logger = logging.getLogger("aigi")

# which extra brings a missing top-level module, for a one-line hint instead of a traceback
EXTRA_OF_MODULE = {
    "torch": "training",
    "transformers": "training",
    "safetensors": "training",
    "skimage": "training",
    "matplotlib": "training",
    "tqdm": "training",
    "onnx": "export",
    "onnxscript": "export",
    "onnxruntime": "export",
    "pytriton": "serve",
    "tensorrt": "tensorrt",
}

COMMAND_MODULES = (
    "aigi.training.commands",
    "aigi.export.commands",
    "aigi.server_commands",
    "aigi.client.commands",
    "aigi.benchmarks.commands",
    "aigi.benchmarks.demo",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every stage's subcommands registered."""
    parser = argparse.ArgumentParser(
        prog="aigi",
        description="Detect AI-generated images: build data, train, evaluate, export to Triton, serve, predict, bench.",
    )
    parser.add_argument("--version", action="version", version=f"aigi {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        # every commands module imports only light things, so a failure here is a bug to show, not a stage to hide
        importlib.import_module(module_name).register(subparsers)
    return parser


def configure_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Handlers are set here, in the CLI only; library modules just get their loggers."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code (0 on success)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    configure_logging(args.verbose, args.quiet)
    try:
        result = args.handler(args)
    except AigiError as exc:
        print(f"aigi {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        if top not in EXTRA_OF_MODULE:
            raise
        extra = EXTRA_OF_MODULE[top]
        print(
            f"aigi {args.command}: error: needs {top}, which the slim install lacks: pip install 'aigi[{extra}]'",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"aigi {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
