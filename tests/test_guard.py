"""Run safety by itself: the resume line, the launcher, the checkpoint clock, signals before
and inside the loop, leftovers of killed runs, input paths and the data check (the training
runs that use them are in test_train.py and test_faults.py)."""

from __future__ import annotations

import ast
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from mygpt2 import guard
from mygpt2.commands.args import load_config
from mygpt2.commands.train import launcher
from mygpt2.errors import MyGPT2Error, UsageError
from mygpt2.guard import (
    CheckpointClock,
    Interrupted,
    StopSignals,
    check_data,
    check_request,
    data_identity,
    guarded,
    refuse_overwrite,
    remove_leftovers,
    resume_command,
    run_command,
    without_flags,
)
from mygpt2.lock import LOCK_NAME


def test_without_flags_drops_each_spelling_and_its_value():
    argv = [
        "--data",
        "a b.txt",
        "--resume",
        "--overwrite",
        "true",
        "--stop_at",
        "5",
        "--stop-at=6",
        "--break_lock=1",
        "--compile",
        "--lr",
        "1e-3",
        "--resume",
        "--max_steps=9",
    ]
    names = ("resume", "overwrite", "stop_at", "break_lock")
    kept = ["--data", "a b.txt", "--compile", "--lr", "1e-3", "--max_steps=9"]
    assert without_flags(argv, names) == kept
    # a bare boolean keeps the next flag; `--` ends the flags
    assert without_flags(["--overwrite", "--lr", "1", "--", "--resume"], names) == [
        "--lr",
        "1",
        "--",
        "--resume",
    ]


def test_the_resume_line():
    cfg = load_config(["--data=a b.txt", "--stop_at=3"])
    argv = ["--data", "a b.txt", "--stop_at", "3", "--overwrite"]
    assert resume_command(cfg, argv, "mygpt2 train") == "mygpt2 train --data 'a b.txt' --resume"
    assert (
        resume_command(cfg, [*argv, "--max_steps", "10"], "python run_train.py", max_steps=20)
        == "python run_train.py --data 'a b.txt' --resume --max_steps=20"
    )
    # the Python API has no command line: the checkpoint alone continues the run
    assert resume_command(cfg, None, "ignored") == "mygpt2 train --out_dir=out --resume"


def test_the_resume_line_undoes_what_a_config_file_set(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text("stop_at = 3\noverwrite = true\n", encoding="utf-8")
    argv = [f"--config={toml}"]
    line = resume_command(load_config(argv), argv, "mygpt2 train")
    assert line == f"mygpt2 train --config={toml} --stop_at=0 --overwrite=false --resume"


def test_launcher():
    alone: dict[str, str] = {}
    assert launcher("train", "/usr/bin/mygpt2", alone) == "mygpt2 train"
    assert launcher("train", "my dir/run_train.py", alone) == "python 'my dir/run_train.py'"
    torchrun = {"LOCAL_WORLD_SIZE": "4", "WORLD_SIZE": "4"}
    assert (
        launcher("train", "my dir/run_train.py", torchrun)
        == "torchrun --nproc_per_node=4 'my dir/run_train.py'"
    )
    nodes = {"LOCAL_WORLD_SIZE": "4", "WORLD_SIZE": "8"}
    assert launcher("train", "run_train.py", nodes).startswith(
        "torchrun --nproc_per_node=4 --nnodes=2 "
    )
    assert launcher("demo", "/x/mygpt2/cli.py", torchrun).endswith(" -m mygpt2.cli demo")


def test_the_library_never_reads_sys_argv():
    """Only the command line (cli.py, commands/) reads sys.argv; the library is told."""
    package = Path(guard.__file__).parent
    readers = [
        path.relative_to(package).as_posix()
        for path in package.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Attribute)
        and node.attr == "argv"
        and isinstance(node.value, ast.Name)
        and node.value.id == "sys"
    ]
    library = [r for r in readers if r != "cli.py" and not r.startswith("commands/")]
    assert library == []
    assert "cli.py" in readers  # the scan sees the one place that does read it


