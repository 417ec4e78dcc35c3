"""Run safety in whole runs: a resume that would change the data layout is refused, a crash in
the run's own tools after a step keeps that step (checkpoint and resume line), and the resume
line and lock come from the command line the command received, never from `sys.argv`."""

from __future__ import annotations

import shlex
import sys

import pytest
from test_train import make_corpus, run_main, tiny_args

from mygpt2.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shakespeare_path) -> dict[str, str]:
    return make_corpus(tmp_path_factory.mktemp("corpus"), shakespeare_path)


def test_resume_with_another_macro_batch_size_is_refused_naming_both(corpus, tmp_path, capsys):
    args = tiny_args(corpus, tmp_path, max_steps=6, eval_interval=3)  # macro batch 8
    assert run_main(["train", *args, "--stop_at=2"]) == 0
    before = (tmp_path / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    assert run_main(["train", *args, "--resume", "--macro_batch_size=16"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1  # one line, no traceback
    assert "with macro_batch_size 16: it was trained with 8" in err
    assert "Resume with --macro_batch_size 8 (or leave the flag out)" in err
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    # the same layout resumes, and the token count goes on in steps of 8 x 32 tokens
    assert run_main(["train", *args, "--resume", "--macro_batch_size=8"]) == 0
    rows = load_checkpoint(tmp_path / "checkpoint.pt")["metrics"]
    tokens = [r["tokens"] for r in rows if r["kind"] == "train"]
    assert tokens == [step * 8 * 32 for step in range(1, 7)]


def test_the_resume_line_is_built_from_the_argv_the_command_received(
    corpus, tmp_path, capsys, monkeypatch
):
    # sys.argv says something else: the library must not look at it
    monkeypatch.setattr(sys, "argv", ["/usr/bin/mygpt2", "train", "--not-these-flags"])
    args = tiny_args(corpus, tmp_path, max_steps=4, eval_interval=2)
    assert run_main(["train", *args, "--stop_at=2"]) == 0
    out = capsys.readouterr().out
    line = out.split("resume with: ")[1].strip()
    assert line == shlex.join(["mygpt2", "train", *args, "--resume"])
    assert "--not-these-flags" not in out
    assert run_main(["train", *shlex.split(line)[2:]]) == 0  # and it works
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 4
