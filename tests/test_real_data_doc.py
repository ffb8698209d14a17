"""docs/REAL_DATA.md cannot drift from the CLI: every ``aigi`` line in its bash blocks parses, flag by flag."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from aigi.cli import build_parser

DOC = Path(__file__).resolve().parents[1] / "docs" / "REAL_DATA.md"
BASH_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _commands() -> list[str]:
    lines = []
    for block in BASH_BLOCK.findall(DOC.read_text()):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip().startswith("aigi "):
                lines.append(line.strip())
    return lines


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:
            return action.choices[name]
    raise AssertionError(f"no subcommand {name!r}")


def _target(tokens: list[str]) -> tuple[argparse.ArgumentParser, list[str]]:
    """The (innermost) subcommand parser a command line reaches, and the words after its name."""
    parser = build_parser()
    rest = tokens[1:]
    while rest and not rest[0].startswith("-"):
        has_sub = any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)
        if not has_sub:
            break
        parser, rest = _subparser(parser, rest[0]), rest[1:]
    return parser, rest


def test_doc_has_commands() -> None:
    commands = _commands()
    subcommands = {shlex.split(c)[1] for c in commands}
    assert {"train", "eval", "export", "serve"} <= subcommands, subcommands


@pytest.mark.parametrize("command", _commands())
def test_every_flag_exists(command: str) -> None:
    tokens = shlex.split(command, comments=True)
    parser, rest = _target(tokens)
    known = {option for action in parser._actions for option in action.option_strings}
    flags = [word.split("=", 1)[0] for word in rest if word.startswith("--")]
    unknown = [flag for flag in flags if flag not in known]
    assert not unknown, f"{command}: {unknown} not among {sorted(known)}"


@pytest.mark.parametrize("command", _commands())
def test_every_command_parses(command: str) -> None:
    tokens = shlex.split(command, comments=True)
    try:
        build_parser().parse_args(tokens[1:])
    except SystemExit as exc:  # argparse reports a bad line by exiting
        pytest.fail(f"{command}: argparse exited with {exc.code}")


def test_checker_catches_an_unknown_flag() -> None:
    parser, rest = _target(shlex.split("aigi train --data d --no-such-flag"))
    known = {option for action in parser._actions for option in action.option_strings}
    assert "--data" in known and "--no-such-flag" not in known and rest[0] == "--data"
