"""What a new user meets first at the command line: a closed pipe (`mygpt2 train --help |
head`), a data error before the resolved config, a missing tokenizer that says what to run,
and `scripts/setup.sh` installing only what the demo needs."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest

from mygpt2 import cli
from mygpt2.cli import COMMANDS, main

REPO = Path(__file__).resolve().parents[1]


def closed_stdout(argv: list[str], cwd: Path | None = None) -> tuple[int, str]:
    """Run `mygpt2 ARGV` with its stdout pipe closed before it writes: (status, stderr)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mygpt2.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
    )
    proc.stdout.close()  # the reader is gone, as `| head` is once it has its lines
    err = proc.stderr.read().decode("utf-8", "replace")
    proc.stderr.close()
    return proc.wait(timeout=120), err


@pytest.mark.parametrize("argv", [["--help"], *([name, "--help"] for name in COMMANDS)])
def test_a_closed_pipe_stops_every_command_quietly(argv):
    status, err = closed_stdout(argv)
    assert (status, err) == (cli.CLOSED_PIPE, ""), err[-400:]
    assert cli.CLOSED_PIPE == 128 + 13  # what the shell reports for a tool stopped by SIGPIPE


def test_a_closed_pipe_in_the_middle_of_work_is_quiet_too(tmp_path):
    status, err = closed_stdout(["tokenizer", "show", "a b c " * 50, "--tokenizer_path", "bytes"])
    assert (status, err) == (cli.CLOSED_PIPE, "")


def test_a_broken_pipe_elsewhere_is_not_hidden(monkeypatch):
    """Only a closed stdout/stderr is a reader that went away; any other BrokenPipeError (a
    socket, a child process) is a bug and keeps its traceback."""

    def cli_that_breaks(argv):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setitem(sys.modules, "fake_cmd", types.SimpleNamespace(cli=cli_that_breaks))
    monkeypatch.setitem(COMMANDS, "fake", ("fake_cmd", "raises BrokenPipeError"))
    monkeypatch.setattr(cli, "_output_closed", lambda: False)
    with pytest.raises(BrokenPipeError):
        main(["fake"])
    monkeypatch.setattr(cli, "_stop_writing", lambda: cli.CLOSED_PIPE)
    monkeypatch.setattr(cli, "_output_closed", lambda: True)
    assert main(["fake"]) == cli.CLOSED_PIPE


def test_output_closed_reads_the_pipe_state():
    """`_output_closed` itself, on a real pipe: open, then with its reader gone."""
    code = (
        "import os, sys; from mygpt2 import cli; r, w = os.pipe(); os.dup2(w, 1); "
        "a = cli._output_closed(); os.close(r); b = cli._output_closed(); "
        "sys.stderr.write(f'{a} {b}')"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.stderr == "False True"