def test_the_lock_records_the_command_it_is_given(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["pytest", "--not-this"])
    cfg = load_config([f"--out_dir={tmp_path}"])
    command = run_command(["--out_dir", str(tmp_path), "--lr", "1e-3"], "mygpt2 train")
    assert command == f"mygpt2 train --out_dir {tmp_path} --lr 1e-3"
    with guarded(cfg, True, print, command):
        info = json.loads((tmp_path / LOCK_NAME).read_text(encoding="utf-8"))
        assert info["command"] == command
    assert not (tmp_path / LOCK_NAME).exists()
    assert run_command(None, "ignored") == "mygpt2.train() called from Python"


def test_the_checkpoint_clock(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(guard.time, "monotonic", lambda: now[0])
    clock, off = CheckpointClock(0.5), CheckpointClock(0.0)
    now[0] += 29.0
    assert not clock.due()
    now[0] += 1.0
    assert clock.due() and not off.due()
    clock.reset()
    assert not clock.due()
    now[0] += 1e9
    assert not off.due()  # 0 turns the time bound off


def test_signals_stop_at_once_before_the_loop_and_after_the_step_inside_it():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as signals:
        with pytest.raises(Interrupted) as e:
            os.kill(os.getpid(), signal.SIGTERM)
        assert e.value.exit_code == 143 and isinstance(e.value, KeyboardInterrupt)
        signals.deferred = True
        os.kill(os.getpid(), signal.SIGINT)
        assert signals.signum == signal.SIGINT and signals.requested
        with pytest.raises(Interrupted) as e:  # a second one means "now"
            os.kill(os.getpid(), signal.SIGTERM)
        assert e.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) == before


def test_overwrite_with_resume_is_a_usage_error():
    with pytest.raises(UsageError, match="--overwrite and --resume contradict"):
        check_request(load_config(["--resume", "--overwrite"]))
    check_request(load_config(["--overwrite"]))


def test_an_unreadable_checkpoint_in_the_way_is_still_in_the_way(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    cfg = load_config([f"--out_dir={tmp_path}"])
    with pytest.raises(MyGPT2Error, match=r"a file that is not a readable checkpoint, saved 2"):
        refuse_overwrite(cfg)
    refuse_overwrite(load_config([f"--out_dir={tmp_path}", "--overwrite"]))
    refuse_overwrite(load_config([f"--out_dir={tmp_path / 'empty'}"]))


def test_only_the_runs_own_leftovers_are_removed(tmp_path):
    names = [".checkpoint.pt.abc123.tmp", ".loss_plot.png.x.tmp", ".other.png.y.tmp", "a.tmp"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    assert sorted(remove_leftovers(tmp_path)) == [
        ".checkpoint.pt.abc123.tmp",
        ".loss_plot.png.x.tmp",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.png.y.tmp", "a.tmp"]


def test_data_identity(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for builtin in ("stdlib", "shakespeare", "hf:roneneldan/TinyStories", "hf:./local:cfg"):
        assert data_identity(builtin) == builtin
    assert data_identity("corpus.txt") == str(tmp_path / "corpus.txt")
    assert data_identity("texts/*.md") == str(tmp_path / "texts" / "*.md")
    assert data_identity(str(tmp_path / "a" / ".." / "b.txt")) == str(tmp_path / "b.txt")


def test_check_data_compares_what_both_records_have():
    cfg = load_config([])
    saved = {"data": "/a.txt", "fingerprint": "f1", "train_tokens": 10, "val_tokens": 2}
    assert check_data(None, {"data": "/b.txt"}, cfg, Path("ckpt")) == []  # an old checkpoint
    assert check_data(saved, {"data": "/a.txt", "fingerprint": "f1"}, cfg, Path("c")) == []
    with pytest.raises(MyGPT2Error) as e:
        check_data(saved, {**saved, "val_tokens": 3}, cfg, Path("c"))
    assert "its data changed (val_tokens: checkpoint 2, now 3)" in str(e.value)
    assert "--data /a.txt" in str(e.value)
    cfg.train.allow_data_change = True
    assert check_data(saved, {**saved, "fingerprint": "f2"}, cfg, Path("c")) == [
        "fingerprint: checkpoint 'f1', now 'f2'"
    ]
