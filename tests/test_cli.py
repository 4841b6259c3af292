"""The command table and the one-line errors: every ``python -m trt_yolact.COMMAND`` is ``trt-yolact COMMAND``,
each answers ``--help``, an unknown command is said so; a user's mistake is one line, a bug a traceback."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from trt_yolact.cli import COMMANDS
from trt_yolact.cli import main as cli_main
from trt_yolact.command_line import run_command
from trt_yolact.errors import CheckpointError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_answers_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_the_table_names_every_command_module():
    commands = {p.stem for p in (REPO / "trt_yolact").glob("*.py")} - {"__init__", "__main__", "cli", "command_line"}
    library = {"config", "errors", "files", "structures", "tables"}
    assert set(COMMANDS) == (commands - library) | {"data.shapes"}
    for command in COMMANDS:
        assert callable(importlib.import_module(f"trt_yolact.{command}").main)


def test_an_unknown_command_is_said_so(capsys):
    assert cli_main(["bogus"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'bogus'" in err and "predict" in err
    assert cli_main([]) == 2


def test_python_dash_m_trt_yolact_is_the_console_entry():
    done = subprocess.run([sys.executable, "-m", "trt_yolact", "--help"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0 and "data.shapes" in done.stdout


def test_a_users_mistake_is_one_line_and_a_bug_keeps_its_traceback(capsys):
    def listing() -> int:
        raise CheckpointError("model.pth does not fit config 'x'\n  missing keys (2):\n    a\n    b")

    assert run_command(listing) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model.pth does not fit") and "    b" in err  # the listing is kept

    def missing() -> int:
        raise FileNotFoundError(2, "No such file or directory", "absent.json")

    assert run_command(missing) == 2
    assert capsys.readouterr().err.strip() == "error: No such file or directory: absent.json"

    def bug() -> int:
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        run_command(bug)
