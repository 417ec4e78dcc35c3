"""Sweeps: the grid from comma-separated flags, each point's directory and train command, bad
input, and a sweep that stops and continues: interrupted runs resume, finished ones are skipped."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest
from test_train import make_corpus, tiny_args

from mygpt2.checkpoint import load_checkpoint
from mygpt2.cli import main
from mygpt2.commands.args import load_config
from mygpt2.config import Config
from mygpt2.errors import MyGPT2Error
from mygpt2.sweep import LIST_FLAGS, grid, point_name, split_axes


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shakespeare_path) -> dict[str, str]:
    return make_corpus(tmp_path_factory.mktemp("corpus"), shakespeare_path)


def test_the_grid_in_flag_order():
    axes, fixed = split_axes({"lr": "1e-3,3e-3", "max_steps": "50", "optimizer": "adamw,muon"})
    assert fixed == {"max_steps": "50"}
    points = grid(axes)
    assert points == [
        {"lr": "1e-3", "optimizer": "adamw"},
        {"lr": "1e-3", "optimizer": "muon"},
        {"lr": "3e-3", "optimizer": "adamw"},
        {"lr": "3e-3", "optimizer": "muon"},
    ]
    assert point_name(points[1]) == "lr=1e-3,optimizer=muon"
    assert point_name({"data": "a/b c.txt"}) == "data=a_b_c.txt"  # one directory level


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"lr": "1e-3,"}, r"sweep flag --lr has an empty value in '1e-3,'"),
        ({"lr": ",,"}, "has an empty value"),
        ({"lr": "1e-3,1e-3"}, "repeats 1e-3"),
        ({"lr": "1e-3"}, "nothing to sweep"),
    ],
)
def test_bad_grids_are_refused(values, message):
    with pytest.raises(MyGPT2Error, match=message):
        split_axes(values)


def test_dry_run_lists_one_train_command_per_point(tmp_path, capsys):
    out = tmp_path / "grid"
    argv = ["sweep", "--lr", "1e-3,3e-3", "--optimizer=adamw,muon", "--max_steps=50"]
    assert main([*argv, f"--out_dir={out}", "--dry_run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    words = shlex.split(lines[3])
    assert words[:2] == ["mygpt2", "train"]
    cfg = load_config(words[2:])  # each line is a valid mygpt2 train command
    assert (cfg.train.lr, cfg.train.optimizer, cfg.train.max_steps) == (3e-3, "muon", 50)
    assert cfg.run.out_dir == str(out / "lr=3e-3,optimizer=muon")
    assert not (out).exists()  # nothing ran


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lrr=1,2"], "unknown flag '--lrr' for mygpt2 sweep. Did you mean 'lr'?"),
        (["--lr=1e-3,"], "sweep flag --lr has an empty value"),
        (["--lr=1e-3,fast"], "sweep point lr=fast: flag: 'lr' must be float, got 'fast'"),
        (["--optimizer=adamw,adam"], "sweep point optimizer=adam: optimizer must be one of"),
        (["--lr=1e-3"], "nothing to sweep"),
    ],
)
def test_bad_sweeps_exit_2_before_any_training(argv, message, tmp_path, capsys):
    assert main(["sweep", *argv, f"--out_dir={tmp_path}"]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_sweep_continues_where_it_stopped(corpus, tmp_path, capsys):
    """First every run stops at step 2 (--stop_at), then the same sweep resumes both, then it
    skips both; each run ends where an uninterrupted one would."""
    out = tmp_path / "sweep"
    argv = ["sweep", *tiny_args(corpus, out, lr="3e-3,1e-2", max_steps=4, eval_interval=2)]
    assert main([*argv, "--stop_at=2"]) == 0
    first = capsys.readouterr().out
    assert "[1/2] lr=3e-3: training." in first and "[2/2] lr=1e-2: training." in first
    assert main(argv) == 0
    second = capsys.readouterr().out
    assert "[1/2] lr=3e-3: resuming from step 2." in second
    assert "[2/2] lr=1e-2: resuming from step 2." in second
    assert main(argv) == 0
    third = capsys.readouterr().out
    assert "[1/2] lr=3e-3: finished at step 4; skipped." in third
    assert "config differences:" in third and (out / "compare.png").is_file()
    for lr in ("3e-3", "1e-2"):
        ckpt = load_checkpoint(out / f"lr={lr}" / "checkpoint.pt")
        assert ckpt["step"] == 4 and ckpt["config"]["train"]["lr"] == float(lr)


def test_a_signal_stops_the_sweep_with_its_status(corpus, tmp_path, capsys, monkeypatch):
    sweep_module = sys.modules["mygpt2.sweep"]
    calls = []

    def stopped(cfg, argv, program):
        calls.append(cfg.run.out_dir)
        return {"signal": 2}  # SIGINT during the first run, after its checkpoint

    monkeypatch.setattr(sweep_module, "train", stopped)
    out = tmp_path / "sweep"
    assert main(["sweep", *tiny_args(corpus, out, lr="3e-3,1e-2")]) == 130
    assert len(calls) == 1
    assert "sweep stopped during lr=3e-3; run the same command again" in capsys.readouterr().out


def test_a_list_valued_flag_stays_whole_in_every_run(tmp_path, capsys):
    """`--eval_tasks a.jsonl,b.jsonl` is two files in each run, not one run per file."""
    out = tmp_path / "grid"
    argv = ["sweep", "--lr", "1e-3,3e-3", "--eval_tasks", "a.jsonl,b.jsonl", "--dry_run"]
    assert main([*argv, f"--out_dir={out}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    configs = [load_config(shlex.split(line)[2:]) for line in lines]
    assert [c.train.eval_tasks for c in configs] == ["a.jsonl,b.jsonl"] * 2
    assert [c.train.lr for c in configs] == [1e-3, 3e-3]
    assert configs[0].run.out_dir == str(out / "lr=1e-3")


def test_a_list_valued_flag_is_swept_at_semicolons():
    axes, fixed = split_axes({"eval_tasks": "a.jsonl;a.jsonl,b.jsonl", "lr": "1e-3"})
    assert fixed == {"lr": "1e-3"}
    assert grid(axes) == [{"eval_tasks": "a.jsonl"}, {"eval_tasks": "a.jsonl,b.jsonl"}]
    with pytest.raises(MyGPT2Error, match=r"empty value in 'a.jsonl;'.*between semicolons"):
        split_axes({"eval_tasks": "a.jsonl;"})
    # any other flag still splits at commas (a ';' there is its value, checked by train)
    assert split_axes({"lr": "1e-3,3e-3"})[0] == {"lr": ["1e-3", "3e-3"]}


def test_every_flag_the_library_splits_at_commas_is_a_list_flag():
    """A new list-valued setting must join LIST_FLAGS, or a sweep would cut it into runs."""
    package = Path(__file__).resolve().parents[1] / "mygpt2"
    fields = {name for section in Config().to_dict().values() for name in section}
    split = set()
    for path in package.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        split |= set(re.findall(r"\.(\w+)\.split\(\s*[\"'],[\"']", text)) & fields
    assert split == {"eval_tasks"}  # the scan finds run_evals' split of the task paths
    assert split <= set(LIST_FLAGS)
