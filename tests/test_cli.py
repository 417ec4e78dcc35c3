"""What a new user meets first at the command line: a closed pipe (`mygpt2 train --help |
head`), a data error before the resolved config, a missing tokenizer that says what to run,
and `scripts/setup.sh` installing only what the demo needs."""

from __future__ import annotations

import shlex
import subprocess
import sys
import types
from pathlib import Path

import pytest

from mygpt2 import cli
from mygpt2.cli import COMMANDS, main
from mygpt2.tokenizer import RegexTokenizer

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


# ----------------------------------------------------------------- data and tokenizer errors


def train_argv(tmp_path: Path, *flags: str) -> list[str]:
    return ["train", *flags, "--out_dir", str(tmp_path / "out"), "--device", "cpu"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.txt", "is not a file, a directory or a glob"),
        (lambda d: ((d / "empty.txt").write_text("") and None) or d / "empty.txt", "is empty"),
        (lambda d: (d / "no_text").mkdir() or d / "no_text", "holds no text files"),
    ],
)
def test_a_data_error_comes_before_the_resolved_config(tmp_path, capsys, make, message):
    data = make(tmp_path)
    status = main(train_argv(tmp_path, "--data", str(data), "--tokenizer_path", "bytes"))
    out, err = capsys.readouterr()
    assert status == 2
    assert out == ""  # no config dump, no banner
    assert err.startswith("mygpt2 train: error: ") and message in err.splitlines()[0], err
    assert len(err.splitlines()) == 1


def test_a_missing_tokenizer_says_what_to_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_text("to be or not to be, that is the question\n" * 40)
    assert main(train_argv(tmp_path, "--data", "corpus.txt")) == 2
    out, err = capsys.readouterr()
    assert out == ""
    make = (
        "mygpt2 tokenizer train --data corpus.txt --vocab_size 8192 --tokenizer_path tokenizer.json"
    )
    assert f"`{make}`" in err
    assert "`--tokenizer_path bytes`" in err and "`--use_tiktoken true`" in err
    assert "Train it again" not in err  # that was for a broken file, not a missing one
    # a vocabulary size given to train is the one the command makes; a path with a space quoted
    (tmp_path / "my texts").mkdir()
    varied = "".join(f"line {i}: {i * i} {hex(i)} {chr(97 + i % 26) * 3}\n" for i in range(400))
    (tmp_path / "my texts" / "a.txt").write_text(varied)
    argv = ["--data", "my texts/a.txt", "--vocab_size", "300", "--tokenizer_path", "t.json"]
    assert main(train_argv(tmp_path, *argv)) == 2
    err = capsys.readouterr().err
    make = "mygpt2 tokenizer train --data 'my texts/a.txt' --vocab_size 300 --tokenizer_path t.json"
    assert f"`{make}`" in err
    # and the command it names does make the tokenizer the training run asked for
    assert main(shlex.split(make)[1:]) == 0
    capsys.readouterr()
    assert RegexTokenizer.load(tmp_path / "t.json").vocab_size == 300


def test_prepare_names_its_data_in_the_missing_tokenizer_message(tmp_path, capsys):
    text = tmp_path / "c.txt"
    text.write_text("hello\n")
    argv = ["prepare", "--data", str(text), "--tokenizer_path", str(tmp_path / "nope.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"mygpt2 tokenizer train --data {text} --vocab_size 8192" in err
