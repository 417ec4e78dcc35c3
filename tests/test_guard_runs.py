"""Run safety in whole runs: a resume that would change the data layout is refused, a crash in
the run's own tools after a step keeps that step (checkpoint and resume line), and the resume
line and lock come from the command line the command received, never from `sys.argv`."""

from __future__ import annotations

import importlib
import os
import shlex
import subprocess
import sys

import pytest
import torch
from test_faults import disk_full_on_save
from test_train import make_corpus, run_main, tiny_args, tiny_config

from mygpt2.checkpoint import load_checkpoint
from mygpt2.dynamics.health import HealthProbe
from mygpt2.dynamics.series import SnapshotWriter
from mygpt2.metrics import MetricsLog, Reporter

train_module = importlib.import_module("mygpt2.train")  # `mygpt2.train` is also a function


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


def fails_on_call(n: int, error: Exception, returns=None):
    """A stand-in that raises `error` on its n-th call and returns `returns` on the others."""
    calls = []

    def fake(*args, **kwargs):
        calls.append(args)
        if len(calls) == n:
            raise error
        return returns

    return fake


@pytest.mark.parametrize(
    ("owner", "name", "call", "returns", "what", "error", "flags"),
    [
        # the plot at the second evaluation, step 4 (a broken matplotlib, a full disk, ...)
        (MetricsLog, "plot", 2, None, "the evaluation", ValueError("no font\nfound"), {}),
        # the crash: an evaluation that cannot run this model
        (train_module, "score_extras", 2, {}, "the evaluation", TypeError("not callable"), {}),
        # the progress bar after step 4
        (Reporter, "step", 4, None, "reporting the step", RuntimeError("tty gone"), {}),
        # the health row, after step 4's update (health every 4 steps)
        (
            HealthProbe,
            "row",
            1,
            None,
            "the health statistics",
            ZeroDivisionError("float division by zero"),
            {"health_interval": 4},
        ),
    ],
)
def test_a_crash_in_the_runs_own_tools_keeps_the_step_and_resumes(
    corpus, tmp_path, capsys, monkeypatch, owner, name, call, returns, what, error, flags
):
    args = tiny_args(corpus, tmp_path, max_steps=6, eval_interval=2, **flags)
    monkeypatch.setattr(owner, name, fails_on_call(call, error, returns))
    assert run_main(["train", *args]) == 1
    said = capsys.readouterr().err
    assert "Traceback" not in said
    err = said.splitlines()[-1]  # after the progress bar: one line
    assert err.startswith("mygpt2 train: error: ")
    assert f"{what} failed after step 4 ({type(error).__name__}: " in err
    assert " at mygpt2/train.py:" in err  # the innermost line of mygpt2 it came through
    assert "the checkpoint at step 4 in" in err
    assert f"saved the checkpoint at step 4 in '{tmp_path / 'checkpoint.pt'}'" in err
    resume = err.split("resume with: ")[1].strip()
    assert resume == shlex.join(["mygpt2", "train", *args, "--resume"])
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 4
    assert not (tmp_path / ".lock").exists()  # released
    monkeypatch.undo()
    assert run_main(["train", *shlex.split(resume)[2:]]) == 0
    rows = load_checkpoint(tmp_path / "checkpoint.pt")["metrics"]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]


def test_a_failed_snapshot_stops_at_the_next_step_with_its_checkpoint(
    corpus, tmp_path, capsys, monkeypatch
):
    """Snapshots are written on rank 0 after the processes agreed on the step, so a crash
    there is carried to the next step's agreement: that step is saved and the run stops."""
    monkeypatch.setattr(SnapshotWriter, "write", fails_on_call(1, KeyError("weights")))
    args = tiny_args(corpus, tmp_path, max_steps=6, eval_interval=3, keep_checkpoints="log")
    assert run_main(["train", *args]) == 1
    err = capsys.readouterr().err.splitlines()[-1]
    assert "keeping a snapshot failed after step 1 (KeyError: 'weights' at mygpt2/" in err
    assert "saved the checkpoint at step 2 in" in err
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 2


