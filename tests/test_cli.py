"""The ``aigi`` command line: every stage is registered, and a broken stage is shown, not hidden."""

from __future__ import annotations

import pytest

import aigi.cli
from aigi.cli import build_parser, main

STAGE_COMMANDS = {
    *("data", "train", "eval", "explain", "export", "repo", "serve", "health", "trace", "predict"),
    *("bench", "fault-check", "update-check", "demo"),
}


def test_build_parser_registers_every_stage_when_all_commands_modules_import() -> None:
    parser = build_parser()
    subcommands = next(action for action in parser._actions if action.dest == "command")
    assert set(subcommands.choices) == STAGE_COMMANDS


def test_build_parser_raises_when_a_commands_module_fails_to_import(monkeypatch) -> None:
    monkeypatch.setattr(aigi.cli, "COMMAND_MODULES", (*aigi.cli.COMMAND_MODULES, "aigi.no_such_stage"))
    with pytest.raises(ModuleNotFoundError, match="aigi.no_such_stage"):
        build_parser()


def test_predict_exits_one_before_connecting_when_a_folder_holds_no_image(capsys, tmp_path) -> None:
    code = main(["predict", "--protocol", "grpc", "--url", "127.0.0.1:1", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err == [f"aigi predict: no image files found under {tmp_path}"]