FAILING_RANK_0 = """
import importlib, sys
train_module = importlib.import_module("mygpt2.train")
calls = []

def score_extras(evals, model, dtype):  # rank 0 alone scores these: only rank 0 fails
    calls.append(1)
    if len(calls) == 2:
        raise TypeError("'NoneType' object is not callable")
    return {}

train_module.score_extras = score_extras
from mygpt2.cli import run
sys.exit(run("train", sys.argv[1:]))
"""


def test_a_crash_on_rank_0_alone_stops_both_ranks_with_the_step_saved(corpus, tmp_path):
    """Under DDP the other rank would wait forever in the next step's all-reduce; the failure
    rides the step's agreement instead, so both save step 4 together and stop."""
    script = tmp_path / "runner.py"
    script.write_text(FAILING_RANK_0, encoding="utf-8")
    out = tmp_path / "run"
    args = tiny_args(corpus, out, max_steps=6, eval_interval=2, macro_batch_size=16)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    ddp = subprocess.run(
        [*torchrun, "--standalone", str(script), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert ddp.returncode != 0
    assert "the evaluation failed after step 4 (TypeError: 'NoneType' object is not " in ddp.stderr
    assert "another process of this run failed after step 4; saved the checkpoint" in ddp.stderr
    assert 'mygpt2/train.py", line' not in ddp.stderr  # torchrun's own traceback only
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["step"] == 4 and len(ckpt["rng"]) == 2  # both ranks' generators: exact resume
    assert not (out / ".lock").exists()


def test_when_the_save_fails_too_the_line_says_which_checkpoint_is_left(
    corpus, tmp_path, capsys, monkeypatch
):
    """The plot fails at step 4's evaluation and the disk is full for step 4's checkpoint:
    one line with both causes, and step 2's checkpoint intact."""
    full_on_the_second, saves = disk_full_on_save(2)
    monkeypatch.setattr(torch, "save", full_on_the_second)
    monkeypatch.setattr(MetricsLog, "plot", fails_on_call(2, ValueError("no font")))
    args = tiny_args(corpus, tmp_path, max_steps=6, eval_interval=2)
    assert run_main(["train", *args]) == 1
    err = capsys.readouterr().err.splitlines()[-1]
    path = tmp_path / "checkpoint.pt"
    assert "the evaluation failed after step 4 (ValueError: no font at mygpt2/" in err
    assert f"saving step 4 failed too (could not write '{path}': the disk is full" in err
    assert f"so '{path}' holds the last checkpoint saved before." in err
    assert saves == [2, 4] and load_checkpoint(path)["step"] == 2


def test_a_failed_snapshot_at_the_last_step_still_stops_with_exit_1(
    corpus, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(SnapshotWriter, "write", fails_on_call(2, KeyError("weights")))
    args = tiny_args(corpus, tmp_path, max_steps=2, eval_interval=2, keep_checkpoints="log")
    assert run_main(["train", *args]) == 1
    err = capsys.readouterr().err.splitlines()[-1]
    assert "keeping a snapshot failed after step 2 (KeyError: 'weights' at mygpt2/" in err
    assert "saved the checkpoint at step 2 in" in err
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 2


def test_a_crash_in_the_step_itself_still_closes_the_tensorboard_writer(
    corpus, tmp_path, monkeypatch
):
    """An error no tool catches (here in the training step) propagates, and the run's
    TensorBoard writer is closed on the way out, so its buffered events reach the disk (the
    console script exits without collecting reference cycles, `cli.run`)."""
    import mygpt2.metrics

    closed: list[int] = []

    class Writer:  # the part of SummaryWriter the log uses
        def add_scalar(self, *args):
            pass

        def close(self):
            closed.append(1)

    monkeypatch.setattr(mygpt2.metrics, "_tensorboard_writer", lambda path: Writer())
    monkeypatch.setattr(train_module, "step_run", fails_on_call(1, RuntimeError("boom")))
    cfg = tiny_config(corpus, tmp_path, max_steps=4, tensorboard="true")
    with pytest.raises(RuntimeError, match="boom"):
        train_module.train(cfg)
    assert closed == [1]
